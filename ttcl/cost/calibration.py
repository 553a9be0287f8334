"""Calibration: token-length priors measured by earlier runs, per model, for the cost analyzer.

A calibration file is JSON:

    {"format": "ttcl-calibration", "version": 1,
     "models": {"smollm2-135m": {"prompt_tokens": 79, "answer_tokens": 61.5, "answer_steps": 3.2,
                                 "step_tokens": 18.4, "search_steps": 4.1, "verify_tokens": 41.0,
                                 "questions": 20}}}

`Calibration.from_results(graph, results)` builds one from the `Result`s of a program's runs
(`ttcl eval` and the benchmarks write it); `merge` folds several together.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttcl.errors import UsageError
from ttcl.results import Result
from ttcl.source import write_text

FORMAT = "ttcl-calibration"
WHOLE = ("sample", "revise", "difficulty")  # ops whose candidates are whole answers
SEARCH = ("beam", "lookahead", "dvts")


class Priors(BaseModel):
    """Measured token lengths for one model; None where the runs said nothing about it."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: float | None = None  # a rendered solve prompt (chat template and question)
    answer_tokens: float | None = None  # generated tokens of a whole answer
    answer_steps: float | None = None  # steps of a whole answer
    step_tokens: float | None = None  # generated tokens per search step
    search_steps: float | None = None  # steps per search answer
    verify_tokens: float | None = None  # verifier prompt tokens per request, after prefix sharing
    # measured over estimated tokens per "op.component" (prefill, decode, verifier), with the
    # priors above: what lengths alone miss, such as a search's pruned proposals (it runs as
    # many rounds as its longest beam, not its average one) or prompts shared by a batch
    factors: dict[str, float] = Field(default_factory=dict)
    questions: int = 0


class Calibration(BaseModel):
    """Priors per model, keyed by the model's declared path ("smollm2-135m", a GGUF path)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["ttcl-calibration"] = FORMAT
    version: Literal[1] = 1
    models: dict[str, Priors] = Field(default_factory=dict)
    source: str = Field("", exclude=True)  # the file it was read from, for reports

    def for_model(self, decl: dict) -> Priors | None:
        """The priors for a model declaration of the IR, if this calibration has them."""
        return self.models.get(model_key(decl))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration file; a missing or malformed one is a clear `UsageError`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"calibration file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{path}: not a calibration file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f'{path}: not a calibration file (no "format": "{FORMAT}")')
        try:
            return cls.model_validate(data).model_copy(update={"source": str(path)})
        except ValidationError as e:
            first = e.errors()[0]
            raise UsageError(
                f"{path}: malformed calibration at {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None

    def save(self, path: str | Path) -> None:
        write_text(path, self.model_dump_json(indent=1) + "\n")

    def merge(self, other: Calibration) -> Calibration:
        """Both calibrations' models; where both have a model, averages weighted by questions."""
        models = dict(self.models)
        for key, theirs in other.models.items():
            models[key] = _weighted(models[key], theirs) if key in models else theirs
        return Calibration(models=models, source=self.source or other.source)

    @classmethod
    def from_results(cls, graph: nx.DiGraph, results: list[Result]) -> Calibration:
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
        return cls(models={k: t.priors() for k, t in per_model.items() if t.questions}).with_factors(graph, results)

    def with_factors(self, graph: nx.DiGraph, results: list[Result]) -> Calibration:
        """This calibration with each model's `factors`: per op and component, the tokens the
        runs measured over what the estimate with these priors expects, over all results."""
        from ttcl.cost.estimator import estimate

        plain = {key: p.model_copy(update={"factors": {}}) for key, p in self.models.items()}
        report = estimate(graph, self.model_copy(update={"models": plain}), with_flops=False)
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
                update={
                    "factors": {name: got / want for (k, name), (got, want) in sums.items() if k == key and got > 0}
                }
            )
            for key, p in plain.items()
        }
        return self.model_copy(update={"models": models})


def model_key(decl: dict) -> str:
    """How a calibration names a model: its declared path, a served model's name at its URL,
    or `spec` for numbers alone."""
    if decl.get("kind") == "openai":
        return f"{decl.get('model')}@{decl.get('url')}"
    return str(decl.get("path", "spec"))


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


def _weighted(a: Priors, b: Priors) -> Priors:
    total = (a.questions + b.questions) or 1
    values = {
        "factors": {
            name: (a.factors.get(name, 1.0) * a.questions + b.factors.get(name, 1.0) * b.questions) / total
            for name in a.factors.keys() | b.factors.keys()
        }
    }
    for name in Priors.model_fields:
        if name in ("questions", "factors"):
            continue
        x, y = getattr(a, name), getattr(b, name)
        values[name] = x if y is None else y if x is None else (x * a.questions + y * b.questions) / total
    return Priors(**values, questions=a.questions + b.questions)
