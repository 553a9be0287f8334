"""Hostile input to `ttcl eval` and `ttcl run --questions`: results files of another run, a
question longer than the model's context, a torn or garbage last line, outputs that cannot be
written, JSON nested past Python's recursion limit, and limits that make no sense. Each gets a
clear error or a graceful result, never a traceback, and nothing already computed is lost.
Runs on the scripted backend (no model)."""

import json
import os
import re

import pytest

import ttcl
import ttcl.backends
from ttcl.backends.chat import prompt_tokens
from ttcl.backends.fake import ScriptedBackend, render
from ttcl.cli.app import main
from ttcl.errors import UsageError
from ttcl.eval.datasets import load, read_jsonl
from ttcl.eval.evaluate import Eval, bind_budget, read_records, summarize

PROGRAM = """
model policy = llama("smollm2-135m", max_tokens=16)
verifier prm = self_verify(policy)
program main(n: int = 2) = sample(n) |> vote
"""
N_CTX = 40  # the scripted model's context, in words


def solve(request):
    """A model that answers "What is <expression>?" right, and refuses a prompt longer than
    its context with the error a real backend gives (`chat.prompt_tokens`)."""
    prompt_tokens(lambda text, special: text.split(), render(request), 4, N_CTX, "scripted")
    expression = re.search(r"What is ([-+*() \d]+)\?", request.messages[-1].content).group(1)
    return f"The answer is {eval(expression)}."


def backend():
    return ScriptedBackend(solve)


QUESTIONS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (4, 1), (2, 2), (5, 3)]]
LONG = {"question": "What is 2 + 2? " + "Think hard. " * 40, "answer": "4"}


def evaluate(path, questions=QUESTIONS, budgets=(2,), program=PROGRAM, **kwargs):
    prog = ttcl.compile(program)
    ev = Eval(path, questions, backend=backend(), isolate=True, **kwargs)
    finished = all(ev.run(prog, "p", b, "n") for b in budgets)
    return ev, finished


@pytest.fixture
def scripted(monkeypatch):
    """The declared model is the scripted one; `calls` counts its batches (model work)."""
    calls = []

    def backend_for(decl):
        calls.append(decl)
        return shared

    shared = backend()
    monkeypatch.setattr(ttcl.backends, "backend_for", backend_for)
    return shared


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


# ---- 1. a resumed results file must be of the same run -----------------------------------


def test_resume_refuses_another_dataset_program_seed_or_budget(tmp_path):
    path = tmp_path / "r.jsonl"
    evaluate(path)
    original = path.read_bytes()
    assert all(r.question_hash and r.program_hash and r.seed == 0 for r in read_records(path))
    other = [dict(q, question=q["question"].replace("?", " ?")) for q in QUESTIONS]
    with pytest.raises(UsageError, match=r"the dataset differs .*choose another --output"):
        evaluate(path, questions=other, resume=True)
    with pytest.raises(
        UsageError, match=r"the dataset differs \(the file has a result for question \d, and this dataset has 2"
    ):
        evaluate(path, questions=QUESTIONS[:2], resume=True)
    with pytest.raises(UsageError, match=r"the seed differs \(--seed 0 in the file, 1 now\)"):
        evaluate(path, resume=True, seed=1)
    edited = PROGRAM.replace("max_tokens=16", "max_tokens=32")
    with pytest.raises(UsageError, match=r"the program differs \(`p` at budget 2 is not the program"):
        evaluate(path, resume=True, program=edited)
    ev = Eval(path, QUESTIONS, resume=True, backend=backend())
    prog = ttcl.compile(PROGRAM)
    with pytest.raises(
        UsageError, match=r"the budgets differ \(the file has `p` at budget 2, and this eval runs it at"
    ):
        ev.expect([("p", 4, bind_budget(prog, 4, "n"))])
    with pytest.raises(UsageError, match=r"the programs differ \(the file has results of `p`"):
        ev.expect([("q", 2, bind_budget(prog, 2, "n"))])
    ev.expect([("p", 2, bind_budget(prog, 2, "n"))])  # the same run: it resumes
    assert path.read_bytes() == original  # a refused resume changes nothing
    # a comment or a moved line is not another program: source positions are not hashed
    assert evaluate(path, resume=True, program="# moved\n\n" + PROGRAM)[1]
    assert path.read_bytes() == original


def test_resume_refuses_records_that_do_not_say_what_they_are_of(tmp_path):
    path = tmp_path / "r.jsonl"
    evaluate(path)
    old = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.endswith("_hash")}) + "\n" for r in old))
    with pytest.raises(UsageError, match="written by an older TTCL.*choose another --output, or remove"):
        evaluate(path, resume=True)


