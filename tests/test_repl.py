"""`ttcl repl`: the session's logic in process, and the real command driven through a
pseudo-terminal with pexpect (multi-line input, errors, completion, history, :commands,
:run on the embedded model and Ctrl-C), and fed from a pipe."""

import os
import re
import subprocess
import sys
import time

import pexpect
import pytest
from conftest import ROOT

from ttcl import TTCLError
from ttcl.cli.session import Session, is_complete

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[=>]|\x1b\][^\x07]*\x07|\r")
UP = "\x1b[A"


# ---- the session, in process --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, complete",
    [
        ("sample(4) |> vote", True),
        ("sample(4) |>", False),
        ("sample(4", False),
        ("strategy bon(n: int) =", False),
        ("strategy bon(n: int) =\n  sample(n) |> vote", True),
        ("program main = match difficulty(prm) {\n 1..2 => sample(4) |> vote", False),
        ('prompt p = """Solve:\n{question}', False),
        ('prompt p = """Solve:\n{question}"""', True),
        ("sample(4) |> ) vote", True),  # an error before the end: submitted, to be reported
        ("1 +", False),
        ("# a comment", True),
        (":run What is (2 + 3?", True),
    ],
)
def test_is_complete(text, complete):
    assert is_complete(text) is complete


def test_redefinition_replaces_in_place_and_errors_point_into_the_input():
    s = Session()
    s.submit('model small = llama("smollm2-135m", max_tokens=32)')
    s.submit("model big = spec(params=1e9)")
    s.submit('model small = llama("smollm2-135m", max_tokens=8)')
    assert [e.key[1] for e in s.models()] == ["small", "big"]  # still the policy
    outcome = s.submit("sample(2) |> vote")
    assert outcome.program.ir.models["small"]["max_tokens"] == 8
    with pytest.raises(TTCLError) as e:
        s.submit("sample(2) |>\n  best(prn)")
    assert e.value.render().startswith("<input>:2:8: error: unknown name `prn`")
    assert " 2 |   best(prn)\n   |        ^^^" in e.value.render()
    assert s.program().graph.nodes[1]["params"]["n"] == 2  # the failed input changed nothing


def test_a_stage_that_is_not_a_program_shows_its_type_only():
    outcome = Session().submit("sample(4)")
    assert str(outcome.stage) == "Question | Pool -> Pool" and outcome.program is None


# ---- the terminal -------------------------------------------------------------------------


class Term:
    """`ttcl repl` in a pseudo-terminal; output is read with its escape codes stripped."""

    def __init__(self, home, *args):
        env = dict(
            os.environ,
            HOME=str(home),
            XDG_DATA_HOME=str(home / "data"),
            TTCL_HISTORY=str(home / "history"),
            TERM="xterm-256color",
            PROMPT_TOOLKIT_NO_CPR="1",
        )
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "ttcl", "repl", *args],
            env=env,
            cwd=str(ROOT),
            encoding="utf-8",
            dimensions=(50, 200),
        )
        self.raw = ""
        self.until("ttcl>")

    def until(self, needle: str, timeout: float = 60) -> str:
        """Everything shown up to and including `needle` (which must show within `timeout`)."""
        end = time.monotonic() + timeout
        while needle not in ANSI.sub("", self.raw):
            if time.monotonic() > end or not self.child.isalive():
                raise AssertionError(f"{needle!r} never showed; the screen had:\n{ANSI.sub('', self.raw)}")
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=0.2)
            except (pexpect.TIMEOUT, pexpect.EOF):
                pass
        text = ANSI.sub("", self.raw)
        cut = text.index(needle) + len(needle)
        self.raw = text[cut:]
        return text[:cut]

    def do(self, line: str, needle: str, timeout: float = 60) -> str:
        """Type a line and Enter; what it showed, up to the next prompt."""
        self.child.send(line + "\r")
        return self.until(needle, timeout) + self.until("ttcl>", timeout)

    def complete(self, typed: str, completion: str) -> None:
        """Type `typed`, then Tab, and wait until `completion` shows (prompt_toolkit completes
        asynchronously, so the typing must show before the Tab is sent)."""
        self.child.send(typed)
        self.until(typed)
        self.child.send("\t")
        self.until(completion)

    def quit(self) -> int:
        self.child.sendcontrol("d")
        self.child.expect(pexpect.EOF, timeout=30)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def term(tmp_path):
    t = Term(tmp_path)
    yield t
    if t.child.isalive():
        t.child.terminate(force=True)


