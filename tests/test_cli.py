"""The `ttcl` command: outputs, exit codes (0 fine, 1 program errors, 2 usage) and bad files."""

import json
import re
import subprocess
import sys

import pytest

import ttcl.backends
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import _parser, main
from ttcl.cli.present import parse_budget
from ttcl.errors import UsageError
from ttcl.eval.datasets import canonical_name, load


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_ok(capsys):
    code, out, _ = run(capsys, "check", "programs/beam.ttcl", "stdlib/search.ttcl")
    assert code == 0 and "programs/beam.ttcl: ok (main)" in out and "no programs" in out


def test_check_reports_errors_with_caret(capsys, tmp_path):
    bad = tmp_path / "bad.ttcl"
    bad.write_text("program main = sample(4) |> best(prn)\n")
    code, _, err = run(capsys, "check", str(bad))
    assert code == 1
    assert f"{bad}:1:34: error: unknown name `prn`" in err
    assert "^^^" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content, message, code",
    [
        (None, "no such file", 2),
        ("DIR", "is a directory", 2),
        (b"\x00\x01binary", "is a binary file", 1),
        (b"\xff\xfe\xfa", "is not UTF-8", 1),
        (b"", "file is empty", 1),
        (b"# x\n" * 3_000_000, "file is 12.0 MB", 1),
    ],
)
def test_bad_files_get_one_line(capsys, tmp_path, content, message, code):
    path = tmp_path / "f.ttcl"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    rc, out, err = run(capsys, "check", str(path))
    assert rc == code and message in err
    assert len(err.strip().splitlines()) == 1


def test_fmt_check_and_write(capsys, tmp_path):
    path = tmp_path / "p.ttcl"
    path.write_text("program main=sample(4)|>vote\n")
    assert run(capsys, "fmt", "--check", str(path))[0] == 1
    code, out, _ = run(capsys, "fmt", str(path))
    assert code == 0 and out == "program main = sample(4) |> vote\n"
    assert run(capsys, "fmt", "--write", str(path))[0] == 0
    assert path.read_text() == "program main = sample(4) |> vote\n"
    assert run(capsys, "fmt", "--check", str(path))[0] == 0


@pytest.mark.parametrize("fmt, marker", [("text", "program main:"), ("dot", "digraph"), ("mermaid", "flowchart TD")])
def test_graph_formats(capsys, fmt, marker):
    code, out, _ = run(capsys, "graph", "programs/per_difficulty.ttcl", "--format", fmt)
    assert code == 0 and marker in out and "difficulty" in out and "bins 1..2" in out


def test_parse_emits_ast_and_ir(capsys):
    code, out, _ = run(capsys, "parse", "programs/beam.ttcl", "--emit", "ast")
    assert code == 0 and json.loads(out)["node"] == "Module"
    code, out, _ = run(capsys, "parse", "programs/beam.ttcl", "--emit", "ir")
    assert code == 0 and json.loads(out)["program"] == "main"


