"""`ttcl eval --plot` and `--report`: the figure checked through its matplotlib objects (labels,
ticks, formatters, title), not its pixels; the report against what the console showed. On the
scripted backend (no model)."""

import re
import sys

import pytest

import ttcl
import ttcl.backends
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.errors import UsageError
from ttcl.eval.evaluate import Summary, decades, figure
from ttcl.version import __version__

pytest.importorskip("matplotlib")


def summary(program, budget, accuracy, flops):
    return Summary(
        program=program,
        budget=budget,
        questions=10,
        correct=round(accuracy * 10),
        accuracy=accuracy,
        low=max(0.0, accuracy - 0.2),
        high=min(1.0, accuracy + 0.2),
        flops=flops,
        tokens=100.0,
    )


# the costlier program first, and its budgets out of order: the figure must sort both
SUMMARIES = [
    summary("beam", 16, 0.7, 4e12),
    summary("beam", 4, 0.5, 1e12),
    summary("majority", 16, 0.6, 8e11),
    summary("majority", 1, 0.3, 5e10),
    summary("majority", 4, 0.5, 2e11),
]


def test_the_figure_labels_points_with_budgets_orders_by_flops_and_shows_percent():
    from matplotlib.ticker import LogLocator, PercentFormatter

    fig = figure(SUMMARIES, title="smollm2-135m on arith, 10 questions")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["majority", "beam"]  # cheapest first
    majority, beam = ax.get_lines()
    assert list(majority.get_xdata()) == [5e10, 2e11, 8e11] and list(majority.get_ydata()) == [0.3, 0.5, 0.6]
    assert list(beam.get_xdata()) == [1e12, 4e12]
    # each point labelled with its budget, beside it, in its line's colour
    labels = {(t.get_text(), t.xy) for t in ax.texts}
    assert labels == {
        ("1", (5e10, 0.3)),
        ("4", (2e11, 0.5)),
        ("16", (8e11, 0.6)),
        ("4", (1e12, 0.5)),
        ("16", (4e12, 0.7)),
    }
    assert {t.get_color() for t in ax.texts if t.xy[0] >= 1e12} == {beam.get_color()}
    # accuracy in %, FLOPs on a log axis ticked at the powers of ten
    assert isinstance(ax.yaxis.get_major_formatter(), PercentFormatter)
    assert ax.yaxis.get_major_formatter()(0.5) == "50%" and ax.get_ylim() == (0, 1)
    assert ax.get_xscale() == "log" and isinstance(ax.xaxis.get_major_locator(), LogLocator)
    assert ax.get_xlim() == (1e10, 1e13)
    ticks = [t for t in ax.get_xticks() if 1e10 <= t <= 1e13]
    assert ticks == [1e10, 1e11, 1e12, 1e13]
    assert ax.get_title() == "smollm2-135m on arith, 10 questions"
    assert ax.get_xlabel() == "FLOPs per question" and ax.get_ylabel() == "accuracy"


def test_a_program_as_written_has_no_budget_label_and_unmeasured_flops_are_refused():
    fig = figure([summary("plain", None, 0.4, 3e11)])
    assert len(fig.axes[0].texts) == 0 and fig.axes[0].get_xlim() == (1e11, 1e12)  # a decade at least
    with pytest.raises(UsageError, match="needs measured FLOPs"):
        figure([summary("plain", None, 0.4, None)])


def test_decades_round_out_to_powers_of_ten():
    assert decades([3e11, 2e12]) == (1e11, 1e13)
    assert decades([1e12]) == (1e12, 1e13)
    assert decades([0.5, 5.0]) == (0.1, 10.0)


def solve(request):
    """A model that gets sums right and the rest wrong."""
    expression = re.search(r"What is ([-+*() \d]+)\?", request.messages[-1].content).group(1)
    return f"The answer is {eval(expression) + ('*' in expression)}."


PROGRAM = """
model policy = llama("smollm2-135m", max_tokens=16)
program main(n: int = 2) = sample(n) |> vote
"""


def test_the_report_holds_every_table_shown_a_link_to_the_plot_and_what_made_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: ScriptedBackend(solve))
    program = tmp_path / "vote.ttcl"
    program.write_text(PROGRAM)
    (tmp_path / "out").mkdir()
    plot, report = tmp_path / "curve.png", tmp_path / "out" / "report.md"
    argv = ["eval", str(program), "--dataset", "arith", "--limit", "4", "--budgets", "1,2"]
    argv += ["-o", str(tmp_path / "r.jsonl"), "--plot", str(plot), "--report", str(report)]
    monkeypatch.setattr(sys, "argv", ["ttcl", *argv])
    assert main(argv) == 0
    shown = capsys.readouterr().out
    text = report.read_text()
    titles = ["arith: 4 questions, seed 0", "level 1", "level 2", "level 3", "level 4"]
    for title in titles:  # each table the console showed, under its title, with its rows
        assert title in shown and f"## {title}\n" in text
    assert text.count("\n## ") == len(titles)
    assert text.count("| vote | 1 (pool 2) | ") == text.count("| vote | 2 (pool 2) | ") == len(titles)
    assert "| vote | 1 (pool 2) | 4 | 50.0% | " in text  # sums right, products wrong
    assert "![accuracy against FLOPs per question](../curve.png)" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "- model: smollm2-135m\n" in text and f"- TTCL: {__version__}\n" in text
    assert f"- command: `ttcl eval {program} --dataset arith --limit 4 --budgets 1,2 -o " in text
