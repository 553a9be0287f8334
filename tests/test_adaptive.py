"""Adaptive stopping (`adaptive(n, round, confidence, rule)`) and the `confidence` verifier, on
the scripted backend: the rules stop where the hand-computed figures say, never past n, and a
run is charged what it drew; the estimate prices the expected draws and the worst case; the
confidence score is exp(mean token log-probability), at no verifier cost. One real-model test."""

import json
import math
from fractions import Fraction

import pytest

import ttcl
from ttcl.backends.base import Generation
from ttcl.backends.fake import ScriptedBackend
from ttcl.cli.app import main
from ttcl.cost.calibration import Calibration
from ttcl.cost.fit import calibrate
from ttcl.cost.stopping import AGREEMENT, beta_tail, expected_draws, lead, least_lead, rounds, settled
from ttcl.errors import ArtifactError
from ttcl.formatter import format_source
from ttcl.ir import IRDocument, validate

HEADER = 'model policy = llama("smollm2-135m", max_tokens=64)\n'


def in_turn(*answers):
    """A script that answers answers[0], answers[1], ... in the order requests arrive (None:
    a text with no answer), and records each request's sampling parameters."""
    seen = []

    def script(request):
        seen.append(request.params)
        answer = answers[(len(seen) - 1) % len(answers)]
        return "I am not sure." if answer is None else f"Work.\n\nThe answer is {answer}."

    script.seen = seen
    return script


def run(body, script, **backend):
    b = ScriptedBackend(script, **backend)
    return ttcl.compile(HEADER + f"program main = {body}").run("What is 2 + 3?", backend=b), b


def stop_event(result):
    (event,) = [e for e in result.trace if e.event == "adaptive"]
    return event.detail


# ---- the rules, by hand ---------------------------------------------------------------------


