"""`ttcl optimize`: difficulty from probes, quantile bins, the per-bin choice with two-fold
cross-validation, and the program it writes (a fixed point). On the scripted backend."""

import re

import pytest

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.errors import UsageError
from ttcl.eval.evaluate import Eval
from ttcl.eval.optimize import (
    PROBE_LABEL,
    arm_budget,
    choose,
    cross_validate,
    default_space,
    predicted_bin,
    quantile_thresholds,
    read_base,
    render,
    run_all,
)

BASE = """# the policy and its verifier
model policy = llama("smollm2-135m", max_tokens=64)
verifier prm = self_verify(policy)
budget 99 generations
program main = sample(2) |> vote
"""


def test_quantile_thresholds_split_questions_evenly_and_ascend():
    scores = [i / 99 for i in range(100)]
    cuts = quantile_thresholds(scores, 5)
    assert cuts == pytest.approx([0.2, 0.4, 0.6, 0.8], abs=0.01)
    counts = [sum(predicted_bin(s, cuts) == b for s in scores) for b in range(1, 6)]
    assert all(19 <= c <= 21 for c in counts)
    assert predicted_bin(0.99, cuts) == 1 and predicted_bin(0.0, cuts) == 5  # high score: easy
    ties = quantile_thresholds([0.5] * 10 + [0.9], 5)
    assert all(a < b for a, b in zip(ties, ties[1:]))


def test_read_base_keeps_declarations_and_drops_programs_and_budgets():
    base = read_base(BASE, "base.ttcl")
    assert "program" not in base.text and "budget" not in base.text
    assert 'model policy = llama("smollm2-135m", max_tokens=64)' in base.text
    assert base.text.startswith('import "parallel"') and base.arms == []
    assert base.program("majority(3)").ir.generations == 3


def test_the_default_space_is_the_papers_strategies_at_the_budget():
    space = default_space(12, "prm")
    assert space == [
        "majority(12)",
        "adaptive_majority(12)",
        "weighted_best_of_n(12, prm)",
        "beam_search(12, prm, width=3)",
        "beam_search(12, prm, width=4)",
        "sequential_revisions(12, prm)",
        "revision_ratio(12, 2, prm)",
        "revision_ratio(12, 4, prm)",
    ]  # widths √12 and 4
    assert arm_budget(16, 4) == 12
    with pytest.raises(UsageError, match="leaves nothing after 4 probe samples"):
        arm_budget(4, 4)


# "What is A + B?": the verifier's probes find a small A easy; plain samples get A <= 4
# right and revisions get everything right (and say so, which the verifier likes). So the
# choice must differ by bin: voting where it suffices (it is cheaper), revisions elsewhere.
def script(request):
    a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
    if "earlier attempts" in request.messages[-1].content:
        return f"Revised: the answer is {a + b}."
    return f"The answer is {a + b if a <= 4 else a + b + 1}."


def probs(request, options):
    content = request.messages[-1].content
    a = int(re.search(r"What is (\d+)", content).group(1))
    return [0.95, 0.05] if "Revised" in content else [1 - a / 10, a / 10]


QUESTIONS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(1, 10) for b in (1, 2)]


def optimize(tmp_path, base, candidates, probe=2):
    ev = Eval(tmp_path / "runs.jsonl", QUESTIONS, resume=True, backend=ScriptedBackend(script, probs))
    results = run_all(ev, base, candidates, "prm", probe)
    probes = results.pop(PROBE_LABEL)
    scores = [r.difficulty for r in probes]
    choice = choose(candidates, results, scores, list(range(len(QUESTIONS))))
    return choice, results, scores, probes


def test_each_bin_gets_its_best_candidate_and_cross_validation_reports_it(tmp_path):
    candidates = ["majority(2)", "sequential_revisions(2, prm)"]
    choice, results, scores, probes = optimize(tmp_path, read_base(BASE, "base.ttcl"), candidates)
    assert [r.difficulty for r in probes] == pytest.approx([1 - int(q["question"][8]) / 10 for q in QUESTIONS])
    easy, hard = choice.winners[1], choice.winners[5]
    assert easy == "majority(2)"  # as right as revisions on easy questions, and cheaper
    assert hard == "sequential_revisions(2, prm)"
    accuracy, flops = cross_validate(candidates, results, scores, probes)
    assert accuracy == 1.0 and flops > 0
    assert all(r.probe_accuracy is not None for r in probes)