def test_eval_command_refuses_a_resume_at_another_seed(capsys, tmp_path, scripted):
    program = tmp_path / "p.ttcl"
    program.write_text(PROGRAM)
    out = tmp_path / "o.jsonl"
    argv = ["eval", program, "--dataset", "arith:1", "--limit", "3", "--budgets", "1,2", "-o", out]
    assert cli(capsys, *argv)[0] == 0
    batches = scripted.counters.batches
    code, _, err = cli(capsys, *argv, "--resume", "--seed", "1")
    assert code == 2 and "the seed differs" in err and "choose another --output" in err
    code, _, err = cli(capsys, *argv[:-4], "--budgets", "4", "-o", out, "--resume")
    assert code == 2 and "the budgets differ" in err
    assert scripted.counters.batches == batches  # refused before any model work
    code, out_text, _ = cli(capsys, *argv, "--resume")  # the same run resumes (nothing to do)
    assert code == 0 and scripted.counters.batches == batches and "100.0%" in out_text


# ---- 2. a question longer than the model's context fails alone ----------------------------


def test_a_question_too_long_for_the_context_fails_alone_and_the_eval_goes_on(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = QUESTIONS[:2] + [LONG] + QUESTIONS[2:]
    data.write_text("".join(json.dumps(q) + "\n" for q in rows))
    questions = read_jsonl(str(data)).questions
    path = tmp_path / "r.jsonl"
    ev, finished = evaluate(path, questions=questions, budgets=(2, 4))
    assert finished
    records = read_records(path)
    assert len(records) == 2 * len(rows)  # every question, every budget: nothing lost
    failed = [r for r in records if r.failed]
    assert [(r.index, r.budget) for r in failed] == [(2, 2), (2, 4)]
    assert all(not r.correct and "context overflow" in r.error and "dataset line 3" in r.error for r in failed)
    assert all(r.correct for r in records if not r.failed)
    summaries = summarize(records)
    assert [(s.questions, s.correct, s.failed) for s in summaries] == [(5, 4, 1), (5, 4, 1)]
    assert summaries[0].flops is not None  # the failed question does not make the cost unknown
    again, finished = evaluate(path, questions=questions, budgets=(2, 4), resume=True)
    assert finished and len(read_records(path)) == len(records)  # resume does not hit it again


def test_an_error_of_the_model_itself_still_stops_the_eval(tmp_path):
    def broken(request):
        raise ttcl.backends.BackendError("model scripted: llama_decode failed with code -3")

    ev = Eval(tmp_path / "r.jsonl", QUESTIONS, backend=ScriptedBackend(broken), isolate=True)
    with pytest.raises(ttcl.backends.BackendError, match="llama_decode failed"):
        ev.run(ttcl.compile(PROGRAM), "p")
    assert ev.records == []


def test_without_isolation_a_question_too_long_stops_the_eval_naming_its_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in [*QUESTIONS[:2], LONG, *QUESTIONS[2:]]))
    ev = Eval(tmp_path / "r.jsonl", read_jsonl(str(data)).questions, backend=backend())  # as optimize runs
    with pytest.raises(ttcl.backends.BackendError, match=r"question 2 \(dataset line 3\): .*context overflow"):
        ev.run(ttcl.compile(PROGRAM), "p")
    assert sorted(r.index for r in read_records(tmp_path / "r.jsonl")) == [0, 1]  # what finished is kept


def test_eval_and_run_commands_report_the_failed_question(capsys, tmp_path, scripted):
    program = tmp_path / "p.ttcl"
    program.write_text(PROGRAM)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in [QUESTIONS[0], LONG, QUESTIONS[1]]))
    code, out, err = cli(capsys, "eval", program, "--dataset", data, "-o", tmp_path / "o.jsonl")
    assert code == 0 and "failed" in out and "1 question failed" in err and "dataset line 2" in err
    code, _, err = cli(capsys, "run", program, "--questions", data, "-o", tmp_path / "run.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert code == 0 and sorted(line["index"] for line in lines) == [0, 1, 2]
    assert [line["index"] for line in lines if line.get("error")] == [1] and "context overflow" in err


# ---- 3. a garbage last line is cut off, its bytes kept ----------------------------------------


def test_a_garbage_last_line_is_cut_off_with_a_backup_and_the_next_resume_works(tmp_path):
    path = tmp_path / "r.jsonl"
    evaluate(path)
    lines = path.read_text().splitlines()
    damaged = "\n".join(lines[:-1]) + "\n" + "garbage {\n"
    path.write_text(damaged)
    ev, finished = evaluate(path, resume=True)
    assert finished and len(read_records(path)) == len(QUESTIONS)
    assert "garbage" not in path.read_text()
    assert (tmp_path / "r.jsonl.torn").read_text() == damaged  # the file as it was
    assert len(ev.notes) == 1 and "r.jsonl.torn" in ev.notes[0]
    ev, finished = evaluate(path, resume=True)  # the next resume reads the file
    assert finished and len(ev.records) == len(QUESTIONS)


# ---- 4. run --questions never overwrites; --resume runs what is missing -----------------------


def test_run_questions_refuses_to_overwrite_and_resumes(capsys, tmp_path, scripted):
    program = tmp_path / "p.ttcl"
    program.write_text(PROGRAM)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "out.jsonl"
    argv = ["run", program, "--questions", questions, "-o", out]
    assert cli(capsys, *argv)[0] == 0
    whole = out.read_text()
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "already holds results: --resume" in err and out.read_text() == whole
    out.write_text("".join(whole.splitlines(keepends=True)[:2]))  # as if killed after two
    batches = scripted.counters.batches
    assert cli(capsys, *argv, "--resume")[0] == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3]  # each once
    assert scripted.batch_sizes[batches:] == [4]  # only the two missing questions ran (n=2 each)
    code, _, err = cli(capsys, *argv, "--resume", "--seed", "3")
    assert code == 2 and "the seed differs" in err
    code, _, err = cli(capsys, *argv, "--resume", "--param", "n=3")
    assert code == 2 and "the program differs" in err