def test_compile_and_graph_the_artifact(capsys, tmp_path):
    out_path = tmp_path / "beam.json"
    code, _, err = run(capsys, "compile", "programs/bon.ttcl", "--param", "n=8", "-o", str(out_path))
    assert code == 0 and err == f"wrote {out_path} (program main, 4 nodes, 8 generations)\n"
    code, out, _ = run(capsys, "graph", str(out_path))
    assert code == 0 and "sample(n=8" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["graph", "stdlib/search.ttcl"], "defines no program"),
        (["graph", "programs/bon.ttcl", "--program", "nope"], "no program `nope`"),
        (["graph", "programs/bon.ttcl", "--param", "n"], "--param takes NAME=VALUE"),
        (["graph", "programs/bon.ttcl", "--param", "k=3"], "has no parameter `k`"),
        (["compile", "programs/bon.ttcl", "-o", "/nonexistent/dir/x.json"], "cannot write"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_argparse_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fmt"])
    assert info.value.code == 2


def test_python_dash_m_and_console_script():
    done = subprocess.run([sys.executable, "-m", "ttcl", "check", "programs/beam.ttcl"], capture_output=True, text=True)
    assert done.returncode == 0 and "ok (main)" in done.stdout
    done = subprocess.run(["ttcl", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ttcl ")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "a"}\nnot json\n', "q.jsonl:2: not valid JSON"),
        ('{"q": "a"}\n', 'q.jsonl:1: expected a "question" string (or "problem")'),
        ("\n", "no questions"),
    ],
)
def test_bad_questions_files(capsys, tmp_path, content, message):
    questions = tmp_path / "q.jsonl"
    questions.write_text(content)
    code, _, err = run(capsys, "run", "programs/bon.ttcl", "--questions", str(questions))
    assert code == 2 and message in err


# ---- check takes artifacts; fmt takes directories, stdin and --diff --------------------------


def test_check_validates_compiled_artifacts(capsys, tmp_path):
    artifact = tmp_path / "bon.json"
    assert run(capsys, "compile", "programs/bon.ttcl", "-o", str(artifact))[0] == 0
    code, out, _ = run(capsys, "check", str(artifact), "programs/beam.ttcl")
    assert code == 0 and out == f"{artifact}: ok (artifact of main, 16 generations)\nprograms/beam.ttcl: ok (main)\n"
    artifact.write_text(artifact.read_text().replace('"n": 16', '"n": 17'))
    code, _, err = run(capsys, "check", str(artifact))
    assert code == 1 and "checksum" in err and "Traceback" not in err


MESSY, TIDY = "program main=sample(4)|>vote\n", "program main = sample(4) |> vote\n"


def test_fmt_takes_directories_in_sorted_order(capsys, tmp_path):
    (tmp_path / "b").mkdir()
    for name, text in (("b/z.ttcl", MESSY), ("b/a.ttcl", TIDY), ("c.ttcl", MESSY), ("notes.txt", "not a program")):
        (tmp_path / name).write_text(text)
    code, out, _ = run(capsys, "fmt", "--check", str(tmp_path))
    assert (
        code == 1
        and out == f"{tmp_path / 'b/z.ttcl'}: would be reformatted\n{tmp_path / 'c.ttcl'}: would be reformatted\n"
    )
    code, _, err = run(capsys, "fmt", "--write", str(tmp_path))
    assert code == 0 and err.splitlines() == [
        f"wrote {tmp_path / 'b/z.ttcl'} (reformatted)",
        f"wrote {tmp_path / 'c.ttcl'} (reformatted)",
    ]
    assert (tmp_path / "c.ttcl").read_text() == TIDY
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "fmt", str(tmp_path / "empty"))
    assert code == 2 and "no .ttcl files below it" in err


def test_fmt_diff_prints_a_unified_diff_and_exits_1(capsys, tmp_path):
    path = tmp_path / "p.ttcl"
    path.write_text(MESSY)
    code, out, _ = run(capsys, "fmt", "--diff", str(path))
    assert code == 1 and path.read_text() == MESSY
    assert out.splitlines() == [
        f"--- {path}",
        f"+++ {path} (formatted)",
        "@@ -1 +1 @@",
        "-" + MESSY.strip(),
        "+" + TIDY.strip(),
    ]
    path.write_text(TIDY)
    assert run(capsys, "fmt", "--diff", str(path))[:2] == (0, "")


def test_fmt_dash_reads_standard_input():
    def fmt(*argv, text=MESSY):
        return subprocess.run([sys.executable, "-m", "ttcl", "fmt", *argv], input=text, capture_output=True, text=True)

    assert fmt("-").stdout == TIDY
    done = fmt("--check", "-")
    assert done.returncode == 1 and done.stdout == "<stdin>: would be reformatted\n"
    done = fmt("--write", "-")
    assert done.returncode == 2 and "standard input (-) has none" in done.stderr
    done = fmt("-", text="program main = \n")
    assert done.returncode == 1 and done.stderr.startswith("<stdin>:") and "Traceback" not in done.stderr


# ---- one meaning per flag -------------------------------------------------------------------


def test_dataset_ranges_read_alike_in_both_spellings():
    dots, dash = load("arith:2..3", 6), load("arith:2-3", 6)
    assert dots.questions == dash.questions and [q["level"] for q in dots.questions] == [2, 3] * 3
    assert dots.name == dash.name == "arith:2..3" == canonical_name("arith:2-3")
    assert canonical_name("arith:4..4") == "arith:4" and canonical_name("data.jsonl") == "data.jsonl"


@pytest.mark.parametrize("spec", ["arith:0", "arith:3..1", "arith:1..2..3", "arith:x", "arith:1-", "arith:2.."])
def test_bad_dataset_ranges_say_how_a_range_is_written(spec):
    with pytest.raises(
        UsageError, match=r"arith levels are arith:1 to arith:5, or a range of them such as arith:1\.\.3"
    ):
        load(spec, 2)


def test_budgets_mean_the_same_in_every_command():
    assert parse_budget("64") == parse_budget("64 generations") == ("generations", 64.0)
    assert parse_budget("1e13flops") == ("flops", 1e13)
    assert parse_budget("16", "optimize", ("generations",)) == ("generations", 16.0)