def test_multi_line_declaration_continues_until_complete(term):
    term.child.send("strategy bon(n: int) =\r")
    shown = term.until("...")
    assert "defined" not in shown and "error" not in shown
    shown = term.do("  sample(n) |> vote", "defined strategy bon")
    assert "Question | Pool -> Answer" in shown
    term.child.send("bon(\r")
    term.until("...")
    shown = term.do("3)", "estimated cost")
    assert "sample(n=3, model=policy)" in shown and "(in bon@1:1)" in shown
    assert term.quit() == 0


def test_a_pipeline_shows_its_type_dag_and_cost(term):
    shown = term.do("sample(4) |> vote", "estimated cost")
    assert "type: Question | Pool -> Answer" in shown
    assert re.search(r"n1\s+sample\(n=4, model=policy\)\s+Pool\s+<- n0\s+~\S+ FLOPs\s+<input>:1:1", shown)
    assert re.search(r"n2\s+vote\s+Answer\s+<- n1", shown)
    assert "estimated cost: 4 generations" in shown
    shown = term.do("sample(4)", "not a program")
    assert "type: Question | Pool -> Pool" in shown and "end it with a selector" in shown


def test_an_error_shows_a_caret_and_the_session_goes_on(term):
    shown = term.do("sample(4) |> best(prn)", "error")
    assert "<input>:1:19: error: unknown name `prn`" in shown
    assert "1 | sample(4) |> best(prn)" in shown and "|                   ^^^" in shown
    shown = term.do("model m = llama(42)", "error")
    assert "<input>:1:17: error:" in shown and "^^" in shown
    term.child.send("sample(")  # Ctrl-C on a line clears it
    term.until("sample(")
    term.child.sendintr()
    shown = term.do("sample(3) |> vote", "estimated cost")
    assert "sample(n=3, model=policy)" in shown and "error" not in shown
    assert term.quit() == 0


def test_tab_completes_primitives_and_defined_names(term):
    term.do("strategy my_best_of(n: int) = sample(n) |> vote", "defined strategy my_best_of")
    term.complete("sample(2) |> weighted_v", "ote")
    shown = term.do("(prm)", "estimated cost")
    assert "weighted_vote(v=prm)" in shown
    term.complete("my_be", "st_of")
    shown = term.do("(2)", "estimated cost")
    assert "(in my_best_of@1:1)" in shown
    term.complete(":he", "lp")
    assert ":trace" in term.do("", ":quit")


def test_load_graph_cost_help_and_unknown_commands(term, tmp_path):
    good = tmp_path / "good.ttcl"
    good.write_text(
        'import "search"\n\n# a policy\nmodel policy = llama("smollm2-135m", max_tokens=64)\n'
        "program main = beam_search(8, prm, width=4)\n"
    )
    shown = term.do(f":load {good}", "estimated cost")
    assert f"loaded {good}: search, policy, main" in shown and "current program: main" in shown
    assert re.search(r"n1\s+beam\(n=8, v=prm, width=4.*stdlib/search.ttcl:\d+:\d+ \(in beam_search@5:16\)", shown)
    shown = term.do(":graph dot", "}")
    assert 'digraph "main"' in shown and "weighted_vote(v=prm)" in shown
    shown = term.do(":cost", "model policy")
    assert "estimated cost of main, per question" in shown and "expected" in shown
    shown = term.do(":help", ":quit")
    assert ":run QUESTION" in shown and ":load FILE" in shown and ":trace" in shown
    assert "unknown command `:foo`; :help lists the commands" in term.do(":foo", "unknown")
    assert "no run yet" in term.do(":trace", "no run")
    bad = tmp_path / "bad.ttcl"
    bad.write_text("program main =\n  sample(4) |> best(prn)\n")
    shown = term.do(f":load {bad}", "error")
    assert f"{bad}:2:21: error: unknown name `prn`" in shown and "^^^" in shown
    shown = term.do(":graph", "estimated cost")  # the failed load kept the session
    assert "beam(n=8, v=prm, width=4" in shown
    assert term.quit() == 0


def test_history_persists_across_sessions(tmp_path):
    first = Term(tmp_path)
    first.do("sample(3) |> vote", "estimated cost")
    assert first.quit() == 0
    assert "sample(3) |> vote" in (tmp_path / "history").read_text()
    second = Term(tmp_path)
    second.child.send(UP)
    second.until("sample(3) |> vote")
    shown = second.do("", "estimated cost")
    assert "sample(n=3, model=policy)" in shown
    assert second.quit() == 0