def test_the_beta_tail_is_exact():
    # P(p > 1/2), p ~ Beta(v1 + 1, v2 + 1) = sum_{k <= v1} C(v1 + v2 + 1, k) / 2^(v1 + v2 + 1)
    assert beta_tail(4, 0) == Fraction(31, 32)  # 0.969: four votes to none settle at 0.95
    assert beta_tail(3, 0) == Fraction(15, 16)  # 0.9375: three do not
    assert beta_tail(3, 1) == Fraction(26, 32)
    assert beta_tail(7, 1) == Fraction(502, 512)
    assert beta_tail(0, 0) == Fraction(1, 2)  # no votes: a coin toss
    # the same as integrating the Beta density from 1/2 to 1 (midpoint rule)
    for top, second in ((4, 0), (6, 2), (5, 3)):
        steps = 20000
        density = [((i + 0.5) / steps) ** top * (1 - (i + 0.5) / steps) ** second for i in range(steps)]
        beta = math.factorial(top) * math.factorial(second) / math.factorial(top + second + 1)
        assert float(beta_tail(top, second)) == pytest.approx(sum(density[steps // 2 :]) / steps / beta, rel=1e-6)


def test_votes_count_equivalent_answers_and_not_missing_ones():
    assert lead(["5", None, "5", "6", None]) == (2, 1)
    assert lead([None, None]) == (0, 0)
    assert least_lead(4, 0.95) == 4 and least_lead(8, 0.95) == 7 and least_lead(3, 0.95) is None
    assert settled("window", ["6", "5", "5"], 2, 0.95) and not settled("window", ["5", "5", None], 2, 0.95)
    assert rounds(10, 4) == [4, 4, 2] and rounds(3, 4) == [3] and rounds(8, 4) == [4, 4]


# ---- the runtime ----------------------------------------------------------------------------


def test_beta_stops_after_four_agreeing_answers():
    result, backend = run("adaptive(16) |> vote", in_turn(5))
    assert backend.batch_sizes == [4]
    assert result.answer == "5" and len(result.candidates) == 4 and result.cost.generations == 4
    assert stop_event(result) == {
        "rule": "beta",
        "drawn": 4,
        "most": 16,
        "stopped": "settled",
        "leader": 4,
        "runner_up": 0,
        "posterior": 0.96875,
    }


def test_beta_draws_another_round_until_the_leader_is_settled():
    # 3 to 1 after one round (0.8125), 7 to 1 after two (0.980): stops at 8
    result, backend = run("adaptive(16) |> vote", in_turn(5, 5, 5, 6, 5, 5, 5, 5))
    assert backend.batch_sizes == [4, 4] and result.cost.generations == 8
    assert stop_event(result)["stopped"] == "settled" and stop_event(result)["posterior"] == 502 / 512
    # 6 to 2 after two rounds is 0.910, not yet: a third round
    result, backend = run("adaptive(16) |> vote", in_turn(5, 5, 5, 6, 5, 5, 5, 6, 5, 5, 5, 5))
    assert backend.batch_sizes == [4, 4, 4]


def test_answers_that_state_nothing_count_for_nothing():
    # three votes to none (15/16) settle at 0.9 but not at 0.95
    result, backend = run("adaptive(8) |> vote", in_turn(5, 5, None, 5))
    assert backend.batch_sizes == [4, 4]
    result, backend = run("adaptive(8, confidence=0.9) |> vote", in_turn(5, 5, None, 5))
    assert backend.batch_sizes == [4] and stop_event(result)["leader"] == 3


def test_window_stops_after_a_round_that_agrees():
    result, backend = run('adaptive(16, rule="window") |> vote', in_turn(5, 5, 5, 6, 6, 6, 6, 6))
    assert backend.batch_sizes == [4, 4] and result.answer == "6"  # the vote is over all 8: 6 wins 5 to 3
    detail = stop_event(result)
    assert detail["stopped"] == "settled" and "posterior" not in detail
    # a round with an answerless candidate does not agree, nor one of two answers
    _, backend = run('adaptive(12, round=3, rule="window") |> vote', in_turn(5, None, 5, 5, 6, 5, 6, 6, 6))
    assert backend.batch_sizes == [3, 3, 3]


@pytest.mark.parametrize("rule", ["beta", "window"])
@pytest.mark.parametrize("n, size", [(10, 4), (3, 4), (7, 1), (9, 3)])
def test_it_never_draws_past_its_maximum_and_is_charged_what_it_drew(rule, n, size):
    # no answers never settle either rule (a window of one answer would agree with itself)
    result, backend = run(f'adaptive({n}, round={size}, rule="{rule}") |> vote', in_turn(None))
    assert backend.batch_sizes == rounds(n, size)
    assert result.cost.generations == len(result.candidates) == n == stop_event(result)["drawn"]
    assert result.cost.per_node[1].generations == n and stop_event(result)["stopped"] == "maximum"


def test_seeds_are_those_of_sample_and_a_seeded_run_repeats():
    script = in_turn(5)
    adaptive, _ = run("adaptive(8) |> vote", script)
    sampled, _ = run("sample(4) |> vote", in_turn(5))
    assert [c.seed for c in adaptive.candidates] == [c.seed for c in sampled.candidates]
    again, _ = run("adaptive(8) |> vote", in_turn(5))
    assert [c.seed for c in again.candidates] == [c.seed for c in adaptive.candidates]
    assert not any(p.logprobs for p in script.seen)  # no confidence verifier: no log-probabilities


def test_it_takes_a_pool_as_context_and_joins_a_union():
    result, backend = run("revise(2) |> adaptive(4) |> vote", in_turn(5))
    assert backend.batch_sizes == [1, 1, 4] and result.cost.generations == 6
    result, backend = run("adaptive(8) + sample(2) |> vote", in_turn(5))
    assert result.cost.generations == 6  # 4 drawn, then settled, and 2 samples


def test_a_budget_counts_its_maximum():
    with pytest.raises(ttcl.TTCLError, match="needs 16 generations but its budget is 8"):
        ttcl.compile(HEADER + "budget 8 generations\nprogram main = adaptive(16) |> vote")


# ---- types and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (
            'adaptive(8, rule="majority") |> vote',
            "`adaptive` argument `rule` must be one of 'beta', 'window', got 'majority'",
        ),
        ("adaptive(8, confidence=1.0) |> vote", "`adaptive`: confidence must be strictly between 0.5 and 1, got 1"),
        ("adaptive(8, confidence=0.5) |> vote", "`adaptive`: confidence must be strictly between 0.5 and 1, got 0.5"),
        ("adaptive(8, confidence=1.5) |> vote", "confidence must be strictly between 0.5 and 1, got 1.5"),
        ("adaptive(8, round=0) |> vote", "`adaptive` argument `round` must be at least 1, got 0"),
        ("adaptive(0) |> vote", "`adaptive` argument `n` must be at least 1, got 0"),
        ('adaptive(8, confidence="high")', "`adaptive` argument `confidence` must be a float, not a str"),
        ("adaptive(8, 2.5)", "`adaptive` argument `round` must be an int, not a float"),
        ("adaptive(8)", "program `main` gives a Pool, not an Answer"),
        ("vote |> adaptive(8) |> vote", "`adaptive(8)` expects a Question or a Pool, but `vote` gives an Answer"),
        ("beam(8, confidence) |> vote", "`beam` needs a step-level verifier (a PRM), but `confidence` scores only"),
    ],
)
def test_type_and_value_errors(errors_of, call, message):
    text = errors_of(HEADER + f"program main = {call}\n")
    assert text is not None and message in text and "Traceback" not in text


