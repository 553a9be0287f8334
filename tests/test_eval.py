"""Datasets, grading and `ttcl eval`'s results file: appended per question, resumed after an
interruption with nothing lost or repeated. Runs on the scripted backend (no model)."""

import re

import pytest

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.errors import UsageError
from ttcl.eval.datasets import LEVELS, arith, load, read_jsonl
from ttcl.eval.evaluate import Eval, budget_param, markdown, plot, read_records, summarize, summarize_by, wilson

SEARCH = """
model policy = llama("smollm2-135m", max_tokens=64)
verifier prm = self_verify(policy)
program main(n: int = 4) = beam(n, prm, width=2, depth=6) |> weighted_vote(prm)
"""


def stepper(request):
    """A model that solves "What is A + B?" in A steps, the last stating A + B."""
    a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
    done = request.prefix.count("Add")
    return f"The answer is {a + b}." if done >= a else "Add them up.\n\nNext."


QUESTIONS = [
    {"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (4, 1), (2, 2), (5, 3), (1, 1)]
]


# ---- datasets ----------------------------------------------------------------------------


def test_arith_levels_are_distinct_seeded_and_exactly_graded():
    for level in LEVELS:
        questions = arith(300, level, seed=0)
        assert len({q["question"] for q in questions}) == 300 and all(q["level"] == level for q in questions)
        assert questions == arith(300, level, seed=0) and questions != arith(300, level, seed=1)
    for q in arith(50, 4) + arith(50, 3):  # the expressions, evaluated independently
        expression = q["question"].removeprefix("What is ").rstrip("?")
        assert str(eval(expression)) == q["answer"]
    assert [q["level"] for q in load("arith", limit=7).questions] == [1, 2, 3, 4, 5, 1, 2]
    with pytest.raises(UsageError, match="arith:1 to arith:5"):
        load("arith:9")
    with pytest.raises(UsageError, match="fewer than 5000 distinct"):
        arith(5000, 1)


def test_jsonl_understands_gsm8k_and_reports_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"question": "Q1", "answer": "She sold 48/2 = 24.\\n#### 1,200"}\n'
        '{"question": "Q2", "answer": 7}\n'
        "not json\n\n"
        '{"question": "Q3"}\n'
        '{"question": "Q4", "answer": "5"}\n'
    )
    data = read_jsonl(str(path))
    # answers are kept as written: the program's answer kind compares them ("1,200" = 1200)
    assert [(q["question"], q["answer"]) for q in data.questions] == [("Q1", "1,200"), ("Q2", "7"), ("Q4", "5")]
    assert data.skipped == [
        f"{path}:3: not valid JSON (Expecting value)",
        f'{path}:5: expected an "answer" (a string or a number) or a "solution"',
    ]
    with pytest.raises(UsageError, match=r"d.jsonl:3: not valid JSON"):
        read_jsonl(str(path), strict=True)
    with pytest.raises(UsageError, match="dataset not found"):
        load(str(tmp_path / "missing.jsonl"))


def test_the_shipped_gsm8k_file_loads_when_present():
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
    if not path.exists():
        pytest.skip("../shared/data/gsm8k is not beside the repository")
    data = load(str(path), limit=20)
    assert len(data.questions) == 20 and data.questions[0]["answer"] == "72"


# ---- grading and summaries ---------------------------------------------------------------


def test_wilson_interval_matches_hand_computed_values():
    # 8 of 10: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.7170; half-width 0.2267
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5)[0] == 0 and wilson(5, 5)[1] == 1


def test_budget_param_is_the_only_int_parameter_or_named():
    prog = ttcl.compile(SEARCH)
    assert budget_param(prog, None) == "n"
    with pytest.raises(UsageError, match="has no parameter `k`"):
        budget_param(prog, "k")
    with pytest.raises(UsageError, match="no int parameter"):
        budget_param(ttcl.compile('model p = llama("x")\nprogram main = sample(2) |> vote'), None)


# ---- the results file --------------------------------------------------------------------


def evaluate(path, questions=QUESTIONS, resume=False, backend=None, budgets=(2, 4)):
    prog = ttcl.compile(SEARCH)
    ev = Eval(path, questions, resume=resume, backend=backend or ScriptedBackend(stepper, lambda r, o: [0.7, 0.3]))
    finished = all(ev.run(prog, "search", b, "n") for b in budgets)
    return ev, finished