def test_pass_rate_bins_are_absolute_three_bins(tmp_path):
    candidates = ["majority(2)", "sequential_revisions(2, prm)"]
    _, results, scores, probes = optimize(tmp_path, read_base(BASE, "base.ttcl"), candidates)
    choice = choose(candidates, results, scores, list(range(len(QUESTIONS))), binning="pass-rate")
    assert choice.thresholds == [0.1, 0.5] and sorted(choice.winners) == [1, 2, 3]
    # scores 0.9 .. 0.1 (1 - A/10): A <= 5 is easy (majority misses A = 5), 6 .. 9 medium
    assert choice.winners[1] == choice.winners[2] == "sequential_revisions(2, prm)"
    assert quantile_thresholds(scores, 3) != choice.thresholds  # not fitted to these scores


def test_the_written_program_compiles_routes_by_its_thresholds_and_is_a_fixed_point(tmp_path):
    base = read_base(BASE, "base.ttcl")
    candidates = ["majority(2)", "sequential_revisions(2, prm)"]
    choice, results, scores, probes = optimize(tmp_path, base, candidates)
    text = render(base, choice, "prm", 2, 4, ["chosen on 18 scripted questions"])
    assert "thresholds=[" in text and "budget 4 generations" in text
    assert text.startswith("# ttcl optimize: chosen on 18 scripted questions\n")
    program = ttcl.compile(text, "best.ttcl")
    assert program.ir.generations == 4  # 2 probes and 2 for the costlier arm
    backend = ScriptedBackend(script, probs)
    easy, hard = program.run_many(["What is 1 + 1?", "What is 9 + 1?"], backend=backend)
    assert (easy.bin, easy.answer) == (1, "2") and (hard.bin, hard.answer) == (5, "10")
    # optimizing the optimized program: its arms are the search space, and it comes back the same
    again = read_base(text, "best.ttcl")
    assert again.arms == [choice.winners[1], choice.winners[5]] and again.probe == 2
    choice2, *_ = optimize(tmp_path / "again", again, again.arms)
    assert render(again, choice2, "prm", 2, 4, ["chosen on 18 scripted questions"]) == text


@pytest.mark.parametrize(
    "body, unit, amount",
    [
        ("weighted_best_of_n(n, prm)", "flops", 2e12),
        ("majority(n)", "tokens", 3000),
        ("beam_search(n, prm, width=4)", "flops", 5e12),  # n must be a multiple of 4
    ],
)
def test_fit_parameter_finds_the_largest_n_within_a_budget(body, unit, amount):
    from ttcl.eval.optimize import fit_parameter

    prog = ttcl.compile(read_base(BASE, "b.ttcl").text + f"program main(n: int = 4) = {body}\n")
    n = fit_parameter(prog, "n", unit, amount)
    cost = lambda k: prog.bind(n=k).cost(flops=unit == "flops").expected.amount(unit)  # noqa: E731
    assert cost(n) <= amount
    bigger = next(k for k in range(n + 1, n + 9) if k % 4 == 0 or "beam" not in body)
    assert cost(bigger) > amount
    with pytest.raises(UsageError, match="no value of `n` fits"):
        fit_parameter(prog, "n", unit, 1.0)


@pytest.mark.parametrize(
    "candidate,line,col", [("sample(", 1, 8), ("sample(2) |> vot", 1, 14), ("sample(2) |>\n  best(nope)", 2, 8)]
)
def test_an_error_in_a_candidate_is_located_in_the_candidate(candidate, line, col):
    from ttcl import TTCLError
    from ttcl.eval.optimize import read_base

    base = read_base(
        'model m = llama("smollm2-135m")\nverifier v = self_verify(m)\nprogram main = sample(2) |> vote\n', "o.ttcl"
    )
    with pytest.raises(TTCLError) as caught:
        base.program(candidate)
    span = caught.value.span
    assert (span.path, span.line, span.col) == ("--candidate", line, col)
    assert candidate.splitlines()[line - 1] in caught.value.render()


def test_one_winner_in_every_bin_is_written_alone_with_only_the_imports_it_needs(tmp_path):
    from ttcl.eval.optimize import optimize as run_optimize

    # both candidates answer alike (majority right where A <= 4, and so the weighted vote);
    # the cheaper wins every bin, so probes would only add their cost
    ev = Eval(tmp_path / "runs.jsonl", QUESTIONS, backend=ScriptedBackend(script, probs))
    found = run_optimize(read_base(BASE, "base.ttcl"), ev, 4, "prm", 2, ["majority(2)", "weighted_best_of_n(2, prm)"])
    assert found.choice.only == "majority(2)"
    text = found.text
    assert "program main = majority(2)\n" in text and "difficulty(" not in text and "probe=" not in text
    assert 'import "parallel"' in text and 'import "search"' not in text and 'import "revision"' not in text
    assert "# ttcl optimize: one strategy won every bin: it runs alone, without the probes\n" in text
    program = ttcl.compile(text, "best.ttcl")
    assert program.ir.generations == 2  # the arm's 2, no probes
    assert program.run("What is 1 + 1?", backend=ScriptedBackend(script, probs)).answer == "2"


