"""The runtime's algorithms on the scripted backend: fast, deterministic, checked by hand."""

import asyncio
import re

import pytest

import ttcl
from ttcl.backends.fake import ScriptedBackend
from ttcl.runtime.answers import extract_answer, normalize
from ttcl.runtime.ops import difficulty_bin
from ttcl.runtime.verifiers import check_arith_step, register_verifier


def answers_by_seed(table):
    """A script whose answer depends on the request's seed: table[seed % len(table)]."""
    return lambda req: f"Work.\n\nThe answer is {table[req.params.seed % len(table)]}."


def run(src, backend, question="What is 2 + 3?", **kw):
    return ttcl.compile(src).run(question, backend=backend, **kw)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the answer is 12.", "12"),
        ("#### 1,200", "1200"),
        ("\\boxed{7}", "7"),
        ("Answer: $3.50", "3.5"),
        ("I get 4 then 9", "9"),
        ("no numbers", None),
        ("The answer is -2", "-2"),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_normalize():
    assert normalize("1,200") == normalize("1200.0") == "1200"


def test_sample_is_one_batch_with_distinct_seeds():
    seeds = []
    backend = ScriptedBackend(lambda r: seeds.append(r.params.seed) or "The answer is 5.")
    result = run("program main = sample(8) |> vote", backend)
    assert backend.batch_sizes == [8] and len(set(seeds)) == 8
    assert result.answer == "5" and len(result.candidates) == 8


def test_vote_takes_the_majority():
    backend = ScriptedBackend(lambda r: f"The answer is {6 if r.params.seed % 4 == 0 else 5}.")
    result = run("program main = sample(16) |> vote", backend)
    counts = {a: sum(c.answer == a for c in result.candidates) for a in ("5", "6")}
    assert result.answer == max(counts, key=counts.get)


def in_turn(*texts):
    """A script that writes texts[0], texts[1], ... in the order requests arrive."""
    calls = []
    return lambda req: calls.append(1) or texts[(len(calls) - 1) % len(texts)]


register_verifier("fixed", lambda q, steps: [{"5": 0.4, "6": 0.7}[extract_answer(steps[-1])]])


def test_weighted_vote_sums_scores_per_answer_where_best_takes_the_top():
    script = ("The answer is 6.", "The answer is 5.", "The answer is 5.")
    weighted = run(
        'verifier v = registered("fixed")\nprogram main = sample(3) |> weighted_vote(v)',
        ScriptedBackend(in_turn(*script)),
    )
    assert sorted(c.answer for c in weighted.candidates) == ["5", "5", "6"]
    assert weighted.answer == "5"  # 0.4 + 0.4 > 0.7
    best = run(
        'verifier v = registered("fixed")\nprogram main = sample(3) |> best(v)', ScriptedBackend(in_turn(*script))
    )
    assert best.answer == "6"
    assert [c.score for c in best.candidates] == [0.7, 0.4, 0.4]


def test_a_failing_registered_verifier_is_a_clear_error():
    with pytest.raises(ttcl.TTCLError, match="registered verifier 'fixed' failed: KeyError"):
        run(
            'verifier v = registered("fixed")\nprogram main = sample(1) |> best(v)',
            ScriptedBackend(lambda r: "The answer is 9."),
        )


def test_beam_keeps_exactly_the_top_n_over_width_by_step_score():
    # Each proposal's step is "s<seed>"; the verifier scores a partial by its last step's number.
    register_verifier("seed_score", lambda q, steps: [int(re.findall(r"\d+", s)[0]) % 97 / 97 for s in steps])
    expanded = []

    def script(req):
        if req.prefix:
            expanded.append(req.prefix)
        return f"s{req.params.seed}\n\nmore"

    backend = ScriptedBackend(script)
    prog = ttcl.compile('verifier v = registered("seed_score")\nprogram main = beam(8, v, width=4, depth=2) |> best(v)')
    result = prog.run("q", backend=backend)
    first = [c for c in result.candidates]
    assert backend.batch_sizes[0] == 8 and len(first) == 8
    # the second step extended exactly the 2 (= 8 / 4) first steps with the highest scores
    parents = {p.strip() for p in expanded}
    assert len(parents) == 2 and len(expanded) == 8
    assert all(p in {c.steps[0] for c in result.candidates} for p in parents)


def test_beam_prunes_by_score():
    register_verifier("prefer_a", lambda q, steps: [1.0 if steps[-1].startswith("A") else 0.0])
    backend = ScriptedBackend(lambda r: ("A" if r.params.seed % 4 == 0 else "B") + f"{r.params.seed}\n\nx")
    result = run('verifier v = registered("prefer_a")\nprogram main = beam(8, v, width=4, depth=2) |> best(v)', backend)
    first_steps = {c.steps[0] for c in result.candidates}
    a_steps = [s for s in first_steps if s.startswith("A")]
    if len(a_steps) >= 2:  # the kept parents are A-steps whenever two exist
        assert first_steps <= set(a_steps)


