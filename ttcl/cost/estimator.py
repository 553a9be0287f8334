"""The cost analyzer: tokens and FLOPs of a compiled program, per IR node, before it runs.

Each generator and verifier pass is priced from token-length priors and the model's facts
(`facts.py`: 2·N per token plus attention and logits). Shared prompt prefixes are charged
once, as the llama backend decodes them (a batch's prompts form a token trie, once per chunk
of 64 sequences), and a search's or a revision chain's later calls pay only for what their
prompts add, as the backend keeps sequences cached across calls and forks them (`seq_cp`).
Reuse across nodes is not credited, nor is eviction from the cache charged.

    question -> sample(16) -> best(prm): one prompt, 16 answers, 16 verifier passes

Priors come from a calibration file written from earlier runs (`Calibration`), else for a
known model from the priors TTCL ships (`calibration.shipped`, measured on its default
prompts), else from the program (`max_tokens`, `depth`, the prompt templates: an upper
bound); the report says which.

Why one module: the estimator prices each op kind with one method of `Estimator`, all
sharing the same priors and the same shared-prefix accounting; the budget diagnostics read
its report. FLOPs formulas, model facts and calibration data live in their own modules.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from ttcl.backends.models import ModelFacts, facts_for
from ttcl.cost.calibration import SHIPPED, Calibration, Priors, model_key, shipped
from ttcl.cost.flops import Exchange, exchange, forward_flops
from ttcl.cost.stopping import expected_draws, rounds
from ttcl.errors import Diagnostic
from ttcl.prompts import REVISE, SOLVE, SOLVE_PROMPTS, VERIFY, solve_template

CHARS_PER_TOKEN = 4  # English in a BPE vocabulary, a rule of thumb (priors only)
CHAT_TOKENS = 24  # a chat template's wrapping: SmolLM2's default system line and role markers
QUESTION_TOKENS = 32  # a question, before calibration
STEP_TOKENS = 32  # one step of a solution (a short paragraph), before calibration
ATTEMPT_TOKENS = 4  # "Attempt 2:" and the blank lines around an attempt in a revision prompt
CHUNK = 64  # sequences the llama backend decodes together (n_seq_max); each chunk prefills its prompt
MAX_CONTEXT = 4  # previous attempts a generator shows (ops.MAX_CONTEXT)
BOUNDARY_TOKENS = 2  # a cached partial solution's next prompt re-decodes its delimiter
TRAILER_TOKENS = 20  # a revision prompt's closing request, after the attempts
UNITS = ("generations", "tokens", "flops")
COMPONENTS = ("prefill", "decode", "verifier")


class NodeEstimate(BaseModel):
    """One IR node's estimated cost; `runs` is the chance it runs (a match arm's share of bins)."""

    model_config = ConfigDict(extra="forbid")

    node: int
    op: str
    where: str
    model: str | None = None
    runs: float = 1.0
    generations: float = 0
    prefill_tokens: float = 0
    decode_tokens: float = 0
    verifier_tokens: float = 0
    flops: float | None = None

    @property
    def tokens(self) -> float:
        return self.prefill_tokens + self.decode_tokens + self.verifier_tokens


class Totals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generations: float = 0
    prefill_tokens: float = 0
    decode_tokens: float = 0
    verifier_tokens: float = 0
    tokens: float = 0
    flops: float | None = None

    def amount(self, unit: str) -> float | None:
        return getattr(self, unit)


class PriorsUsed(BaseModel):
    """The token lengths an estimate assumed for one model, and where they came from."""

    model_config = ConfigDict(extra="forbid")

    source: str  # "program" (upper bounds), "shipped" (measured for a known model) or "calibration FILE"
    prompt_tokens: float
    answer_tokens: float
    answer_steps: float
    step_tokens: float
    search_steps: float | None = None
    verify_tokens: float | None = None  # per verifier request, after sharing (calibrated only)


class CostReport(BaseModel):
    """A program's estimate: per node, expected (arms weighted by their bins, `adaptive`
    stages at their expected draws) and worst case (the costliest arm of each match, every
    `adaptive` stage at its maximum), with the facts and priors it used. The nodes are
    priced as the expected total prices them."""

    model_config = ConfigDict(extra="forbid")

    program: str
    models: dict[str, ModelFacts] = Field(default_factory=dict)
    priors: dict[str, PriorsUsed] = Field(default_factory=dict)
    nodes: list[NodeEstimate]
    expected: Totals
    worst: Totals
    budgets: dict[str, float] = Field(default_factory=dict)
    exchange: Exchange | None = None
    program_multiple: float | None = None  # the program's FLOPs over one plain sample's

    def convert(self, amount: float, unit: str, to: str) -> float | None:
        """A budget in another unit at this program's worst-case rates: generations and
        tokens convert through tokens per generation, tokens and FLOPs through FLOPs per token."""
        totals = self.worst
        per = {u: totals.amount(u) for u in UNITS}
        rate_from, rate_to = per[unit], per[to]
        if not rate_from or rate_to is None:
            return None
        return amount * rate_to / rate_from

    def over_budget(self) -> list[tuple[str, float, float]]:
        """(unit, worst-case amount, budget) for each budget the estimate cannot fit."""
        found = []
        for unit, limit in self.budgets.items():
            amount = self.worst.amount(unit)
            if amount is not None and amount > limit * (1 + 1e-9):
                found.append((unit, amount, limit))
        return found

    def costliest(self, unit: str, k: int = 3) -> list[NodeEstimate]:
        key = {"generations": lambda e: e.generations, "tokens": lambda e: e.tokens, "flops": lambda e: e.flops or 0.0}[
            unit
        ]
        return sorted((e for e in self.nodes if key(e) > 0), key=lambda e: -key(e))[:k]


# ---- priors ------------------------------------------------------------------------------


def _text_tokens(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN


def _template(text: str) -> str:
    """A template's fixed text: its holes and the braces around them removed."""
    for hole in ("{question}", "{attempts}", "{steps}"):
        text = text.replace(hole, "")
    return text


