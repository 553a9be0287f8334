"""Verifiers: scoring candidates, per step, and aggregating the step scores.

A verifier is a declaration from the IR (`{"kind": "self_verify", "m": "policy", "agg":
"last"}`). Scoring is a generator that may yield `Probs` asks to the executor (the model's own
P(Yes) needs a forward pass), so verifier passes are batched with everything else.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Generator, Mapping

from ttcl.backends.base import GenerationRequest
from ttcl.errors import TTCLError, UsageError
from ttcl.prompts import head_messages, verify_messages
from ttcl.results import Candidate

# Python callables registered through the API: name -> fn(question, steps) -> per-step scores
REGISTERED: dict[str, Callable[[str, list[str]], list[float] | float]] = {}


def register_verifier(name: str, fn: Callable[[str, list[str]], list[float] | float]) -> None:
    """Make `fn(question, steps)` available to programs as `registered("name")`.

    It returns one score in [0, 1] per step, or one score for the whole answer.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"register_verifier: the name must be a non-empty string, not {name!r}")
    if not callable(fn):
        raise UsageError(
            f"register_verifier({name!r}, ...): expected a function fn(question, steps) -> scores, "
            f"got {type(fn).__name__}"
        )
    REGISTERED[name] = fn


class Probs:
    """An ask to the executor: next-token probabilities of `options` after each request."""

    def __init__(self, model: str, requests: list[GenerationRequest], options: list[str]):
        self.model, self.requests, self.options = model, requests, options


class Hidden:
    """An ask to the executor: the final hidden state at the end of each request (for a
    trained PRM head)."""

    options = ()

    def __init__(self, model: str, requests: list[GenerationRequest]):
        self.model, self.requests = model, requests


def aggregate(scores: list[float], how: str) -> float:
    """One score from per-step scores: the last (the paper's choice), the minimum, or the product."""
    if not scores:
        return 0.0
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    return scores[-1]


def score(
    question: str,
    candidates: list[Candidate],
    name: str,
    verifier: dict,
    correct: Callable[[str | None], bool] | None = None,
) -> Generator[Probs, list, list[float]]:
    """Score each candidate (cached per verifier name) and return the aggregated scores.
    `correct(answer)` grades an answer against the ground truth, where it is known."""
    todo = [c for c in candidates if name not in c.scores]
    if todo:
        per_step = yield from _SCORERS[verifier["kind"]](question, todo, verifier, correct)
        for c, s in zip(todo, per_step):
            c.scores[name] = s
    totals = [aggregate(c.scores[name], verifier.get("agg", "last")) for c in candidates]
    for c, total in zip(candidates, totals):
        c.score = total
    return totals


def _self_verify(question, candidates, verifier, truth):
    # With `last` only the final step's score is needed: one forward pass per candidate.
    last_only = verifier.get("agg", "last") == "last"
    prefixes = [
        (i, c.steps[: j + 1])
        for i, c in enumerate(candidates)
        for j in ([len(c.steps) - 1] if last_only else range(len(c.steps)))
    ]
    requests = [GenerationRequest(messages=verify_messages(question, steps)) for _, steps in prefixes]
    probs = yield Probs(verifier["m"], requests, ["Yes", "No"])
    out: list[list[float]] = [[] for _ in candidates]
    for (i, _), (yes, no) in zip(prefixes, probs):
        out[i].append(yes / (yes + no) if yes + no > 0 else 0.5)
    return out


_EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x×])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


def check_arith_step(step: str) -> float:
    """Score one step by its arithmetic: (correct + 0.5) / (equations + 1), so a step with no
    equation is neutral (0.5), correct work raises the score and a wrong equation lowers it."""
    found = _EQUATION.findall(step.replace(",", ""))
    ops = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "x": lambda a, b: a * b,
        "×": lambda a, b: a * b,
        "/": lambda a, b: a / b if b else math.nan,
    }
    correct = sum(abs(ops[op](float(a), float(b)) - float(c)) < 1e-6 for a, op, b, c in found)
    return (correct + 0.5) / (len(found) + 1)


def _check(question, candidates, verifier, truth):
    return [[check_arith_step(s) for s in c.steps] for c in candidates]
    yield  # a generator that never needs the model


def _registered(question, candidates, verifier, truth):
    fn = REGISTERED.get(verifier["name"])
    if fn is None:
        raise TTCLError(
            f"no verifier registered as {verifier['name']!r}; call ttcl.register_verifier(name, fn) before running"
        )
    out = []
    for c in candidates:
        try:
            s = fn(question, list(c.steps))
        except Exception as e:  # user code: report it as a program error, not a traceback
            raise TTCLError(f"registered verifier {verifier['name']!r} failed: {type(e).__name__}: {e}") from e
        out.append(checked_scores(s, len(c.steps), verifier["name"]))
    return out
    yield