# ---- 5. every output is checked before any work ---------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "{p}", "-q", "What is 1 + 1?", "--trace", "{t}/missing/t.jsonl"], "--trace"),
        (["run", "{p}", "--questions", "{q}", "-o", "{t}/missing/o.jsonl"], "--output"),
        (["run", "{p}", "--questions", "{q}", "--calibration-out", "{t}/missing/c.json"], "--calibration-out"),
        (
            ["run", "{p}", "--questions", "{q}", "-o", "{t}/o.jsonl", "--trace", "{t}/o.jsonl"],
            "--output and --trace both name",
        ),
        (["eval", "{p}", "--dataset", "{q}", "-o", "{t}/missing/o.jsonl"], "--output"),
        (["eval", "{p}", "--dataset", "{q}", "-o", "{t}/o.jsonl", "--report", "{t}"], "it is a directory"),
        (["eval", "{p}", "--dataset", "{q}", "-o", "{t}/o.jsonl", "--plot", "{t}/missing/p.png"], "--plot"),
        (["optimize", "{p}", "--dataset", "{q}", "--runs", "{t}/missing/r.jsonl"], "--runs"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(capsys, tmp_path, scripted, argv, message):
    program = tmp_path / "p.ttcl"
    program.write_text(PROGRAM)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    argv = [a.format(p=program, q=questions, t=tmp_path) for a in argv]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err and ("cannot write" in err or "both name" in err)
    assert scripted.counters.batches == 0 and not (tmp_path / "o.jsonl").exists()


# ---- 6. JSON nested past the recursion limit is a bad line ----------------------------------


def test_deeply_nested_json_is_a_bad_line_not_a_recursion_error(capsys, tmp_path, scripted):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    data = load(str(path))
    assert len(data.questions) == 1 and data.skipped == [f"{path}:2: JSON nested too deeply to read"]
    with pytest.raises(UsageError, match=r"d.jsonl:2: JSON nested too deeply"):
        load(str(path), strict=True)
    program = tmp_path / "p.ttcl"
    program.write_text(PROGRAM)
    code, _, err = cli(capsys, "run", program, "--questions", path)
    assert code == 2 and "d.jsonl:2: JSON nested too deeply" in err
    results = tmp_path / "r.jsonl"  # a results file so nested is refused (not the last line) or cut
    results.write_text("[" * 100_000 + "]" * 100_000 + "\n" + "[" * 100_000 + "\n")
    with pytest.raises(UsageError, match="r.jsonl:1: not an eval record"):
        Eval(results, QUESTIONS, resume=True)


# ---- 7. limits that make no sense are refused at once ----------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "{p}", "--dataset", "arith:1", "--limit", "1000000000"], "level 1 has 810 distinct questions"),
        (["eval", "{p}", "--dataset", "arith", "--limit", "5000"], "has at most 4050"),
        (["eval", "{p}", "--dataset", "arith:1", "--limit", "0"], "--limit must be positive"),
        (["eval", "{p}", "--dataset", "arith:1", "--limit", "-5"], "--limit must be positive"),
        (["run", "{p}", "-q", "What is 1 + 1?", "--time-limit", "nan"], "--time-limit takes a positive number"),
        (["run", "{p}", "-q", "What is 1 + 1?", "--time-limit", "0"], "--time-limit takes a positive number"),
        (["run", "{p}", "-q", "What is 1 + 1?", "--time-limit", "-2"], "--time-limit takes a positive number"),
    ],
)
def test_a_limit_that_makes_no_sense_is_refused_at_once(capsys, tmp_path, scripted, argv, message):
    program = tmp_path / "p.ttcl"
    program.write_text(PROGRAM)
    argv = [a.format(p=program) for a in argv] + (["-o", tmp_path / "o.jsonl"] if argv[0] == "eval" else [])
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err and scripted.counters.batches == 0


def test_a_device_or_fifo_as_a_dataset_is_refused_unread(tmp_path):
    from ttcl import TTCLError
    from ttcl.eval.datasets import read_jsonl

    fifo = tmp_path / "questions.jsonl"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        with pytest.raises(TTCLError):
            read_jsonl(path)