@dataclass
class Lengths:
    """Concrete priors for one generator node: the numbers its estimate multiplies."""

    prompt: float  # a solve prompt without attempts
    answer: float
    answer_steps: float
    step: float
    search_steps: float
    revise_extra: float  # a revision prompt's extra text over a solve prompt


def lengths(priors: Priors | None, max_tokens: int, depth: int, template: str) -> Lengths:
    """The token lengths a node is priced with: calibrated where known, capped by the node's
    `max_tokens` and `depth`, and otherwise from the program."""
    p = priors or Priors()
    # calibrated prompt lengths are those of the default solve prompt: a node's own template
    # adds or saves its difference
    base = _text_tokens(_template(SOLVE))
    own = _text_tokens(_template(template))
    prompt = (p.prompt_tokens if p.prompt_tokens is not None else CHAT_TOKENS + QUESTION_TOKENS + base) + own - base
    answer = min(p.answer_tokens or max_tokens, max_tokens)
    step = min(p.step_tokens or STEP_TOKENS, max_tokens)
    steps = p.search_steps or math.ceil(max_tokens / step)
    return Lengths(
        prompt=prompt,
        answer=answer,
        answer_steps=p.answer_steps or max(1.0, answer / STEP_TOKENS),
        step=step,
        search_steps=max(1.0, min(steps, depth)),
        revise_extra=_text_tokens(_template(REVISE)) - own,
    )


def _verify_parts() -> tuple[float, float]:
    """The verifier prompt around the steps: the shared head (chat, question) and the tail."""
    head, _, tail = VERIFY.partition("{steps}")
    return CHAT_TOKENS + QUESTION_TOKENS + _text_tokens(_template(head)), _text_tokens(tail) + 5


# ---- the estimator -----------------------------------------------------------------------


@dataclass
class Group:
    """Candidates of a pool alike in length: how many, their tokens and steps, and the
    verifiers that have scored them already (scores are cached per verifier)."""

    count: float
    tokens: float
    steps: float
    scored: frozenset = frozenset()


