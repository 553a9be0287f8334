"""The `ttcl` command: outputs, exit codes (0 fine, 1 program errors, 2 usage) and bad files."""

import json
import subprocess
import sys

import pytest

from ttcl.cli.app import main


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
    code, out, _ = run(capsys, "compile", "programs/bon.ttcl", "--param", "n=8", "-o", str(out_path))
    assert code == 0 and "8 generations" in out
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
