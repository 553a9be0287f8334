"""A first `ttcl run`: the estimate beside what was measured comes from the priors shipped for
the known models, and the candidates and cost tables read well at 80 columns and at 120."""

import os
import re
import subprocess
import sys
from io import StringIO

import pytest
from conftest import ROOT
from rich.console import Console

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.cost import show as show_cost
from ttcl.cli.run import show
from ttcl.cost.calibration import Calibration, shipped

KNOWN = 'import "parallel"\nmodel policy = llama("smollm2-135m")\nverifier prm = self_verify(policy)\n'


# ---- the shipped priors ----------------------------------------------------------------------


def test_the_shipped_priors_are_measured_lengths_for_the_known_models():
    priors = shipped().models["smollm2-135m"]
    assert priors.questions >= 20 and 30 < priors.prompt_tokens < 120  # the chat template and a question
    assert 0 < priors.answer_tokens < 256 and 0 < priors.verify_tokens < 256  # well under max_tokens
    assert priors.step_tokens and priors.search_steps and priors.factors


def test_a_known_model_is_priced_with_them_unless_told_otherwise(tmp_path):
    prog = ttcl.load("programs/bon.ttcl")
    default, upper = prog.cost(), prog.cost(calibration=Calibration())
    assert default.priors["policy"].source == "shipped" and upper.priors["policy"].source == "program"
    assert default.priors["policy"].answer_tokens == pytest.approx(shipped().models["smollm2-135m"].answer_tokens)
    assert upper.expected.flops > 2 * default.expected.flops  # every answer 256 tokens long
    mine = tmp_path / "cal.json"
    Calibration(models={"smollm2-135m": {"answer_tokens": 10, "questions": 1}}).save(mine)
    assert prog.cost(calibration=mine).priors["policy"].answer_tokens == 10  # a calibration given wins


def test_another_model_is_priced_from_the_program():
    spec = ttcl.compile(
        "model m = spec(params=1e9, layers=24, d_model=2048, heads=32, vocab=49152)\n"
        "program main = sample(4, model=m) |> vote"
    )
    assert spec.cost().priors["m"].source == "program"


# ---- the tables at 80 and 120 columns ------------------------------------------------------


def bon_result(interrupt_after=None):
    prog = ttcl.load("programs/bon.ttcl", params={"n": 4})
    texts = [
        "2 + 3 = 5, so the answer is 5.",
        "The answer is 5.",
        "Let me add two and three, which makes five.",
        "2 + 3",
    ]
    turn = iter(range(1000))
    backend = ScriptedBackend(lambda r: texts[next(turn) % 4], lambda r, o: [0.7, 0.3], interrupt_after=interrupt_after)
    return prog, prog.run("What is 2 + 3?", backend=backend)


def shown(render, width: int) -> str:
    out = StringIO()
    render(Console(file=out, width=width, highlight=False))
    return out.getvalue()


def table_lines(text: str, title: str) -> list[str]:
    """The lines of the table under `title`, up to the prose after it (a line starting with a
    letter: the tables' lines start with a space or the header's rule)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    end = next((j for j in range(start + 1, len(lines)) if lines[j][:1].isalpha()), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("width", [80, 120])
def test_the_run_tables_fit_the_width_with_figures_whole(width):
    prog, result = bon_result()
    text = shown(lambda console: show(result, console, prog.cost()), width)
    assert max(map(len, text.splitlines())) <= width
    cost = table_lines(text, "cost per node")
    assert all("…" not in line for line in cost)  # no figure cut short
    total = next(line for line in cost if line.lstrip().startswith("total")).split()
    assert total[-1] == f"{result.cost.flops / prog.cost().expected.flops:.2g}"  # measured / estimate
    assert ("prompt" in cost[1] + cost[2]) == (width == 120)  # tokens by kind where there is room


def test_the_candidates_table_charges_no_candidate_the_shared_prompt():
    prog, result = bon_result()
    text = shown(lambda console: show(result, console, prog.cost()), 80)
    # id, node, answer, score, generated, text: nodes named as the cost table names them
    rows = [line.split() for line in text.splitlines() if re.match(r"\s+\d+\s+n1 ", line)]
    assert {int(row[0]): int(row[4]) for row in rows} == {c.id: c.generated_tokens for c in result.candidates}
    prompt = sum(c.prompt_tokens for c in result.candidates)
    assert f"n1 {prompt}" in text and "—" in text  # the prompt once; "2 + 3" states no answer
    assert "None" not in text


@pytest.mark.parametrize("width", [80, 120])
def test_ttcl_cost_fits_the_width(width):
    for program in ("programs/per_difficulty.ttcl", "programs/bon.ttcl", "programs/beam.ttcl"):
        report = ttcl.load(program).cost()
        text = shown(lambda console, report=report: show_cost(report, console), width)
        table = table_lines(text, "estimated cost")
        assert max(map(len, table)) <= width and all("…" not in line for line in table)
        assert ("where" in table[1]) == (width == 120)  # where the node comes from, where there is room


def test_columns_80_in_a_pipe():
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "ttcl", "cost", "programs/per_difficulty.ttcl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    table = table_lines(done.stdout, "estimated cost")
    assert done.returncode == 0 and max(map(len, table)) <= 80 and "worst case" in done.stdout


# ---- the first run, on the real model ----------------------------------------------------------


@pytest.mark.slow
def test_the_first_runs_estimate_is_within_half_of_what_it_measures():
    prog = ttcl.load("programs/bon.ttcl")
    result = prog.run("What is 2 + 3?")
    estimate = prog.cost().expected
    for got, guess in ((result.cost.tokens, estimate.tokens), (result.cost.flops, estimate.flops)):
        assert abs(guess - got) / got <= 0.5