@dataclass
class Acc:
    """A node's running totals."""

    facts: dict
    tokens: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    flops: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))

    def _add(self, component: str, model: str, tokens: float, start: float, logits: float, times: float) -> None:
        self.tokens[component] += times * tokens
        f = self.facts.get(model) if self.facts else None
        if f is not None:
            self.flops[component] += times * forward_flops(f, tokens, start, logits)

    def prompt(self, model: str, tokens: float, chunks: float = 1, start: float = 0.0) -> None:
        # `chunks`: the prompts decoded, an expected count where it may be fractional (adaptive)
        self._add("prefill", model, tokens, start, 1, chunks)

    def generate(self, model: str, sequences: float, tokens: float, start: float) -> None:
        self._add("decode", model, tokens, start, tokens, sequences)

    def verify(self, model: str, tokens: float, start: float, logits: float, times: float = 1.0) -> None:
        self._add("verifier", model, tokens, start, logits, times)

    def scale(self, op: str, factors: dict[str, float]) -> None:
        """Apply a calibration's measured-over-estimated factors, per component."""
        for component in COMPONENTS:
            factor = factors.get(f"{op}.{component}", 1.0)
            self.tokens[component] *= factor
            self.flops[component] *= factor


def _chunks(n: float) -> int:
    return max(1, math.ceil(n / CHUNK))