def test_a_per_bin_program_keeps_the_imports_its_arms_use_and_no_others(tmp_path):
    base = read_base('import "search"\n' + BASE, "base.ttcl")
    choice, *_ = optimize(tmp_path, base, ["majority(2)", "sequential_revisions(2, prm)"])
    text = render(base, choice, "prm", 2, 4, [])
    assert 'import "parallel"' in text and 'import "revision"' in text and "search" not in text
    ttcl.compile(text, "best.ttcl")
    # an import a declaration of the file needs stays, though no arm uses it
    own = read_base(BASE + 'import "search"\nstrategy deep(n: int) = beam_search(n, prm, width=2)\n', "b.ttcl")
    assert 'import "search"' in render(own, choice, "prm", 2, 4, [])


@pytest.mark.parametrize(
    "candidate, line, col, message",
    [
        ('majority(2)\nmodel other = llama("x")', 2, 1, "a candidate is one strategy"),
        ("majority(2)\nbudget 1 generations", 2, 1, "a candidate is one strategy"),
        ("majority(99)", 1, 1, "needs 99 generations, and each arm has 12"),
    ],
)
def test_a_candidate_is_one_strategy_that_fits_an_arm(candidate, line, col, message):
    from ttcl import TTCLError
    from ttcl.eval.optimize import check_candidates

    base = read_base(BASE, "base.ttcl")
    with pytest.raises(TTCLError, match=message) as caught:
        check_candidates(base, ["majority(4)", candidate], 12)
    span = caught.value.span
    assert (span.path, span.line, span.col) == ("--candidate", line, col)
    shown = caught.value.render()
    assert f" {line} | {candidate.splitlines()[line - 1]}\n" in shown + "\n" and "program main" not in shown


def test_an_error_inside_a_stdlib_strategy_names_the_call_in_the_candidate():
    from ttcl import TTCLError

    base = read_base(BASE, "base.ttcl")
    with pytest.raises(TTCLError, match="must be a multiple of width") as caught:
        base.program("\n  beam_search(12, prm, width=5)")
    assert caught.value.diagnostics[0].notes == ("in strategy `beam_search` called at --candidate:2:3",)


def test_the_optimize_command_says_when_one_strategy_won_and_shows_candidate_errors_in_them(
    tmp_path, monkeypatch, capsys
):
    import json

    import ttcl.backends
    from ttcl.cli.app import main

    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: ScriptedBackend(script, probs))
    (tmp_path / "base.ttcl").write_text(BASE)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    common = ["optimize", tmp_path / "base.ttcl", "--dataset", tmp_path / "q.jsonl", "--budget", "4", "--probe", "2"]
    common += ["-o", tmp_path / "best.ttcl", "--runs", tmp_path / "runs.jsonl"]
    code = main([str(a) for a in [*common, "--candidate", "majority(99)"]])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and not (tmp_path / "runs.jsonl").exists()
    assert err.startswith("--candidate:1:1: error: this candidate needs 99 generations, and each arm has 2")
    assert " 1 | majority(99)\n   | ^^^^^^^^^^^^\n" in err
    candidates = ["--candidate", "majority(2)", "--candidate", "weighted_best_of_n(2, prm)"]
    assert main([str(a) for a in [*common, *candidates]]) == 0
    out = capsys.readouterr().out
    assert "majority(2) won every bin, so the program runs it alone, without the probes: accuracy 44.4%" in out
    assert "program main = majority(2)\n" in (tmp_path / "best.ttcl").read_text()


@pytest.mark.parametrize("width", [80, 250])
def test_the_per_bin_table_fits_the_width(width):
    from io import StringIO
    from types import SimpleNamespace

    from rich.console import Console

    from ttcl.cli.evaluate import _show_choice

    candidates = [
        "majority(4)",
        "adaptive_majority(4)",
        "weighted_best_of_n(4, prm)",
        "beam_search(4, prm, width=2)",
        "sequential_revision(4, prm)",
        "revise(2) * 2 |> weighted_vote(prm)",
    ]
    rows = [[str(b), "0.42..0.55", "12", *["50%"] * len(candidates), candidates[b % 6]] for b in range(1, 6)]
    probes = [SimpleNamespace(flops=9.6e10, probe_accuracy=0.5)] * 4
    shown = StringIO()
    _show_choice(rows, candidates, probes, Console(file=shown, width=width))
    text = shown.getvalue()
    assert max(map(len, text.splitlines())) <= width and "…" not in text and "0.42..0.55" in text
    wide = width == 250
    assert ("c1  majority(4)" in text) != wide and ("revise(2) * 2 |> weighted_vote(prm)" in text)