@pytest.mark.slow
def test_run_on_the_embedded_model_and_trace(term):
    term.do("sample(2, max_tokens=16) |> vote", "estimated cost")
    shown = term.do(":run What is 2 + 3?", "generations 2,", timeout=180)
    assert "answer:" in shown and "stopped early" not in shown
    assert "cost per node: measured" in shown
    shown = term.do(":trace", "#1 answer")
    assert "question: What is 2 + 3?" in shown and "n1 sample: 2 candidates" in shown and "#0 answer" in shown
    assert term.quit() == 0


@pytest.mark.slow
def test_ctrl_c_stops_a_run_with_the_best_answer_so_far(term):
    term.do("revise(40, max_tokens=24) |> vote", "estimated cost: 40 generations")
    term.child.send(":run What is 7 + 8?\r")
    term.until("batch 3", timeout=180)
    term.child.sendintr()
    shown = term.until("ttcl>", timeout=120)
    assert re.search(r"answer: \S+ \(stopped early: interrupted\)", shown)
    assert re.search(r"generations ([1-9]|[1-3][0-9]),", shown)  # fewer than the 40 asked for
    assert "(stopped early: interrupted)" in term.do(":trace", "#0 answer")
    term.do("sample(2, max_tokens=8) |> vote", "estimated cost")
    shown = term.do(":run What is 1 + 1?", "generations 2,", timeout=180)
    assert "answer:" in shown and "stopped early" not in shown
    assert term.quit() == 0


# ---- from a pipe --------------------------------------------------------------------------


def repl_piped(text: str, *args):
    return subprocess.run(
        [sys.executable, "-m", "ttcl", "repl", *args], input=text, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_an_answer_declaration_in_a_session_replaces_the_last():
    done = repl_piped("answer choice\nanswer math(prompt=p)\nanswer math\nsample(2) |> vote\n")
    assert done.returncode == 1  # the second names an undeclared prompt; the session goes on
    assert "answer choice\n" in done.stdout and "answer math\n" in done.stdout
    assert "estimated cost: 2 generations" in done.stdout


def test_statements_from_a_pipe():
    done = repl_piped("strategy bon(n: int) =\n  sample(n) |> vote\nbon(2)\n:graph mermaid\n")
    assert done.returncode == 0, done.stderr
    assert "defined strategy bon: Question | Pool -> Answer" in done.stdout
    assert "type: Question | Pool -> Answer" in done.stdout and "estimated cost: 2 generations" in done.stdout
    assert 'n1["sample(n=2, model=policy)"]' in done.stdout
    programs = repl_piped(
        "program main = sample(2) |> vote\nprogram p(n: int) = sample(n) |> vote\n:graph\n"
        "program q = beam(6, prm, width=4) |> vote\n"
    )
    assert "defined program main\nprogram main: 2 generations" in programs.stdout
    assert "defined program p (a parameter has no default" in programs.stdout
    assert programs.stdout.count("program main: 2 generations") == 2  # :graph shows main, still current
    assert "<input>:1:13: error: `beam`: n (6) must be a multiple of width (4)" in programs.stderr
    failed = repl_piped("sample(2) |> vote(\n\nsample(2) |> vote\n")  # a blank line ends an input
    assert failed.returncode == 1
    assert "<input>:1:19: error: unexpected end of file" in failed.stderr
    assert "estimated cost: 2 generations" in failed.stdout


def test_model_shows_and_switches_the_policy(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    done = repl_piped(
        ':model\nmodel small = llama("smollm2-135m", max_tokens=32)\nmodel big = spec(params=1e9)\n'
        f":model big\n:model {gguf}\n:model nope.gguf\n:model small\nsample(2) |> vote\n"
    )
    lines = done.stdout.splitlines()
    assert 'model policy = llama("smollm2-135m")  (the default policy; :model NAME|PATH to change it)' in lines
    assert "model big = spec(params=1e9)  (the policy)" in lines  # `:model big` made it the policy
    assert f'model big = llama("{gguf}")  (the policy)' in lines  # a path replaced the policy's file
    assert "no model `nope.gguf`: not a declared model, a known name" in done.stderr
    assert lines.count('model small = llama("smollm2-135m", max_tokens=32)  (the policy)') == 1
    assert "sample(n=2, model=small)" in done.stdout
