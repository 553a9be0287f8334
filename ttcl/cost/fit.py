"""Fitting a calibration to measured runs: the priors (prompt, answer and step lengths,
verifier prompts) that runs of a program measured, and per op and component the factor by
which what they measured differs from what the estimate with those priors expects. Kept apart
from `calibration` (the data and its file) because it prices the program with the estimator."""

from __future__ import annotations

from collections import defaultdict

import networkx as nx

from ttcl.cost.calibration import Calibration, Priors, model_key
from ttcl.cost.estimator import estimate
from ttcl.results import Result

WHOLE = ("sample", "adaptive", "revise", "difficulty")  # ops whose candidates are whole answers
SEARCH = ("beam", "lookahead", "dvts")


def calibrate(graph: nx.DiGraph, results: list[Result]) -> Calibration:
    """Priors measured by runs of the program whose IR is `graph`: the prompt of a fresh
    sample, the length and steps of whole answers and of search answers, and verifier
    prompt tokens per request (from the trace's verifier batches)."""
    per_model: dict[str, _Tally] = defaultdict(_Tally)
    models = graph.graph["models"]
    for result in results:
        seen = set()
        for c in result.candidates:
            attrs = graph.nodes[c.node] if c.node in graph else None
            if attrs is None or "model" not in attrs["params"]:
                continue
            key = model_key(models[attrs["params"]["model"]])
            seen.add(key)
            per_model[key].candidate(attrs["op"], c, _takes_question(graph, c.node))
        for key in seen:
            per_model[key].questions += 1
        for key, requests, tokens in _verifier_batches(graph, result):
            per_model[key].verify_requests += requests
            per_model[key].verify_tokens += tokens
    return with_factors(
        Calibration(models={k: t.priors() for k, t in per_model.items() if t.questions}), graph, results
    )


def with_factors(calibration: Calibration, graph: nx.DiGraph, results: list[Result]) -> Calibration:
    """This calibration with each model's `factors`: per op and component, the tokens the
    runs measured over what the estimate with these priors expects, over all results."""
    plain = {key: p.model_copy(update={"factors": {}}) for key, p in calibration.models.items()}
    report = estimate(graph, calibration.model_copy(update={"models": plain}), with_flops=False)
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])  # measured, estimated
    for e in report.nodes:
        if e.model is None or e.runs <= 0:
            continue
        key = model_key(graph.graph["models"][e.model])
        measured = [r.cost.per_node[e.node] for r in results if e.node in r.cost.per_node]
        for component, expected, field in (
            ("prefill", e.prefill_tokens, "prompt_tokens"),
            ("decode", e.decode_tokens, "generated_tokens"),
            ("verifier", e.verifier_tokens, "verifier_prompt_tokens"),
        ):
            if expected > 0:
                tally = sums[(key, f"{e.op}.{component}")]
                tally[0] += sum(getattr(m, field) for m in measured) / len(results)
                tally[1] += expected * e.runs
    models = {
        key: p.model_copy(
            update={"factors": {name: got / want for (k, name), (got, want) in sums.items() if k == key and got > 0}}
        )
        for key, p in plain.items()
    }
    return calibration.model_copy(update={"models": models})


def _takes_question(graph: nx.DiGraph, node: int) -> bool:
    return all(graph.nodes[u]["op"] in ("question", "difficulty") for u in graph.predecessors(node))


def _verifier_batches(graph: nx.DiGraph, result: Result):
    """(model key, requests, verifier tokens) per node that ran verifier passes."""
    requests: dict[int, int] = defaultdict(int)
    for event in result.trace:
        if event.event == "batch" and event.detail.get("kind") == "Probs" and event.node is not None:
            requests[event.node] += int(event.detail.get("requests", 0))
    for node, count in requests.items():
        cost = result.cost.per_node.get(node)
        verifier = graph.graph["verifiers"].get(graph.nodes[node]["params"].get("v"), {})
        if cost is not None and count and verifier.get("kind") == "self_verify":
            yield model_key(graph.graph["models"][verifier["m"]]), count, cost.verifier_prompt_tokens


class _Tally:
    def __init__(self):
        self.questions = 0
        self.prompts: list[int] = []
        self.answers: list[tuple[int, int]] = []  # (generated tokens, steps) of whole answers
        self.searches: list[tuple[int, int]] = []
        self.verify_requests = 0
        self.verify_tokens = 0

    def candidate(self, op: str, c, fresh_prompt: bool) -> None:
        if c.cut:  # cut short by Ctrl-C: its length says nothing of an answer's
            return
        if op in WHOLE:
            self.answers.append((c.generated_tokens, len(c.steps)))
            # a batch's shared prompt is charged to its first request; the rest report 0
            if fresh_prompt and c.prompt_tokens and op != "revise":
                self.prompts.append(c.prompt_tokens)
        elif op in SEARCH:
            self.searches.append((c.generated_tokens, len(c.steps)))

    def priors(self) -> Priors:
        answers, searches = self.answers, self.searches
        return Priors(
            prompt_tokens=_mean(self.prompts),
            answer_tokens=_mean([t for t, _ in answers]),
            answer_steps=_mean([s for _, s in answers]),
            step_tokens=sum(t for t, _ in searches) / sum(s for _, s in searches) if searches else None,
            search_steps=_mean([s for _, s in searches]),
            verify_tokens=self.verify_tokens / self.verify_requests if self.verify_requests else None,
            questions=self.questions,
        )


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None