def test_revisions_see_up_to_four_previous_attempts():
    prompts = []

    def script(req):
        prompts.append(req.messages[0].content)
        return f"attempt {len(prompts)}. The answer is {len(prompts)}."

    result = run("program main = revise(6) |> vote", ScriptedBackend(script))
    assert len(result.candidates) == 6
    assert "Attempt" not in prompts[0]
    shown = [p.count("Attempt ") for p in prompts]
    assert shown == [0, 1, 2, 3, 4, 4]
    assert "attempt 5" in prompts[5] and "attempt 1." not in prompts[5]


def test_parallel_chains_are_batched_together():
    backend = ScriptedBackend(lambda r: "The answer is 1.")
    result = run("program main = revise(3) * 4 |> vote", backend)
    assert backend.batch_sizes == [4, 4, 4] and len(result.candidates) == 12


def test_union_and_run_many_share_batches():
    backend = ScriptedBackend(lambda r: "The answer is 1.")
    results = ttcl.compile("program main = sample(3) + sample(2, temperature=0.1) |> vote").run_many(
        ["a", "b"], backend=backend
    )
    assert backend.batch_sizes == [10] and all(r.answer == "1" for r in results)


def test_difficulty_routes_by_bin_and_reuses_probes():
    register_verifier("constant", lambda q, steps: [0.9])
    backend = ScriptedBackend(lambda r: "The answer is 3.")
    src = (
        'verifier v = registered("constant")\nprogram main = match difficulty(v, probe=3, bins=5) {\n'
        "  1 => sample(2) |> weighted_vote(v)\n  _ => beam(4, v) |> best(v)\n}"
    )
    result = run(src, backend)
    assert result.bin == 1  # mean score 0.9: the easiest bin
    assert len(result.candidates) == 5  # 3 probes + 2 samples; beam never ran
    assert result.cost.generations == 5
    assert [e.op for e in result.trace if e.event == "node" and e.op in ("beam", "sample")] == ["sample"]
    selector = next(e for e in result.trace if e.event == "node" and e.op == "union")
    assert len(selector.detail["candidates"]) == 5


def test_difficulty_bins():
    assert [difficulty_bin(s, 5) for s in (0.95, 0.7, 0.5, 0.3, 0.0)] == [1, 2, 3, 4, 5]
    assert difficulty_bin(0.5, 2, thresholds=[0.6]) == 2


def test_check_arith_scores_equations():
    assert check_arith_step("2 + 3 = 5 and 4 * 2 = 8") > check_arith_step("no math") > check_arith_step("2 + 2 = 5")


def test_token_budget_stops_with_the_best_so_far():
    # A declared budget this small is refused by the checker (its estimate cannot fit), so the
    # runtime's own guard is tested with the limit given to the executor directly.
    from ttcl.runtime.executor import Executor, Limits

    backend = ScriptedBackend(lambda r: "one two three four five. The answer is 4.")
    graph = ttcl.compile("program main = revise(20) |> vote").graph
    (result,) = Executor(graph, lambda name: backend).run([("What is 2 + 3?", None)], 0, Limits(tokens=400))
    assert result.stopped == "budget" and result.answer == "4"
    assert 0 < len(result.candidates) < 20 and result.cost.tokens <= 400


def test_time_limit():
    result = run("program main = revise(5) |> vote", ScriptedBackend(lambda r: "The answer is 2."), time_limit=1e-9)
    assert result.stopped == "time" and result.candidates == []


def test_ctrl_c_keeps_what_was_computed():
    calls = []

    def script(req):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return "The answer is 8."

    result = run("program main = revise(5) |> vote", ScriptedBackend(script))
    assert result.stopped == "interrupted" and result.answer == "8" and len(result.candidates) == 2


def test_seeded_runs_are_reproducible():
    script = lambda r: f"The answer is {r.params.seed % 7}."  # noqa: E731
    prog = ttcl.load("programs/ensemble.ttcl")
    a = prog.run("q", seed=3, backend=ScriptedBackend(script))
    b = prog.run("q", seed=3, backend=ScriptedBackend(script))
    c = prog.run("q", seed=4, backend=ScriptedBackend(script))
    dump = lambda r: r.model_dump(exclude={"elapsed_s"})  # noqa: E731
    assert dump(a) == dump(b) and dump(a) != dump(c)


def test_trace_token_counts_equal_the_backend_counters():
    backend = ScriptedBackend(lambda r: "Step one 2 + 3 = 5.\n\nThe answer is 5.")
    prog = ttcl.load("programs/per_difficulty.ttcl")
    results = prog.run_many(["What is 2 + 3?", "What is 4 + 4?"], backend=backend)
    assert sum(r.cost.prompt_tokens + r.cost.verifier_prompt_tokens for r in results) == backend.counters.prompt_tokens
    assert sum(r.cost.generated_tokens for r in results) == backend.counters.generated_tokens
    for r in results:
        assert sum(n.generated_tokens for n in r.cost.per_node.values()) == r.cost.generated_tokens


