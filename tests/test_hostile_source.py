"""Hostile program text: whatever a source file holds, the answer is a located `TTCLError`
(rendered with a caret excerpt), never a Python traceback, never a hang.

Each class of input is fixed at the mechanism that let it through, and each test here has a
deadline (a subprocess timeout, or an alarm for in-process calls), so a hang fails it.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ttcl
from ttcl import TTCLError
from ttcl.cli.session import Session, is_complete
from ttcl.errors import CheckError, ParseError, SourceError
from ttcl.formatter import format_source
from ttcl.program import check_programs, check_source
from ttcl.source import read_source


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (rather than hang) an in-process call that takes longer than `seconds`."""

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ttcl_cli(*args: str, cwd: Path | None = None, stdin: str | None = None, timeout: float = 60):
    """`ttcl ARGS...` in a subprocess; a hang is a `TimeoutExpired`, so the test fails."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run(
        [sys.executable, "-m", "ttcl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def compile_error(text: str, path: str = "t.ttcl", seconds: float = 20) -> TTCLError:
    with deadline(seconds), pytest.raises(TTCLError) as caught:
        ttcl.compile(text, path)
    return caught.value


def assert_clean(run: subprocess.CompletedProcess, rc: int) -> None:
    assert run.returncode == rc, run.stderr[-2000:]
    assert "Traceback" not in run.stdout + run.stderr


# ---- 1. exponential strategy expansion ---------------------------------------------------


def doubling(levels: int) -> str:
    lines = ["strategy s0(n: int) = sample(n)"]
    lines += [f"strategy s{i}(n: int) = s{i - 1}(n) + s{i - 1}(n)" for i in range(1, levels + 1)]
    return "\n".join(lines + [f"program main = s{levels}(1) |> vote"]) + "\n"


def test_exponential_strategies_are_refused_before_expanding():
    began = time.perf_counter()
    e = compile_error(doubling(40), "exp.ttcl")
    assert time.perf_counter() - began < 5
    assert isinstance(e, CheckError)
    assert "s40" in e.message and "at most 10000" in e.message
    assert (e.span.path, e.span.line, e.span.col) == ("exp.ttcl", 42, 16)  # the call in `main`
    with deadline(10), pytest.raises(CheckError, match="at most 10000"):
        check_programs(check_source(doubling(40), "exp.ttcl"))


def test_strategies_just_under_the_limit_still_compile():
    with deadline(60):
        program = ttcl.compile(doubling(12))  # 4096 samples and 4095 unions
    assert 8000 < len(program.graph) < 10_000


def test_arguments_copied_into_every_use_are_bounded_too():
    lines = ["strategy s0(n: int) = sample(n)"]
    lines += [f"strategy s{i}(n: int) = s{i - 1}(n + n - n)" for i in range(1, 41)]
    e = compile_error("\n".join(lines + ["program main = s40(1) |> vote"]))
    assert "syntax nodes" in e.message and e.span.line == 42


def test_exponential_strategies_in_the_cli_and_the_repl(tmp_path):
    (tmp_path / "exp.ttcl").write_text(doubling(40))
    run = ttcl_cli("check", "exp.ttcl", cwd=tmp_path)
    assert_clean(run, 1)
    assert "exp.ttcl:42:16: error:" in run.stderr and "at most 10000" in run.stderr
    typed = doubling(40).replace("program main = ", "")  # the last line, a bare pipeline
    run = ttcl_cli("repl", stdin=typed, cwd=tmp_path)
    assert "at most 10000" in run.stderr and "Traceback" not in run.stderr


def test_a_huge_bin_count_does_not_hang_the_checker(tmp_path):
    (tmp_path / "bins.ttcl").write_text(
        "program main = match difficulty(prm, bins=100000000000) { _ => sample(1) |> vote }\n"
    )
    run = ttcl_cli("check", "bins.ttcl", cwd=tmp_path, timeout=30)
    assert_clean(run, 1)
    assert "bins.ttcl:1:43: error: `difficulty` argument `bins` must be at most 20" in run.stderr


def test_strategies_that_all_call_each_other_do_not_hang_the_checker(tmp_path):
    # 14 strategies each calling the 13 others make billions of cycles: one error, at once
    names = [f"t{i}" for i in range(14)]
    lines = [f"strategy {a}(n: int) = " + " + ".join(f"{b}(n)" for b in names if b != a) for a in names]
    (tmp_path / "cycles.ttcl").write_text("\n".join(lines + ["program main = t0(1) |> vote"]) + "\n")
    run = ttcl_cli("check", "cycles.ttcl", cwd=tmp_path, timeout=30)
    assert_clean(run, 1)
    assert run.stderr.count("error:") == 1 and "cycles.ttcl:1:10: error: strategy `t0` is recursive" in run.stderr


# ---- 2. huge number literals ---------------------------------------------------------------

HUGE = "9" * 5000


def test_a_huge_integer_literal_is_a_located_parse_error():
    e = compile_error(f"program main = sample({HUGE}) |> vote\n")
    assert isinstance(e, ParseError)
    assert "too large" in e.message and "2^63 - 1" in e.message and len(e.message) < 200
    assert (e.span.line, e.span.col) == (1, 23)
    assert all(len(line) < 200 for line in e.render().splitlines())  # the excerpt is a window


def test_integers_are_refused_just_past_64_bits():
    assert ttcl.compile("program main(seed: int = 9223372036854775807) = sample(4) |> vote\n")
    e = compile_error("program main(seed: int = 9223372036854775808) = sample(4) |> vote\n")
    assert "9223372036854775807" in e.message and e.span.col == 26
    e = compile_error(f"program main = match difficulty(prm) {{ {HUGE} => sample(1) |> vote }}\n")
    assert isinstance(e, ParseError) and e.span.col == 40


def test_a_huge_float_literal_is_a_short_located_error():
    e = compile_error(f"program main = sample(4, temperature={HUGE}.0) |> vote\n")
    assert isinstance(e, ParseError) and "too large" in e.message and len(e.message) < 200
    assert e.span.col == 38


def test_arithmetic_cannot_build_a_huge_integer():
    lines = ["strategy s0(n: int) = sample(n)"]
    lines += [f"strategy s{i}(n: int) = s{i - 1}(n * 9223372036854775807)" for i in range(1, 240)]
    e = compile_error("\n".join(lines[:100] + ["program main = s99(2) |> vote"]))
    assert isinstance(e, CheckError) and "out of range" in e.message
    assert (e.span.line, e.span.col) == (100, 28)  # the first `*` past 64 bits
    compile_error("\n".join(lines + ["program main = s239(2) |> vote"]))  # 4500 digits, once


def test_huge_literals_in_check_fmt_and_the_repl(tmp_path):
    (tmp_path / "big.ttcl").write_text(f"program main = sample({HUGE}) |> vote\n")
    for command in ("check", "fmt"):
        run = ttcl_cli(command, "big.ttcl", cwd=tmp_path)
        assert_clean(run, 1)
        assert "big.ttcl:1:23: error: integer" in run.stderr
    with pytest.raises(TTCLError, match="too large"):  # relocated to what was typed
        Session().submit(f"sample({HUGE}) |> vote")


# ---- 3. symlink loops ----------------------------------------------------------------------


def test_an_import_through_a_symlink_loop_is_a_located_error(tmp_path):
    os.symlink("a.ttcl", tmp_path / "b.ttcl")
    os.symlink("b.ttcl", tmp_path / "a.ttcl")
    main = tmp_path / "main.ttcl"
    main.write_text('import "a.ttcl"\nprogram main = sample(4) |> vote\n')
    with deadline(20), pytest.raises(TTCLError) as caught:
        check_source(main.read_text(), str(main))
    e = caught.value
    assert "symlink loop" in e.message and (e.span.line, e.span.col) == (1, 1)
    run = ttcl_cli("check", "main.ttcl", cwd=tmp_path)
    assert_clean(run, 1)
    assert "main.ttcl:1:1: error: cannot import 'a.ttcl': a.ttcl is a symlink loop" in run.stderr
    run = ttcl_cli("check", "a.ttcl", cwd=tmp_path)  # the loop named on the command line
    assert_clean(run, 2)
    assert "symbolic links" in run.stderr and len(run.stderr.strip().splitlines()) == 1


# ---- 4. devices and FIFOs -------------------------------------------------------------------


def test_a_device_is_refused_unread():
    run = ttcl_cli("check", "/dev/zero", timeout=30)
    assert_clean(run, 2)
    assert "/dev/zero: is a device, not a regular file" in run.stderr
    with pytest.raises(SourceError, match="is a device"):
        read_source("/dev/zero")


def test_a_fifo_does_not_hang_check_or_import(tmp_path):
    os.mkfifo(tmp_path / "f.ttcl")
    run = ttcl_cli("check", "f.ttcl", cwd=tmp_path, timeout=30)
    assert_clean(run, 2)
    assert "f.ttcl: is a FIFO, not a regular file" in run.stderr
    (tmp_path / "main.ttcl").write_text('import "f.ttcl"\nprogram main = sample(4) |> vote\n')
    run = ttcl_cli("check", "main.ttcl", cwd=tmp_path, timeout=30)
    assert_clean(run, 1)
    assert "main.ttcl:1:1: error: cannot import 'f.ttcl'" in run.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_no_more_than_the_cap_is_read_whatever_the_size_says():
    # /proc files are regular and claim a size of 0: only the read itself can stop at the cap
    with pytest.raises(SourceError, match="holds more"):
        read_source("/proc/self/status", max_bytes=10)


# ---- 5. locations ----------------------------------------------------------------------------


def test_carriage_returns_alone_end_lines():
    e = compile_error("# a comment\rprogram main =\r  sample(4) |> vot\r", "cr.ttcl")
    assert isinstance(e, CheckError) and "unknown name `vot`" in e.message
    assert (e.span.line, e.span.col) == (3, 16)
    assert " 3 |   sample(4) |> vot\n" in e.render() + "\n"


def test_windows_line_endings_keep_lines_and_excerpts():
    e = compile_error("program main =\r\n  sample(4) |> vot\r\n")
    assert (e.span.line, e.span.col) == (2, 16)
    assert e.render().splitlines()[1] == " 2 |   sample(4) |> vot"


def test_excerpts_count_lines_as_the_parser_does():
    # a form feed and a U+2028 in a comment are not line breaks to the parser
    e = compile_error("# a\u2028b\x0cc\nprogram main = sample(4) |> vot\n")
    assert e.span.line == 2
    assert " 2 | program main = sample(4) |> vot" in e.render()


def test_nesting_too_deep_points_where_it_gets_too_deep():
    text = "program main = difficulty(thresholds=" + "[" * 100_000 + "]" * 100_000 + ")\n"
    e = compile_error(text)
    assert isinstance(e, ParseError) and "nested more than 200 levels" in e.message
    assert e.span.line == 1 and e.span.start > 200 and text[e.span.start] == "["


def test_a_long_chain_of_strategies_is_located_at_its_call():
    lines = ["strategy s0(n: int) = sample(n)"] + [f"strategy s{i}(n: int) = s{i - 1}(n)" for i in range(1, 1000)]
    text = "\n".join(reversed(lines + ["program main = s999(1) |> vote"])) + "\n"
    e = compile_error(text)
    assert "levels of nesting" in e.message and (e.span.line, e.span.col) == (1, 16)


def test_an_error_inside_a_stdlib_strategy_names_the_call_site(tmp_path):
    text = 'import "search"\nverifier v = prm\nprogram main = beam_search(6, v)\n'
    e = compile_error(text, "main.ttcl")
    assert "multiple of width" in e.message and e.span.path.endswith("search.ttcl")
    assert "in strategy `beam_search` called at main.ttcl:3:16" in e.diagnostics[0].notes
    session = Session()
    session.submit('import "search"')
    session.submit("verifier v = prm")
    with pytest.raises(TTCLError) as caught:
        session.submit("beam_search(6, v)")
    assert "note: in strategy `beam_search` called at <input>:1:1" in caught.value.render()


# ---- 6. what an error shows --------------------------------------------------------------------


def test_control_characters_from_the_source_never_reach_the_terminal(tmp_path):
    text = 'program main = sample("\x1b[2J\x9b1m") |> vote  # \x1b[31m red\n'
    rendered = compile_error(text).render()
    assert "\x1b" not in rendered and "\x9b" not in rendered
    assert "\u241b[2J" in rendered  # ESC shown as its control picture, one column wide
    (tmp_path / "esc.ttcl").write_text(text)
    run = ttcl_cli("check", "esc.ttcl", cwd=tmp_path)
    assert_clean(run, 1)
    assert "\x1b" not in run.stderr
    assert "esc.ttcl:1:23: error:" in run.stderr


def test_tabs_show_as_spaces_and_the_caret_stays_aligned():
    lines = compile_error("program main =\tsample(4) |>\tvot\n").render().splitlines()
    assert "\t" not in "".join(lines)
    assert lines[1].index("vot") == lines[2].index("^")


def test_a_failed_import_never_shows_a_file_that_is_not_ttcl(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET: root:x:0:0\n")
    os.symlink("secret.txt", tmp_path / "lib.ttcl")
    for name in ("./secret.txt", str(secret), "./lib.ttcl"):
        text = f'import "{name}"\nprogram main = sample(4) |> vote\n'
        e = compile_error(text, str(tmp_path / "main.ttcl"))
        rendered = e.render()
        assert "TOPSECRET" not in rendered and "root:" not in rendered
        assert "not a .ttcl file" in e.message and e.span.line == 1


# ---- 7. budgets -------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["-5", "2 - 10", "-(0.5)"])
def test_a_negative_budget_must_be_positive(amount):
    e = compile_error(f"budget {amount} generations\nprogram main = sample(4) |> vote\n")
    assert e.message == "a budget must be positive" and e.span.line == 1
    assert "needs" not in e.render()


# ---- 8. deep nesting -----------------------------------------------------------------------------


def test_deep_nesting_is_a_located_error_not_a_recursion_error(tmp_path):
    arithmetic = "program main = sample(" + "(1 + " * 100_000 + "1" + ")" * 100_000 + ") |> vote\n"
    e = compile_error(arithmetic)
    assert isinstance(e, ParseError) and e.span.start > 200
    negations = "program main = sample(" + "-" * 10_000 + "1) |> vote\n"
    assert compile_error(negations).span.start > 200
    parentheses = "program main = " + "(" * 100_000 + "sample(4)" + ")" * 100_000 + " |> vote\n"
    e = compile_error(parentheses, seconds=5)  # refused by a scan, before the parser spends seconds
    assert (e.span.line, e.span.col) == (1, 216) and "nested more than 200" in e.message
    with deadline(20):  # just under the limit is fine
        assert ttcl.compile("program main = " + "(" * 199 + "sample(4)" + ")" * 199 + " |> vote\n")
    lists = "program main = difficulty(thresholds=" + "[" * 100_000 + "]" * 100_000 + ")\n"
    with pytest.raises(ParseError, match="nested more than 200"):
        format_source(lists)
    typed = lists.replace("program main = ", "")
    assert is_complete(typed)  # the REPL's Enter: whole (an error), told without parsing it
    with pytest.raises(TTCLError, match="nested more than 200"):
        Session().submit(typed)
    (tmp_path / "deep.ttcl").write_text(lists)
    for command in ("check", "fmt"):
        run = ttcl_cli(command, "deep.ttcl", cwd=tmp_path)
        assert_clean(run, 1)
        assert "deep.ttcl:1:" in run.stderr and "nested more than 200 levels" in run.stderr