@dataclass
class Estimator:
    graph: nx.DiGraph
    calibration: Calibration | None = None
    facts: dict[str, ModelFacts] | None = None
    pools: dict[int, list[Group]] = field(default_factory=dict)
    case: str = "expected"  # or "worst": how many samples an `adaptive` stage draws
    drawn: dict[int, float] = field(default_factory=dict)  # an adaptive node's generations, as priced

    def priors(self, model: str) -> Priors | None:
        if self.calibration is None:
            return None
        return self.calibration.for_model(self.graph.graph["models"][model])

    def lengths(self, node: int) -> Lengths:
        params = self.graph.nodes[node]["params"]
        decl = self.graph.graph["models"][params["model"]]
        answer = self.graph.graph.get("answer", {"kind": "number"})
        template = solve_template(params, self.graph.graph["prompts"], answer) or SOLVE_PROMPTS[answer["kind"]]
        return lengths(
            self.priors(params["model"]),
            int(params.get("max_tokens", decl.get("max_tokens", 256))),
            int(params.get("depth", 10**9)),
            template,
        )

    # ---- pools: what flows between nodes, for verifier and context costs --------------

    def input_pool(self, node: int) -> list[Group]:
        preds = sorted(self.graph.predecessors(node), key=lambda u: self.graph.edges[u, node]["slot"])
        return [g for u in preds for g in self.pools.get(u, [])]

    def attempts(self, node: int) -> float:
        """Previous attempts a generator shows: up to 4 of its input Pool (none for the Question)."""
        return min(MAX_CONTEXT, sum(g.count for g in self.input_pool(node)))

    # ---- verifiers ------------------------------------------------------------------------

    def verify(
        self, acc: Acc, name: str, requests: float, unique: float, shared: float = 0.0, head_cached: bool = False
    ) -> None:
        """Price `requests` verifier passes whose step texts hold `unique` new tokens in all,
        plus `shared` tokens of partial solutions that siblings share (decoded once); the
        prompt's head (question) is free where an earlier call left it cached."""
        decl = self.graph.graph["verifiers"][name]
        if decl["kind"] not in ("self_verify", "prm") or requests <= 0:
            # programmatic checkers, registered callables and the oracle use no model; an
            # hf_prm runs its own checkpoint outside the program's models (not priced)
            return
        model = decl["m"]
        head, tail = _verify_parts()
        priors = self.priors(model)
        if priors is not None and priors.verify_tokens is not None:
            acc.verify(model, priors.verify_tokens, head, 1, requests)
            return
        chunks = 0 if head_cached else _chunks(requests)
        acc.verify(model, head, 0, 0, chunks)
        acc.verify(model, shared, head, 0)
        acc.verify(model, unique / requests + tail, head + shared / requests, 1, requests)

    def score_pool(self, acc: Acc, name: str, groups: list[Group]) -> None:
        agg_last = self.graph.graph["verifiers"][name].get("agg", "last") == "last"
        todo = [g for g in groups if name not in g.scored]
        # `last` scores each candidate once; `min`/`prod` every step prefix, whose prompts
        # share all but the last step, so the text is decoded once and each prefix adds a tail
        requests = sum(g.count * (1 if agg_last else g.steps) for g in todo)
        self.verify(acc, name, requests, sum(g.count * g.tokens for g in todo))

    # ---- operations -----------------------------------------------------------------------

    def op_sample(self, node: int, acc: Acc, n_key: str = "n") -> list[Group]:
        params, ln = self.graph.nodes[node]["params"], self.lengths(node)
        n, model, shown = params[n_key], params["model"], self.attempts(node)
        prompt = ln.prompt + (ln.revise_extra + shown * (ln.answer + ATTEMPT_TOKENS) if shown else 0)
        acc.prompt(model, prompt, _chunks(n))
        acc.generate(model, n, ln.answer, prompt)
        return [Group(n, ln.answer, ln.answer_steps)]

    def op_difficulty(self, node: int, acc: Acc) -> list[Group]:
        groups = self.op_sample(node, acc, "probe")
        name = self.graph.nodes[node]["params"]["v"]
        self.score_pool(acc, name, groups)
        return [Group(g.count, g.tokens, g.steps, frozenset({name})) for g in groups]

    def op_revise(self, node: int, acc: Acc) -> list[Group]:
        params, ln = self.graph.nodes[node]["params"], self.lengths(node)
        k, context, model = params["k"], params.get("context", MAX_CONTEXT), params["model"]
        earlier = self.attempts(node)
        # attempt i shows min(context, earlier + i) attempts; past `context` every prompt is alike
        distinct = min(k, context + 1)
        for i in range(distinct):
            shown = min(context, earlier + i)
            prompt = ln.prompt + (ln.revise_extra + shown * (ln.answer + ATTEMPT_TOKENS) if shown else 0)
            times = 1 if i < distinct - 1 else k - distinct + 1  # each attempt is its own call
            # The previous attempt's cached prompt holds the attempts before it: while the
            # window grows only the newest attempt and the closing request are new. Once it
            # slides (or at the first revision) only the chat and the question are shared.
            growing = 0 < i and shown > min(context, earlier + i - 1) and earlier + i - 1 > 0
            new = (
                ln.answer + ATTEMPT_TOKENS + TRAILER_TOKENS
                if growing
                else prompt - (CHAT_TOKENS + QUESTION_TOKENS if i else 0)
            )
            acc.prompt(model, new, times, prompt - new)
            acc.generate(model, times, ln.answer, prompt)
        return [Group(k, ln.answer, ln.answer_steps)]

    def op_beam(self, node: int, acc: Acc) -> list[Group]:
        """n first steps; then per step: score the n partials (after a greedy k-step rollout
        for lookahead), keep n/width, expand each with width proposals."""
        params, ln = self.graph.nodes[node]["params"], self.lengths(node)
        n, m, model, v = params["n"], params["width"], params["model"], params["v"]
        rollout = params.get("k", 0) if self.graph.nodes[node]["op"] == "lookahead" else 0
        prompt = self.search_prompt(node, ln)
        t, steps = ln.step, ln.search_steps
        acc.prompt(model, prompt, _chunks(n))
        acc.generate(model, n, t, prompt)
        # Later calls fork the cached partial solutions: each step's prompts add only the
        # delimiter, and each verifier pass only the new steps and its closing question.
        for s in range(1, math.ceil(steps)):
            for r in range(rollout):
                acc.prompt(model, n * BOUNDARY_TOKENS, 1, prompt + (s + r) * t)
                acc.generate(model, n, t, prompt + (s + r) * t)
            self.verify(acc, v, n, n * (rollout + 1) * t, head_cached=s > 1)
            acc.prompt(model, (n / m) * BOUNDARY_TOKENS, 1, prompt + s * t)
            acc.generate(model, n, t, prompt + s * t)
        return [Group(n, steps * t, steps)]

    op_lookahead = op_beam

    def op_dvts(self, node: int, acc: Acc) -> list[Group]:
        """n/width subtrees; per step each proposes width children, all scored, one kept."""
        params, ln = self.graph.nodes[node]["params"], self.lengths(node)
        n, m, model, v = params["n"], params["width"], params["model"], params["v"]
        prompt, t, steps = self.search_prompt(node, ln), ln.step, ln.search_steps
        trees = n // m
        for s in range(math.ceil(steps)):
            if s == 0:
                acc.prompt(model, prompt, _chunks(n))
            else:  # the kept child of each tree is cached: its next prompt adds the delimiter
                acc.prompt(model, trees * BOUNDARY_TOKENS, 1, prompt + s * t)
            acc.generate(model, trees * m, t, prompt + s * t)
            self.verify(acc, v, trees * m, trees * m * t, head_cached=s > 0)
        return [Group(trees, steps * t, steps)]

    def op_adaptive(self, node: int, acc: Acc) -> list[Group]:
        """Rounds of samples until the vote settles: the first round prefills the prompt, and
        each later one forks it from the cache, re-decoding its last token for the logits."""
        params, ln = self.graph.nodes[node]["params"], self.lengths(node)
        model, first = params["model"], min(params.get("round", 4), params["n"])
        draws, calls = self.draws(node)
        self.drawn[node] = draws
        prompt = self.search_prompt(node, ln)
        acc.prompt(model, prompt, _chunks(first))
        acc.prompt(model, 1, max(calls - 1, 0.0), prompt - 1)
        acc.generate(model, draws, ln.answer, prompt)
        return [Group(draws, ln.answer, ln.answer_steps)]

    def draws(self, node: int) -> tuple[float, float]:
        """An adaptive node's samples and rounds: in the worst case all n, in every round;
        else as many as its rule is expected to draw under the prior answer distribution
        (`stopping.expected_draws`: the leading answer with chance 0.6, else one rival)."""
        params = self.graph.nodes[node]["params"]
        n, size = params["n"], params.get("round", 4)
        if self.case == "worst":
            return float(n), float(len(rounds(n, size)))
        return expected_draws(n, size, params.get("rule", "beta"), params.get("confidence", 0.95))

    def search_prompt(self, node: int, ln: Lengths) -> float:
        shown = self.attempts(node)
        return ln.prompt + (ln.revise_extra + shown * (ln.answer + ATTEMPT_TOKENS) if shown else 0)

    def op_best(self, node: int, acc: Acc) -> list[Group]:
        pool, name = self.input_pool(node), self.graph.nodes[node]["params"]["v"]
        self.score_pool(acc, name, pool)
        return [Group(1, *_mean(pool), frozenset({name}))]

    op_weighted_vote = op_best

    def op_vote(self, node: int, acc: Acc) -> list[Group]:
        return [Group(1, *_mean(self.input_pool(node)))]

    def op_union(self, node: int, acc: Acc) -> list[Group]:
        return self.input_pool(node)

    def op_merge(self, node: int, acc: Acc) -> list[Group]:
        preds = list(self.graph.predecessors(node))
        return max((self.pools.get(u, []) for u in preds), key=lambda p: sum(g.count for g in p), default=[])

    def op_question(self, node: int, acc: Acc) -> list[Group]:
        return []

    op_output = op_union

    # ---- driving --------------------------------------------------------------------------

    def node(self, node: int) -> NodeEstimate:
        attrs = self.graph.nodes[node]
        acc = Acc(self.facts or {})
        self.pools[node] = getattr(self, f"op_{attrs['op']}")(node, acc)
        verifier = self.graph.graph["verifiers"].get(attrs["params"].get("v"), {})
        model = attrs["params"].get("model") or verifier.get("m")
        priors = self.priors(model) if model is not None else None
        if priors is not None:
            # an adaptive node's calibrated factors also hold how many samples runs drew against
            # the expected count; drawing all n, each is priced as a sample is
            scaled_as = "sample" if attrs["op"] == "adaptive" and self.case == "worst" else attrs["op"]
            acc.scale(scaled_as, priors.factors)
        where = str(attrs["span"]) + (f" (in {' > '.join(attrs['origin'])})" if attrs.get("origin") else "")
        return NodeEstimate(
            node=node,
            op=attrs["op"],
            where=where,
            model=model,
            generations=self.drawn.get(node, attrs["generations"]),
            prefill_tokens=acc.tokens["prefill"],
            decode_tokens=acc.tokens["decode"],
            verifier_tokens=acc.tokens["verifier"],
            flops=sum(acc.flops.values()) if self.facts is not None else None,
        )