def test_confidence_and_adaptive_are_built_in_names(errors_of):
    text = errors_of(HEADER + 'verifier confidence = check("arith")\nstrategy adaptive(n: int) = sample(n)\n')
    assert "`confidence` is a built-in name" in text and "`adaptive` is a built-in name" in text


def test_an_artifact_is_checked_like_the_source():
    prog = ttcl.compile(HEADER + 'program main = adaptive(8, rule="window") |> weighted_vote(confidence)')
    assert ttcl.ir.loads(ttcl.ir.dumps(prog.ir)) == prog.ir
    data = prog.ir.model_dump(mode="json")
    data["nodes"][1]["params"]["confidence"] = 1.0
    with pytest.raises(ArtifactError, match="confidence must be strictly between 0.5 and 1"):
        validate(IRDocument.model_validate(data))
    data = prog.ir.model_dump(mode="json")
    data["verifiers"]["confidence"]["agg"] = "min"
    with pytest.raises(ArtifactError, match="not the built-in confidence"):
        validate(IRDocument.model_validate(data))


def test_the_formatter_and_the_stdlib_strategy():
    text = HEADER + 'program main = adaptive(16, round=2, rule="window") |> weighted_vote(confidence)\n'
    assert format_source(text) == text
    prog = ttcl.compile('import "parallel"\n' + HEADER + "program main = adaptive_majority(8)")
    assert [prog.graph.nodes[n]["op"] for n in prog.graph] == ["question", "adaptive", "vote", "output"]
    assert prog.ir.generations == 8


# ---- the estimate ---------------------------------------------------------------------------


