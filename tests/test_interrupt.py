"""Ctrl-C during a run keeps the batch in flight: the text each request had generated comes
back as a candidate marked cut, its tokens counted, for the scripted backend, `ttcl run`, and
(slow) llama.cpp's and torch's decoding loops and a real SIGINT to a `ttcl run` process."""

import itertools
import os
import subprocess
import sys
import textwrap
from io import StringIO

import pytest
from conftest import ROOT
from rich.console import Console

import ttcl
from ttcl.backends.base import Backend, Cut, Generation, GenerationRequest, Message, SamplingParams
from ttcl.backends.decoding import Sequence
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.cli.run import show
from ttcl.cost.fit import calibrate

# what the requests of a batch write, in turn: 7, 4, 10 and 1 words
TEXTS = ["2 + 3 = 5. The answer is 5.", "The answer is 5.", "Two plus three: add them, and write what they make.", "5"]
BON = 'import "parallel"\nmodel policy = llama("smollm2-135m")\nverifier prm = self_verify(policy)\n'


def scripted(interrupt_after=None) -> ScriptedBackend:
    """Request i of a batch writes TEXTS[i % 4]; self-verification scores 0.6."""
    turn = itertools.count()
    return ScriptedBackend(lambda r: TEXTS[next(turn) % 4], lambda r, o: [0.6, 0.4], interrupt_after=interrupt_after)


def test_a_sample_cut_short_keeps_what_each_request_wrote():
    prog = ttcl.compile(BON + "program main = sample(8) |> weighted_vote(prm)")
    backend = scripted(interrupt_after=4)
    result = prog.run("What is 2 + 3?", backend=backend)
    assert result.stopped == "interrupted"
    assert len(result.candidates) == 8  # none lost, however far each had got
    assert [c.cut for c in result.candidates] == [True, False, True, False] * 2
    for c in result.candidates:  # the first 4 words of its text; no answer read from a text cut mid-way
        written = TEXTS[c.id % 4]
        assert c.text == " ".join(written.split()[:4]) and (c.answer is None) == c.cut
    assert result.answer == "5"  # from the candidates that finished
    # the batch's tokens are counted: what the backend counted, all of it
    assert (
        result.cost.generated_tokens
        == backend.counters.generated_tokens
        == sum(c.generated_tokens for c in result.candidates)
    )
    assert result.cost.prompt_tokens == backend.counters.prompt_tokens > 0
    assert result.cost.generations == 8 and result.cost.per_node[1].generated_tokens == result.cost.generated_tokens


def test_only_finished_candidates_answer():
    prog = ttcl.compile(BON + "program main = sample(4) |> vote")
    result = prog.run("What is 2 + 3?", backend=scripted(interrupt_after=1))
    assert result.stopped == "interrupted" and result.cost.generated_tokens == 4
    assert [c.cut for c in result.candidates] == [True, True, True, False]  # "5" is one word: it finished
    assert result.answer == "5"
    result = prog.run("What is 2 + 3?", backend=ScriptedBackend(lambda r: "a b c", interrupt_after=2))
    assert result.answer is None and [c.text for c in result.candidates] == ["a b"] * 4


def test_a_search_cut_short_keeps_its_partial_solutions():
    prog = ttcl.compile(BON.replace("parallel", "search") + "program main = beam_search(4, prm, width=2)")
    steps = ["Add them.", "Then check.", "The answer is 5."]
    backend = ScriptedBackend(lambda r: "\n\n".join(steps[r.prefix.count("\n\n") :]), lambda r, o: [0.6, 0.4])
    first = backend.generate

    def generate(requests):  # Ctrl-C in the third step's batch
        backend.interrupt_after = 1 if backend.counters.batches == 2 else None
        return first(requests)

    backend.generate = generate
    result = prog.run("What is 2 + 3?", backend=backend)
    assert result.stopped == "interrupted" and len(result.candidates) == 4
    for c in result.candidates:  # the steps so far, then the new step's first word
        assert c.cut and c.steps == ["Add them.", "Then check.", "The"] and c.answer is None
    assert result.cost.generated_tokens == backend.counters.generated_tokens


def ended_early():
    """A search's steps: of the first round, every other request ends at once; the rest go on."""
    turn = itertools.count()

    def write(r: GenerationRequest) -> str:
        if r.prefix:
            return "Then check.\n\nThe answer is 5."
        return "The answer is 5." if next(turn) % 2 == 0 else "Add them.\n\nThe answer is 5."

    return write