def _mean(pool: list[Group]) -> tuple[float, float]:
    count = sum(g.count for g in pool) or 1
    return sum(g.count * g.tokens for g in pool) / count, sum(g.count * g.steps for g in pool) / count


# ---- match arms: expected and worst case -------------------------------------------------


def run_chances(graph: nx.DiGraph) -> dict[int, float]:
    """The chance each node runs: a match arm runs for its share of the bins (the bins are
    quantiles of the difficulty score, so each holds an equal share of questions)."""
    chance: dict[int, float] = {}
    for n in nx.lexicographical_topological_sort(graph):
        preds = list(graph.predecessors(n))
        if not preds:
            chance[n] = 1.0
            continue
        parts = [chance[u] * _arm_share(graph, u, n) for u in preds]
        chance[n] = sum(parts) if graph.nodes[n]["op"] == "merge" else min(parts)
    return chance


def _arm_share(graph: nx.DiGraph, u: int, v: int) -> float:
    guard = graph.edges[u, v].get("guard")
    if guard is None or graph.nodes[u]["op"] != "difficulty":
        return 1.0
    return len(guard) / graph.nodes[u]["params"].get("bins", 5)


def worst_case_nodes(graph: nx.DiGraph, cost: dict[int, float]) -> set[int]:
    """Nodes that run in the costliest case: every match takes its costliest arm."""
    skipped: set[int] = set()
    for head in (n for n in graph if graph.nodes[n]["op"] == "difficulty"):
        entries: dict[tuple, set[int]] = defaultdict(set)
        for entry in graph.successors(head):
            guard = graph.edges[head, entry].get("guard")
            if guard is not None:
                entries[tuple(guard)].add(entry)
        if not entries:
            continue
        # the match's own merge: the first merge every arm reaches (inner matches' come earlier)
        reach = [set().union(*(nx.descendants(graph, e) for e in es)) for es in entries.values()]
        merge = min(m for m in set.intersection(*reach) if graph.nodes[m]["op"] == "merge")
        inside = nx.ancestors(graph, merge)
        arms = [(es | r) & inside for es, r in zip(entries.values(), reach)]
        best = max(arms, key=lambda nodes: sum(cost[x] for x in nodes))
        skipped |= set().union(*arms) - best
    return set(graph) - skipped