def test_every_question_is_graded_and_appended(tmp_path):
    path = tmp_path / "r.jsonl"
    ev, finished = evaluate(path)
    assert finished
    records = read_records(path)
    assert records == ev.records and len(records) == 2 * len(QUESTIONS)
    assert all(r.correct and r.answer == r.expected for r in records)
    assert all(r.flops and r.tokens > 0 for r in records)
    summaries = summarize(records)
    assert [(s.budget, s.questions, s.accuracy) for s in summaries] == [(2, 5, 1.0), (4, 5, 1.0)]
    assert summaries[1].flops > summaries[0].flops  # twice the beams cost more
    assert "| search | 2 | 5 | 100.0% |" in markdown([("all", summaries)], "t", [])
    with pytest.raises(UsageError, match="already holds results: --resume"):
        evaluate(path)  # nothing is overwritten


class Interrupting(ScriptedBackend):
    """Ctrl-C during the n-th batch, as a user would press it."""

    def __init__(self, at: int):
        super().__init__(stepper, lambda r, o: [0.7, 0.3])
        self.at = at

    def generate(self, requests):
        if self.counters.batches + 1 == self.at:
            raise KeyboardInterrupt
        return super().generate(requests)


def test_an_interrupted_eval_resumes_losing_and_repeating_nothing(tmp_path):
    whole, _ = evaluate(tmp_path / "whole.jsonl")
    path = tmp_path / "r.jsonl"
    _, finished = evaluate(path, backend=Interrupting(at=4))
    kept = read_records(path)
    assert not finished and 0 < len(kept) < len(whole.records)  # the short searches finished
    assert all(r.budget == 2 for r in kept)
    resumed, finished = evaluate(path, resume=True)
    assert finished
    keys = [r.key for r in read_records(path)]
    assert len(keys) == len(set(keys)) == len(whole.records)  # nothing repeated, nothing lost
    by_key = {r.key: r for r in resumed.records}
    for r in whole.records:  # a question's answer does not depend on its batch (its share of a
        # batch's shared prompt tokens does)
        assert (by_key[r.key].answer, by_key[r.key].generations) == (r.answer, r.generations)


def test_a_torn_last_line_is_dropped_and_run_again(tmp_path):
    path = tmp_path / "r.jsonl"
    evaluate(path, budgets=(2,))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])  # killed mid-write
    ev, _ = evaluate(path, resume=True, budgets=(2,))
    assert len(read_records(path)) == len(QUESTIONS) and path.read_text().endswith("\n")
    path.write_text("garbage\n" + path.read_text())
    with pytest.raises(UsageError, match="r.jsonl:1: not an eval record"):
        evaluate(path, resume=True, budgets=(2,))