def test_expected_draws_by_hand():
    # n = 8, round = 4: a second round unless the first four agree, q^4 + (1-q)^4 = 0.1552
    first = AGREEMENT**4 + (1 - AGREEMENT) ** 4
    for rule in ("beta", "window"):
        draws, calls = expected_draws(8, 4, rule, 0.95)
        assert draws == pytest.approx(4 + 4 * (1 - first)) and calls == pytest.approx(2 - first)
    # window: every round stops with the same chance, a geometric sum
    for n in (16, 40):
        expected = sum(4 * (1 - first) ** k for k in range(n // 4))
        assert expected_draws(n, 4, "window", 0.95)[0] == pytest.approx(expected)
    # beta at round 1: after 4 the rule can stop (4 to 0), so at least 4 and at most n
    draws, _ = expected_draws(16, 1, "beta", 0.95)
    assert 4 < draws < 16
    # a stricter rule draws more; a huge maximum is priced quickly and stays finite
    assert expected_draws(64, 4, "beta", 0.99)[0] > expected_draws(64, 4, "beta", 0.9)[0]
    assert expected_draws(1_000_000, 4, "beta", 0.95)[0] < 100


UPPER = Calibration()  # the program's own priors (every answer max_tokens long), as worked out below


def test_the_estimate_prices_the_expected_and_the_worst_case():
    prog = ttcl.compile(HEADER + "program main = adaptive(16) |> weighted_vote(confidence)")
    report = prog.cost(calibration=UPPER)
    draws, _ = expected_draws(16, 4, "beta", 0.95)
    assert report.expected.generations == pytest.approx(draws) and report.worst.generations == 16
    assert report.expected.flops < report.worst.flops
    adaptive, vote = report.nodes[1], report.nodes[2]
    assert adaptive.generations == pytest.approx(draws)
    assert adaptive.decode_tokens == pytest.approx(draws * 64) and report.worst.decode_tokens == 16 * 64
    assert vote.verifier_tokens == 0 and vote.flops == 0  # the confidence verifier costs nothing
    # drawing all 16 costs what sample(16) costs, but for a token re-decoded per later round
    sampled = ttcl.compile(HEADER + "program main = sample(16) |> vote").cost(calibration=UPPER)
    assert report.worst.decode_tokens == sampled.worst.decode_tokens
    assert report.worst.prefill_tokens == sampled.worst.prefill_tokens + 3
    assert prog.cost(flops=False).expected.generations == pytest.approx(draws)  # with the shipped priors too


def test_the_cost_command_shows_both(capsys, tmp_path):
    path = tmp_path / "adaptive.ttcl"
    path.write_text(HEADER + "program main = adaptive(16) |> vote\n")
    assert main(["cost", str(path)]) == 0
    out = capsys.readouterr().out
    assert "adaptive" in out and "expected" in out and "worst case" in out
    assert main(["cost", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["worst"]["generations"] == 16
    assert data["expected"]["generations"] == pytest.approx(expected_draws(16, 4, "beta", 0.95)[0])


def test_a_calibration_reads_its_answers_and_its_draws():
    prog = ttcl.compile(HEADER + "program main = adaptive(16) |> vote")
    results = prog.run_many(["What is 2 + 3?", "What is 1 + 4?"], backend=ScriptedBackend(in_turn(5)))
    cal = calibrate(prog.graph, results)
    assert cal.models["smollm2-135m"].answer_tokens == 5  # "Work. The answer is 5." in words
    report = prog.cost(calibration=cal, flops=False)
    # the expected case comes out at what the runs drew (4 each); the worst case stays at 16 draws
    assert report.nodes[1].decode_tokens == pytest.approx(4 * 5)
    assert report.worst.decode_tokens == pytest.approx(16 * 5)


# ---- the confidence verifier ----------------------------------------------------------------


def test_confidence_is_the_geometric_mean_token_probability():
    per_token = {"5": [-0.1, -0.2, -0.3, -0.4, -0.75], "6": -2.0}  # "Work. The answer is 5." is 5 tokens

    def logprobs(request, text):
        return per_token["5" if "5" in text else "6"]

    script = in_turn(5, 6)
    result, _ = run("sample(2) |> best(confidence)", script, logprobs=logprobs)
    five, six = result.candidates
    assert five.mean_logprob == pytest.approx(-0.35) and five.score == pytest.approx(math.exp(-0.35))
    assert six.mean_logprob == pytest.approx(-2.0) and six.score == pytest.approx(math.exp(-2.0))
    assert result.answer == "5" and all(p.logprobs for p in script.seen)
    assert result.cost.verifier_prompt_tokens == 0


def test_weighted_vote_by_confidence_picks_the_confident_answer():
    def logprobs(request, text):
        return -0.05 if "6" in text else -1.5  # 6 sure of itself, 5 not

    body = "sample(3) |> {}"
    voted, _ = run(body.format("vote"), in_turn(5, 5, 6), logprobs=logprobs)
    weighted, _ = run(body.format("weighted_vote(confidence)"), in_turn(5, 5, 6), logprobs=logprobs)
    assert voted.answer == "5" and weighted.answer == "6"  # 0.95 > 2 × 0.22
    # with adaptive stopping, at no verifier cost
    result, backend = run("adaptive(8) |> weighted_vote(confidence)", in_turn(5), logprobs=logprobs)
    assert result.answer == "5" and backend.batch_sizes == [4] and result.cost.verifier_prompt_tokens == 0


def test_confidence_through_searches_and_difficulty():
    # a search's candidates carry their steps' log-probabilities; difficulty may bin by confidence
    text = ttcl.compile(
        HEADER
        + 'verifier arith = check("arith")\n'
        + "program main = match difficulty(confidence, probe=2) { 1..3 => beam(4, arith, width=2, depth=2) "
        + "|> best(confidence)  _ => sample(2) |> vote }"
    )
    result = text.run("What is 2 + 3?", backend=ScriptedBackend(lambda r: "2 + 3 = 5\n\nThe answer is 5."))
    assert result.bin == 3  # every token at log 1/2: a mean score of 0.5, the third of five bins
    assert all(c.mean_logprob == pytest.approx(math.log(0.5)) for c in result.candidates)


def test_a_backend_without_log_probabilities_is_a_clear_error():
    class Silent(ScriptedBackend):
        def generate(self, requests):
            return [Generation(**g.model_dump(exclude={"logprobs"})) for g in super().generate(requests)]

    with pytest.raises(ttcl.TTCLError, match="the `confidence` verifier needs the log-probabilities"):
        ttcl.compile(HEADER + "program main = sample(2) |> best(confidence)").run(
            "q", backend=Silent(lambda r: "The answer is 5.")
        )


def test_old_records_without_the_field_still_read():
    candidate = {"id": 0, "node": 1, "text": "x", "steps": ["x"], "answer": None}
    assert ttcl.Candidate.model_validate(candidate).mean_logprob is None


# ---- the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_on_the_embedded_model():
    pytest.importorskip("llama_cpp")
    model = 'model policy = llama("smollm2-135m", temperature=0.8, max_tokens=48)\n'
    result = ttcl.compile(model + "program main = adaptive(8) |> vote").run("What is 2 + 3?", seed=0)
    assert result.answer is not None and 4 <= result.cost.generations <= 8
    assert result.cost.generations == len(result.candidates) == stop_event(result)["drawn"]
    scored = ttcl.compile(model + "program main = sample(4) |> weighted_vote(confidence)").run("What is 2 + 3?", seed=0)
    for c in scored.candidates:
        assert c.mean_logprob is not None and math.isfinite(c.mean_logprob)
        assert 0.0 < c.score <= 1.0 and c.score == pytest.approx(math.exp(c.mean_logprob))