def _totals(estimates: list[NodeEstimate], weight: dict[int, float], with_flops: bool) -> Totals:
    t = Totals(flops=0.0 if with_flops else None)
    for e in estimates:
        w = weight.get(e.node, 0.0)
        t.generations += w * e.generations
        t.prefill_tokens += w * e.prefill_tokens
        t.decode_tokens += w * e.decode_tokens
        t.verifier_tokens += w * e.verifier_tokens
        if with_flops:
            assert t.flops is not None  # set to 0.0 above
            t.flops += w * (e.flops or 0.0)
    t.tokens = t.prefill_tokens + t.decode_tokens + t.verifier_tokens
    return t


# ---- the public entry points -------------------------------------------------------------


def estimate(
    graph: nx.DiGraph,
    calibration: Calibration | None = None,
    facts: dict[str, ModelFacts] | None = None,
    with_flops: bool = True,
    case: str = "expected",
) -> CostReport:
    """The static estimate of a lowered program. Without a `calibration`, a known model is
    priced with the priors shipped for it (`shipped()`), any other from the program; an empty
    `Calibration()` prices every model from the program (upper bounds). `facts` maps model
    names to their facts (read from the declarations where not given); `with_flops=False`
    prices tokens only and reads no model file. `case="worst"` prices the nodes themselves as
    the worst case does (every `adaptive` stage drawing its maximum), so both totals are the
    worst case."""
    calibration = shipped() if calibration is None else calibration
    if with_flops:
        facts = {name: (facts or {}).get(name) or facts_for(decl, name) for name, decl in graph.graph["models"].items()}
    else:
        facts = None
    order = list(nx.lexicographical_topological_sort(graph))
    est = Estimator(graph, calibration, facts, case=case)
    nodes = [est.node(n) for n in order]
    worst_nodes = nodes
    if case != "worst" and any(op == "adaptive" for _, op in graph.nodes(data="op")):
        worst_nodes = [Estimator(graph, calibration, facts, case="worst").node(n) for n in order]
    chance = run_chances(graph)
    for e in nodes:
        e.runs = chance[e.node]
    by_cost = {e.node: (e.flops if e.flops is not None else e.tokens) for e in worst_nodes}
    worst = {n: 1.0 for n in worst_case_nodes(graph, by_cost)}
    priors = {name: _priors_used(est, name) for name in graph.graph["models"]}
    return CostReport(
        program=graph.graph["program"],
        models=facts or {},
        priors=priors,
        nodes=nodes,
        expected=_totals(nodes, chance, with_flops),
        worst=_totals(worst_nodes, worst, with_flops),
        budgets=dict(graph.graph.get("budgets", {})),
    )


