"""`ttcl.load_results`: what `ttcl run --questions` writes reads back as the `Result`s that
`run_many` gives (less what the file does not keep), and a file that is not one is refused
with a clear error."""

import json
import re

import pytest

import ttcl
import ttcl.backends
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.errors import UsageError

QUESTIONS = [{"question": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(3)]
KEPT = {"candidates", "trace", "elapsed_s"}  # what a results line leaves out, and a timing


def solve(request):
    a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
    return f"{a} + {b} = {a + b}\n\nThe answer is {a + b}."


@pytest.fixture
def backend(monkeypatch):
    """Every model answers sums right, without loading one."""
    scripted = ScriptedBackend(solve, lambda request, options: [0.9, 0.1])
    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: scripted)
    return scripted


@pytest.fixture
def written(tmp_path, backend, capsys):
    """A results file as `ttcl run --questions` writes it."""
    questions, results = tmp_path / "q.jsonl", tmp_path / "r.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    argv = ["run", "programs/bon.ttcl", "--param", "n=2", "--questions", str(questions), "-o", str(results)]
    assert main(argv) == 0, capsys.readouterr().err
    return results


def test_a_results_file_loads_back_as_the_results_of_the_run(written, backend):
    loaded = ttcl.load_results(written)
    expected = ttcl.load("programs/bon.ttcl", params={"n": 2}).run_many(QUESTIONS, backend=backend)
    assert list(loaded) == [0, 1, 2]
    assert [r.model_dump(exclude=KEPT) for r in loaded.values()] == [r.model_dump(exclude=KEPT) for r in expected]
    assert [r.answer for r in loaded.values()] == ["1", "2", "3"] and loaded[2].cost.generations == 2


def test_a_failed_question_has_no_result_and_a_rerun_one_its_last(written):
    first, second, third = (json.loads(line) for line in written.read_text().splitlines())
    failed = {**first, "answer": None, "error": "q.jsonl:1: the prompt is longer than the model's context"}
    del failed["cost"]
    rerun = {**second, "answer": "two"}
    torn = json.dumps(third)[:40]
    written.write_text("".join(json.dumps(line) + "\n" for line in (failed, third, second, rerun)) + torn)
    loaded = ttcl.load_results(written)
    assert list(loaded) == [1, 2] and loaded[1].answer == "two"


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"program": "p.ttcl", "index": 0, "question": "q", "expected": "1"}'], r"r\.jsonl:1: not a line of"),
        (["not json", '{"index": 0}'], r"r\.jsonl:1: not a line of"),
        (
            ['{"index": 0, "answer_expected": null, "question": "q", "answer": null, "cost": {"generations": "x"}}'],
            "r.jsonl:1: not a result: cost.generations: ",
        ),
    ],
)
def test_what_is_not_a_results_file_is_refused_clearly(tmp_path, lines, message):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=message):
        ttcl.load_results(path)
    with pytest.raises(UsageError, match="no such results file"):
        ttcl.load_results(tmp_path / "missing.jsonl")