def checked_scores(returned: object, steps: int, name: str) -> list[float]:
    """What a registered verifier returned for a candidate of `steps` steps, as its scores:
    one number in [0, 1] (for the whole answer), or a sequence of them, one per step (a
    sequence of one counts as a whole-answer score). Anything else is a `TTCLError` naming
    the verifier, never a score taken as it is."""
    expected = f"it must return one score in [0, 1] per step ({steps}) or one for the whole answer"
    if isinstance(returned, numbers.Real):
        values: list[object] = [returned]
    elif isinstance(returned, (str, bytes, bytearray, Mapping)) or returned is None:
        raise TTCLError(f"registered verifier {name!r} returned a {type(returned).__name__}; {expected}")
    else:
        try:
            values = list(returned)  # type: ignore[call-overload]  # any iterable, a numpy array too
        except TypeError:
            raise TTCLError(f"registered verifier {name!r} returned a {type(returned).__name__}; {expected}") from None
        except Exception as e:  # a generator of scores that fails is user code failing
            raise TTCLError(f"registered verifier {name!r} failed: {type(e).__name__}: {e}") from e
        if len(values) not in (steps, 1):
            raise TTCLError(
                f"registered verifier {name!r} returned {len(values)} scores for a candidate of {steps} "
                f"step{'s' * (steps != 1)}; {expected}"
            )
    scores = []
    for value in values:
        if not isinstance(value, numbers.Real):
            raise TTCLError(
                f"registered verifier {name!r} returned a score of type {type(value).__name__} ({_show(value)}); "
                "scores are numbers in [0, 1]"
            )
        try:
            number = float(value)
        except (OverflowError, ValueError):  # an int or Fraction far past 1
            number = math.inf
        if not 0.0 <= number <= 1.0:  # NaN fails this too
            raise TTCLError(
                f"registered verifier {name!r} returned the score {_show(value)}; scores are numbers in [0, 1]"
            )
        scores.append(number)
    return scores


def _show(value: object) -> str:
    """A short repr of a value from user code, for a message."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ is the user's too
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _oracle(question, candidates, verifier, correct):
    if correct is None:
        raise TTCLError("the `oracle` verifier needs the ground-truth answer (run(..., answer=...))")
    return [[1.0 if correct(c.answer) else 0.0] for c in candidates]
    yield


def confidence_score(c: Candidate) -> float:
    """A whole answer's confidence from its own sampled tokens: exp(mean token log-probability),
    the geometric mean of their probabilities, in (0, 1]. It weights a vote as DeepConf's
    confidence-weighted majority voting does (Fu et al. 2025, *Deep Think with Confidence*,
    average trace confidence), with the sampled token's probability in place of DeepConf's
    mean over the top-k tokens, which backends do not report; no verifier pass is run. An
    answer of no tokens has no confidence (0)."""
    if c.mean_logprob is None:
        if c.generated_tokens == 0:
            return 0.0
        raise TTCLError(
            "the `confidence` verifier needs the log-probabilities of each answer's tokens, "
            f"and the backend that wrote candidate {c.id} gave none"
        )
    return math.exp(min(c.mean_logprob, 0.0))


def _confidence(question, candidates, verifier, truth):
    return [[confidence_score(c)] for c in candidates]
    yield  # scored from the candidates themselves


def _prm(question, candidates, verifier, truth):
    """A trained head on the policy's hidden state at the end of each step, in the context
    heads are trained in (`prompts.HEAD_CONTEXT`; see `ttcl.runtime.prm`)."""
    from ttcl.runtime.prm import check_fits, load_head, step_prefixes

    head = load_head(verifier["path"])
    every = verifier.get("agg", "last") != "last"
    prefixes = [(i, text) for i, c in enumerate(candidates) for _, text in step_prefixes(c.steps, every)]
    requests = [GenerationRequest(messages=head_messages(question), prefix=text) for _, text in prefixes]
    features = yield Hidden(verifier["m"], requests)
    if len(prefixes):
        check_fits(head, features.shape[1], verifier["m"], verifier["path"])
    out: list[list[float]] = [[] for _ in candidates]
    for (i, _), s in zip(prefixes, head.score(features) if len(prefixes) else []):
        out[i].append(float(s))
    return out


def _hf_prm(question, candidates, verifier, truth):
    from ttcl.runtime.prm import load_hf_prm

    prm = load_hf_prm(verifier["path"], verifier.get("device", "cpu"))
    every = verifier.get("agg", "last") != "last"
    scores = prm.score(question, [list(c.steps) for c in candidates])
    return [s if every else s[-1:] for s in scores]
    yield  # scored in-process by torch, not by a backend of the program


_SCORERS = {
    "self_verify": _self_verify,
    "prm": _prm,
    "hf_prm": _hf_prm,
    "check": _check,
    "registered": _registered,
    "oracle": _oracle,
    "confidence": _confidence,
}