def _priors_used(est: Estimator, model: str) -> PriorsUsed:
    decl = est.graph.graph["models"][model]
    p = est.priors(model)
    ln = lengths(p, int(decl.get("max_tokens", 256)), 10**9, SOLVE_PROMPTS["number"])
    # priors come only from a calibration: the one given, or the shipped one
    given = cast(Calibration, est.calibration).source
    source = "program" if p is None else given if given == SHIPPED else f"calibration {given}".strip()
    return PriorsUsed(
        source=source,
        prompt_tokens=ln.prompt,
        answer_tokens=ln.answer,
        answer_steps=ln.answer_steps,
        step_tokens=ln.step,
        search_steps=p.search_steps if p else None,
        verify_tokens=p.verify_tokens if p else None,
    )


def with_exchange(report: CostReport, big_params: float, ratio: float) -> CostReport:
    """The report with the paper's exchange against a model of `big_params` parameters: the
    size ratio M (total parameters), the matching test-time multiple k, and this program's
    own multiple (its FLOPs over one plain sample's on the same model and priors)."""
    model = next(iter(report.models), None)
    if model is None or report.expected.flops is None:
        return report
    small, priors = report.models[model], report.priors[model]
    one = forward_flops(small, priors.prompt_tokens, 0, 1) + forward_flops(
        small, priors.answer_tokens, priors.prompt_tokens, priors.answer_tokens
    )
    return report.model_copy(
        update={"exchange": exchange(big_params / small.params, ratio), "program_multiple": report.expected.flops / one}
    )


def budget_diagnostics(graph: nx.DiGraph, budgets: dict[str, float], span) -> list[Diagnostic]:
    """Errors for `tokens` and `flops` budgets that no run can meet: even with every answer and
    step one token long the estimate exceeds them. The costliest nodes are named (the checker's
    counterpart of the generations check). A budget the worst case exceeds is the runtime's
    to enforce (it stops with the best answer so far); `ttcl cost` reports it."""
    units = [u for u in ("tokens", "flops") if u in budgets]
    if not units:
        return []
    least = Priors(answer_tokens=1, answer_steps=1, step_tokens=1, search_steps=1)
    floor = Calibration(models={model_key(decl): least for decl in graph.graph["models"].values()})
    try:
        # an adaptive stage counts its maximum, as its generations do
        report = estimate(graph, floor, with_flops="flops" in units, case="worst")
    except Exception as e:  # a model file that cannot be read: say why the budget is unchecked
        from ttcl.errors import TTCLError

        if not isinstance(e, TTCLError):
            raise
        return [Diagnostic(f"cannot check the flops budget of `{graph.graph['program']}`: {e.message}", span)]
    out = []
    for unit, amount, limit in report.over_budget():
        names = ", ".join(
            f"{e.op} at {_line_col(graph, e.node)} ({short_number(cast(float, e.flops) if unit == 'flops' else e.tokens)})"
            for e in report.costliest(unit)
        )
        out.append(
            Diagnostic(
                f"program `{graph.graph['program']}` needs at least about {short_number(amount)} {unit} "
                f"but its budget is {short_number(limit)}",
                span,
                (
                    f"costliest: {names}",
                    "estimated with every answer one token long; `ttcl cost` shows the full estimate",
                ),
            )
        )
    return out


def _line_col(graph: nx.DiGraph, node: int) -> str:
    span = graph.nodes[node]["span"]
    return f"{span.line}:{span.col}"


def short_number(x: float) -> str:
    """A figure as people write it: 1234 -> 1234, 3.2e9 -> 3.2e9."""
    if abs(x) < 1e6:
        return f"{x:.0f}"
    mantissa, exp = f"{x:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exp)}"