@pytest.mark.parametrize(
    "budget, message",
    [
        ("1e13 flops", "ttcl optimize counts its --budget in generations, not flops"),
        ("16.5", "--budget counts whole generations, not 16.5"),
        ("lots", '--budget takes a positive AMOUNT and a unit (generations), such as "16 generations" or "16"'),
        ("0", "--budget takes a positive AMOUNT"),
        ("1e400", "--budget takes a positive AMOUNT"),
    ],
)
def test_optimize_refuses_a_budget_it_cannot_honour(capsys, budget, message):
    code, _, err = run(capsys, "optimize", "programs/bon.ttcl", "--dataset", "arith:1", "--budget", budget)
    assert code == 2 and message in err and "Traceback" not in err


def test_train_prm_writes_to_dash_o_and_keeps_the_old_out(capsys, tmp_path):
    for flag in ("-o", "--output", "--out"):
        assert _parser().parse_args(["train-prm", flag, "h.safetensors"]).output == "h.safetensors"
    code, _, err = run(capsys, "train-prm", "--out", str(tmp_path / "head.bin"))
    assert code == 2 and "-o/--output names a .safetensors file" in err
    with pytest.raises(SystemExit):
        main(["train-prm"])
    usage = capsys.readouterr().err
    assert "-o/--output is required" in usage and "--out " not in usage


# ---- global flags: -q and -v go before the command ----------------------------------------


def test_quiet_silences_all_but_errors(capsys, tmp_path):
    code, _, err = run(capsys, "-q", "compile", "programs/bon.ttcl", "-o", str(tmp_path / "p.json"))
    assert code == 0 and err == ""
    code, _, err = run(capsys, "-q", "check", str(tmp_path / "missing.ttcl"))
    assert code == 2 and "no such file" in err
    args = _parser().parse_args(["-q", "run", "programs/bon.ttcl", "-q", "What is 2 + 3?"])
    assert args.quiet and args.question == "What is 2 + 3?"


def test_verbose_adds_the_traceback_to_an_error(capsys, tmp_path):
    missing = str(tmp_path / "missing.ttcl")
    assert "Traceback" not in run(capsys, "check", missing)[2]
    code, _, err = run(capsys, "-v", "check", missing)
    assert code == 2 and "no such file" in err and "Traceback (most recent call last)" in err
    assert "Traceback" not in run(capsys, "check", missing)[2]  # not left on for the next command


# ---- every command says where it wrote ------------------------------------------------------


@pytest.fixture
def scripted(monkeypatch):
    """Every model answers sums right, without loading one."""

    def solve(request):
        a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", request.messages[-1].content).groups())
        return f"{a} + {b} = {a + b}\n\nThe answer is {a + b}."

    backend = ScriptedBackend(solve, lambda request, options: [0.9, 0.1])
    monkeypatch.setattr(ttcl.backends, "backend_for", lambda decl: backend)


@pytest.fixture
def sums(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n" for a in range(4))
    )
    return path


def test_eval_and_optimize_say_what_they_wrote(capsys, tmp_path, scripted, sums):
    results, report = tmp_path / "r.jsonl", tmp_path / "r.md"
    code, _, err = run(
        capsys,
        "eval",
        "programs/bon.ttcl",
        "--dataset",
        str(sums),
        "--param",
        "n=2",
        "-o",
        str(results),
        "--report",
        str(report),
    )
    assert code == 0 and results.exists() and report.exists()
    assert (
        f"wrote {results} (results, a line per question)\n" in err
        and f"wrote {report} (the tables as Markdown)\n" in err
    )
    program, runs = tmp_path / "o.ttcl", tmp_path / "runs.jsonl"
    argv = ["optimize", "programs/bon.ttcl", "--dataset", str(sums), "--budget", "4 generations", "--probe", "2"]
    code, _, err = run(
        capsys, *argv, "--bins", "2", "--candidate", "majority(2)", "--runs", str(runs), "-o", str(program)
    )
    assert code == 0 and program.exists(), err
    assert f"wrote {program} (the program)\nwrote {runs} (every run's results)\n" in err


def test_run_says_where_it_wrote_the_trace_and_the_calibration(capsys, tmp_path, scripted):
    trace, calibration = tmp_path / "t.jsonl", tmp_path / "c.json"
    argv = ["run", "programs/bon.ttcl", "--param", "n=2", "-q", "What is 2 + 3?", "--json"]
    code, _, err = run(capsys, *argv, "--trace", str(trace), "--calibration-out", str(calibration))
    assert code == 0 and trace.exists() and calibration.exists()
    assert f"wrote {calibration} (measured token lengths, for ttcl cost --calibration)\n" in err
    assert f"wrote {trace} (trace events, one per line)\n" in err