def test_a_search_cut_short_keeps_the_solutions_that_had_ended():
    prog = ttcl.compile(BON.replace("parallel", "search") + "program main = beam_search(4, prm, width=2)")
    backend = ScriptedBackend(ended_early(), lambda r, o: [0.6, 0.4])
    first, calls = backend.generate, itertools.count()

    def generate(requests):  # Ctrl-C in the second round's batch, after one word
        backend.interrupt_after = 1 if next(calls) == 1 else None
        return first(requests)

    backend.generate = generate
    result = prog.run("What is 2 + 3?", backend=backend)
    assert result.stopped == "interrupted"
    whole = [c for c in result.candidates if not c.cut]
    cut = [c for c in result.candidates if c.cut]
    assert [c.text for c in whole] == ["The answer is 5."] * 2 and all(c.answer == "5" for c in whole)
    assert [c.steps for c in cut] == [["Add them.", "Then"]] * 2  # the kept beam's continuations
    assert result.answer == "5"  # the ended solutions answer for the run


@pytest.mark.parametrize("op", ["beam_search(4, prm, width=2)", "diverse_tree_search(4, prm, width=2)"])
def test_a_search_stopped_in_a_verifier_pass_keeps_every_solution_so_far(op):
    prog = ttcl.compile(BON.replace("parallel", "search") + f"program main = {op}")

    def probs(request, options):
        raise KeyboardInterrupt

    backend = ScriptedBackend(ended_early(), probs)
    result = prog.run("What is 2 + 3?", backend=backend)
    assert result.stopped == "interrupted" and len(result.candidates) == 4
    assert sorted((c.text, c.cut, c.answer) for c in result.candidates) == [
        ("Add them.", True, None),
        ("Add them.", True, None),
        ("The answer is 5.", False, "5"),
        ("The answer is 5.", False, "5"),
    ]
    assert result.answer == "5"


def test_a_search_stopped_by_its_budget_keeps_every_solution_so_far():
    from ttcl.runtime.executor import Executor, Limits

    short = BON.replace("parallel", "search").replace('"smollm2-135m")', '"smollm2-135m", max_tokens=8)')
    prog = ttcl.compile(short + "program main = beam_search(4, prm, width=2)")
    backend = ScriptedBackend(ended_early(), lambda r, o: [0.6, 0.4])
    # 90 tokens: the first round (51 tokens) and its scores, not the second round's 2 × 8 more
    (result,) = Executor(prog.graph, lambda name: backend).run([("What is 2 + 3?", None)], 0, Limits(tokens=90))
    assert result.stopped == "budget" and result.answer == "5" and backend.counters.batches == 1
    assert sorted((c.text, c.cut) for c in result.candidates) == [
        ("Add them.", True),
        ("The answer is 5.", False),
        ("The answer is 5.", False),
    ]  # the beam that was to go on, cut; the one pruned is not a solution of this search


def test_a_verifier_pass_cut_short_is_still_charged():
    prog = ttcl.compile(BON + "program main = sample(4) |> best(prm)")

    def probs(request, options):
        raise KeyboardInterrupt

    backend = ScriptedBackend(lambda r: "The answer is 5.", probs)
    result = prog.run("What is 2 + 3?", backend=backend)
    assert result.stopped == "interrupted" and len(result.candidates) == 4 and not any(c.cut for c in result.candidates)
    assert 0 < result.cost.verifier_prompt_tokens == backend.counters.prompt_tokens - result.cost.prompt_tokens


def test_a_backend_that_keeps_no_text_is_charged_what_it_counted():
    class Plain(Backend):  # raises a bare KeyboardInterrupt, having counted some tokens
        def generate(self, requests):
            self.counters.generated_tokens += 7
            raise KeyboardInterrupt

    prog = ttcl.compile(BON + "program main = sample(4) |> vote")
    result = prog.run("What is 2 + 3?", backend=Plain("plain"))
    assert result.stopped == "interrupted" and result.candidates == [] and result.answer is None
    assert result.cost.generations == 4 and result.cost.generated_tokens == 7  # the batch went out


def test_cut_candidates_do_not_calibrate_lengths():
    prog = ttcl.compile(BON + "program main = sample(4) |> vote")
    result = prog.run("What is 2 + 3?", backend=scripted(interrupt_after=4))
    whole = [c.generated_tokens for c in result.candidates if not c.cut]
    assert calibrate(prog.graph, [result]).models["smollm2-135m"].answer_tokens == sum(whole) / len(whole)