def test_oracle_needs_the_truth():
    prog = ttcl.compile("program main = sample(2) |> best(oracle)")
    backend = ScriptedBackend(lambda r: "The answer is 5.")
    assert prog.run("q", backend=backend, answer="5").answer == "5"
    with pytest.raises(ttcl.TTCLError, match="ground-truth"):
        prog.run("q", backend=backend)


def test_unregistered_verifier_is_a_clear_error():
    with pytest.raises(ttcl.TTCLError, match="no verifier registered as 'nobody'"):
        run('verifier v = registered("nobody")\nprogram main = sample(2) |> best(v)', ScriptedBackend(lambda r: "1"))


def test_arun_does_not_block_the_event_loop():
    prog = ttcl.compile("program main = sample(2) |> vote")

    async def main():
        ticks = []

        async def ticker():
            for _ in range(3):
                ticks.append(1)
                await asyncio.sleep(0)

        result, _ = await asyncio.gather(
            prog.arun("q", backend=ScriptedBackend(lambda r: "The answer is 1.")), ticker()
        )
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result.answer == "1" and len(ticks) == 3


def test_generator_fed_a_pool_uses_it_as_context():
    prompts = []
    backend = ScriptedBackend(lambda r: prompts.append(r.messages[0].content) or "The answer is 9.")
    result = run("program main = sample(2) |> sample(3) |> vote", backend)
    assert [p.count("Attempt ") for p in prompts] == [0, 0, 2, 2, 2]
    assert len(result.candidates) == 5 and result.answer == "9"


def test_flops_budget_needs_a_parameter_count():
    backend = ScriptedBackend(lambda r: "The answer is 1.")
    assert run("budget 1e12 flops\nprogram main = sample(2) |> vote", backend).answer == "1"
    backend.n_params = None
    with pytest.raises(ttcl.TTCLError, match="cannot enforce a flops budget"):
        run("budget 1e12 flops\nprogram main = sample(2) |> vote", backend)


FITTED = (
    'verifier v = registered("constant")\n'
    "program main = match difficulty(v, probe=2, thresholds=[{cuts}]) {{\n"
    "  1 => sample(1) |> vote\n  2 => sample(2) |> vote\n  3 => sample(3) |> vote\n}}"
)


@pytest.mark.parametrize(
    "cuts, expected",
    [
        ("0.5, 0.8", 1),  # 0.9 >= 0.8: the easiest bin
        ("0.5, 0.95", 2),  # 0.5 <= 0.9 < 0.95
        ("0.92, 0.95", 3),  # below every cut: the hardest bin
        ("0.5, 0.9", 1),  # a score equal to a threshold is in the easier bin
    ],
)
def test_program_thresholds_decide_the_bin(cuts, expected):
    register_verifier("constant", lambda q, steps: [0.9])
    backend = ScriptedBackend(lambda r: "The answer is 3.")
    result = run(FITTED.format(cuts=cuts), backend)
    assert result.bin == expected
    assert result.cost.generations == 2 + expected  # the probes and the chosen arm's samples
    event = next(e for e in result.trace if e.event == "difficulty")
    assert event.detail == {"mean_score": 0.9, "bin": expected}


def test_program_thresholds_win_over_the_runs():
    register_verifier("constant", lambda q, steps: [0.9])
    backend = ScriptedBackend(lambda r: "The answer is 3.")
    assert run(FITTED.format(cuts="0.92, 0.95"), backend, thresholds=[0.1, 0.2]).bin == 3
    plain = FITTED.replace("thresholds=[{cuts}]", "bins={bins}").format(bins=3)
    assert run(plain, backend, thresholds=[0.92, 0.95]).bin == 3  # the run's, where the program has none
    assert run(plain, backend).bin == 1  # neither: equal widths, 0.9 >= 2/3


def test_program_thresholds_survive_an_artifact(tmp_path):
    register_verifier("constant", lambda q, steps: [0.9])
    path = tmp_path / "fitted.json"
    ttcl.compile(FITTED.format(cuts="0.5, 0.95")).save(path)
    loaded = ttcl.load(path)
    assert loaded.run("q", backend=ScriptedBackend(lambda r: "The answer is 3.")).bin == 2


def test_a_backends_own_error_class_is_located_whatever_its_arguments():
    from ttcl.backends.base import BackendError, RequestError

    class Refused(BackendError):  # a backend's own subclass, built from a code
        def __init__(self, code: int):
            super().__init__(f"refused with code {code:d}")

    class TooLong(RequestError):
        def __init__(self, tokens: int):
            super().__init__(f"{tokens:,d} tokens is too long")

    for error, kind in ((Refused(7), BackendError), (TooLong(9000), RequestError)):

        def fail(request, error=error):
            raise error

        with pytest.raises(kind) as caught:
            run("program main = sample(2) |> vote", ScriptedBackend(fail))
        assert "running `sample`" in caught.value.message and str(error.message) in caught.value.message
        assert isinstance(caught.value, RequestError) == (kind is RequestError)