def test_summaries_per_level_and_the_plot(tmp_path):
    questions = [dict(q, level=1 + i % 2) for i, q in enumerate(QUESTIONS)]
    ev, _ = evaluate(tmp_path / "r.jsonl", questions=questions)
    levels = summarize_by(ev.records, lambda r: r.level)
    assert sorted(levels) == [1, 2] and sum(s.questions for s in levels[1]) == 6
    plot(summarize(ev.records), str(tmp_path / "curve.png"), title="t")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command_refuses_bad_input(capsys, tmp_path):
    program = tmp_path / "p.ttcl"
    program.write_text(SEARCH)
    for argv, message in [
        (["--dataset", "arith", "--budgets", "1,x"], "--budgets takes positive whole numbers"),
        (["--dataset", str(tmp_path / "none.jsonl")], "dataset not found"),
        (["--dataset", "arith", "--limit", "0"], "--limit must be positive"),
        (["--dataset", "arith", "--budgets", "2", "--budget-param", "zz"], "has no parameter `zz`"),
    ]:
        assert main(["eval", str(program), *argv, "-o", str(tmp_path / "o.jsonl")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_budget_label_without_a_parameter_runs_the_program_as_written(tmp_path):
    ev = Eval(tmp_path / "r.jsonl", QUESTIONS[:2], backend=ScriptedBackend(stepper, lambda r, o: [0.7, 0.3]))
    assert ev.run(ttcl.compile(SEARCH), "search at 4", budget=4)  # recorded at 4, n left at its default
    assert [(r.budget, r.generations) for r in ev.records] == [(4, 4), (4, 4)]


# ---- ttcl run --questions ------------------------------------------------------------------


def adder(request):
    """A model that adds right while A < 5."""
    a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
    return f"The answer is {a + b + (a >= 5)}."


class InterruptedAdder(ScriptedBackend):
    def __init__(self):
        super().__init__(adder)

    def generate(self, requests):
        raise KeyboardInterrupt


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def questions_file_run(tmp_path, monkeypatch, backend):
    """A `sample(2) |> vote` program on `backend`, the QUESTIONS as a JSONL file, and where
    `ttcl run --questions -o` should write: (program, questions, output)."""
    import json

    import ttcl.backends

    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: backend)
    program = tmp_path / "p.ttcl"
    program.write_text('model policy = llama("smollm2-135m", max_tokens=16)\nprogram main = sample(2) |> vote\n')
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return program, questions, tmp_path / "r.jsonl"


def test_run_questions_ends_saying_where_how_many_and_how_many_right(tmp_path, monkeypatch, capsys):
    import json

    program, questions, out = questions_file_run(tmp_path, monkeypatch, ScriptedBackend(adder))
    code, err = run_cli(capsys, "run", program, "--questions", questions, "-o", out)
    assert code == 0 and f"wrote {out} (5 results; accuracy 80.0% (4 of 5))" in err  # 5 + 3 is wrong
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")
    code, err = run_cli(capsys, "run", program, "--questions", questions, "-o", out, "--resume")
    assert code == 0 and f"wrote {out} (5 results, 2 new; accuracy 80.0% (4 of 5))" in err
    # to standard output: the same count, on stderr, and no file
    code, err = run_cli(capsys, "run", program, "--questions", questions)
    assert code == 0 and err.strip().endswith("5 results; accuracy 80.0% (4 of 5)") and "wrote" not in err
    # without answers: no accuracy; with some: of those
    unanswered = tmp_path / "u.jsonl"
    unanswered.write_text("".join(json.dumps({"question": q["question"]}) + "\n" for q in QUESTIONS))
    code, err = run_cli(capsys, "run", program, "--questions", unanswered, "-o", tmp_path / "u.out.jsonl")
    assert code == 0 and err.strip().endswith("(5 results)")
    unanswered.write_text(unanswered.read_text() + json.dumps({"question": "What is 5 + 5?", "answer": "10"}) + "\n")
    code, err = run_cli(capsys, "run", program, "--questions", unanswered)
    assert "accuracy 0.0% (0 of 1 with an answer to check)" in err


def test_an_interrupted_run_questions_says_what_is_left_for_resume(tmp_path, monkeypatch, capsys):
    program, questions, out = questions_file_run(tmp_path, monkeypatch, InterruptedAdder())
    code, err = run_cli(capsys, "run", program, "--questions", questions, "-o", out)
    assert code == 130 and f"wrote {out} (0 results; 5 interrupted: --resume runs them)" in err


@pytest.mark.parametrize("width", [80, 140])
def test_the_summary_of_a_pooled_sweep_fits_the_width(width):
    from io import StringIO

    from rich.console import Console

    from ttcl.cli.evaluate import _show
    from ttcl.eval.evaluate import Summary

    summaries = [
        Summary(
            program="weighted_bon",
            budget=b,
            questions=120,
            correct=25,
            accuracy=0.206,
            low=0.078,
            high=0.367,
            flops=6.2e11 * b,
            tokens=704.0 * b,
            pooled_from=16,
        )
        for b in (1, 2, 4, 8, 16)
    ]
    shown = StringIO()
    _show(summaries, "gsm8k.jsonl: 120 questions, seed 0", Console(file=shown, width=width))
    lines = shown.getvalue().splitlines()
    assert max(map(len, lines)) <= width and "…" not in shown.getvalue()
    assert "7.8%–36.7%" in shown.getvalue() and "9.92e+12" in shown.getvalue()  # figures whole
    assert ("(pool 16)" in shown.getvalue()) == (width == 140)  # said once before the table where narrow


def test_a_file_of_mostly_malformed_lines_names_the_first_few_and_counts_the_rest(tmp_path, monkeypatch, capsys):
    program, questions, out = questions_file_run(tmp_path, monkeypatch, ScriptedBackend(adder))
    questions.write_text("# notes, not questions\n" * 8 + questions.read_text())
    code, err = run_cli(capsys, "eval", program, "--dataset", questions, "-o", out)
    named = [line for line in err.splitlines() if line.startswith(f"skipped {questions}:")]
    assert code == 0 and [line.split(":")[1] for line in named] == ["1", "2", "3", "4", "5"]
    assert "skipped 3 more malformed lines (--strict stops at the first)" in err