def test_the_cut_contract():
    done = [Generation(text="a", prompt_tokens=3, generated_tokens=1, finish="eos")]
    flight = Cut([Generation(text="b", prompt_tokens=0, generated_tokens=2, finish="cut")])
    cut = Cut.of_call(done, flight, 4)
    assert isinstance(cut, KeyboardInterrupt) and [g.text for g in cut.generations] == ["a", "b", "", ""]
    assert [g.finish for g in Cut.of_call([], KeyboardInterrupt(), 2).generations] == ["cut", "cut"]


def test_the_summary_shows_what_was_kept():
    prog = ttcl.compile(BON + "program main = sample(4) |> weighted_vote(prm)")
    result = prog.run("What is 2 + 3?", backend=scripted(interrupt_after=4))
    shown = StringIO()
    show(result, Console(file=shown, width=80), prog.cost())
    text = shown.getvalue()
    assert "(stopped early: interrupted)" in text and text.count("(cut) ") == 2
    assert f"generated tokens {result.cost.generated_tokens}," in text and result.cost.generated_tokens == 13
    assert "4 candidates kept (2 cut short)" in text


def test_ttcl_run_keeps_the_cut_batch_and_exits_130(capsys, monkeypatch):
    monkeypatch.setattr("ttcl.backends.backend_for", lambda decl: scripted(interrupt_after=3))
    code = main(["run", "programs/bon.ttcl", "--param", "n=4", "-q", "What is 2 + 3?"])
    out = capsys.readouterr().out
    assert code == 130 and "(stopped early: interrupted)" in out and "(cut) " in out
    assert "generated tokens 0," not in out


# ---- the local backends' decoding loops ------------------------------------------------------


def ctrl_c_after(tokens: int):
    """`Sequence.add` that raises KeyboardInterrupt once `tokens` tokens have been sampled in
    all, as Ctrl-C would arrive between two tokens (both local backends record each one so)."""
    add, seen = Sequence.add, itertools.count(1)

    def interrupted(self, *args):
        finished = add(self, *args)
        if next(seen) == tokens:
            raise KeyboardInterrupt
        return finished

    return interrupted


def local_backend(kind: str):
    if kind == "llama":
        from ttcl.backends.llama import load_backend

        return load_backend("smollm2-135m", threads=1)
    pytest.importorskip("torch")
    from ttcl.backends.hf import load_backend as load_torch

    return load_torch("smollm2-135m", threads=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "torch"])
def test_ctrl_c_in_the_decoding_loop_raises_the_text_so_far(kind, monkeypatch):
    backend = local_backend(kind)
    messages = (Message(role="user", content="Write a long story about a cat who learns to fly."),)
    requests = [GenerationRequest(messages=messages, params=SamplingParams(seed=s, max_tokens=40)) for s in (1, 2, 3)]
    backend.reset()
    whole = backend.generate(requests)
    monkeypatch.setattr(Sequence, "add", ctrl_c_after(25))  # in the ninth step of three sequences
    before = backend.counters.model_copy()
    backend.reset()
    with pytest.raises(Cut) as cut:
        backend.generate(requests)
    monkeypatch.undo()
    got = cut.value.generations
    assert [g.finish for g in got] == ["cut"] * 3 and [g.generated_tokens for g in got] == [9, 8, 8]
    assert backend.counters.generated_tokens - before.generated_tokens == 25
    for partial, full in zip(got, whole):  # the same tokens as the uninterrupted run, so far
        assert partial.text and full.text.startswith(partial.text)
    backend.reset()
    assert backend.generate(requests) == whole  # and the backend goes on as before


@pytest.mark.slow
def test_sigint_to_ttcl_run_keeps_the_partial_candidates(tmp_path):
    program = tmp_path / "p.ttcl"
    program.write_text('model policy = llama("smollm2-135m", max_tokens=200)\nprogram main = sample(4) |> vote\n')
    # a real SIGINT, which the process sends itself once the model has sampled 12 tokens
    code = textwrap.dedent(
        f"""
        import itertools, os, signal, sys
        from ttcl.backends.decoding import Sequence
        from ttcl.cli.app import main

        add, seen = Sequence.add, itertools.count(1)

        def counting(self, *args):
            finished = add(self, *args)
            if next(seen) == 12:
                os.kill(os.getpid(), signal.SIGINT)
            return finished

        Sequence.add = counting
        question = "Write a long story about a cat who learns to fly."
        sys.exit(main(["run", {str(program)!r}, "-q", question, "--set", "policy.threads=1"]))
        """
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 130, done.stderr
    assert "(stopped early: interrupted)" in done.stdout and done.stdout.count("(cut) ") == 4
    assert "generated tokens 12," in done.stdout and "4 candidates kept (4 cut short)" in done.stdout
