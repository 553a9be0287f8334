"""Budget sweeps from one sample pool, as search-and-learn computes its best-of-N curves.

A program whose budget only sets how many independent samples feed an order-free selector
(`sample(n) |> vote`, `best(v)`, `weighted_vote(v)`; the stdlib's `majority`, `best_of_n` and
`weighted_best_of_n`) is run once per question at the largest budget. Every smaller budget b
is then evaluated on random subsets of b candidates of that pool: b independent samples are
what a run at budget b would have drawn, and a verifier's score of a candidate does not depend
on the others it is scored with, so a subset is a run at budget b that costs nothing more.

`pool_plan(program, param)` decides statically whether a program qualifies, and says why
when it does not (search keeps partial solutions by score, a revision sees earlier attempts,
a difficulty match chooses per question). `outcomes(...)` gives each budget's share of
resampled subsets answered right, the answer chosen most often, and what the budget costs
run alone: the shared prompt once, the subset's own generated tokens, its share of the
verifier's work.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import networkx as nx

from ttcl.program import Program
from ttcl.results import Candidate, Result
from ttcl.runtime.answers import AnswerKind
from ttcl.runtime.ops import highest, majority, weighted_choice
from ttcl.runtime.verifiers import aggregate

RESAMPLES = 32  # subsets per smaller budget: selection is cheap, and the mean's noise shrinks
SELECTORS = ("vote", "best", "weighted_vote")  # order-free: a subset's choice is a run's choice
_WHY_NOT = {
    "beam": "beam search keeps partial solutions by their scores, so its candidates depend on one another",
    "lookahead": "lookahead search keeps partial solutions by their scores, so its candidates depend on one another",
    "dvts": "tree search keeps partial solutions by their scores, so its candidates depend on one another",
    "revise": "each revision sees the attempts before it, so a chain is not independent samples",
    "difficulty": "a difficulty match chooses a strategy per question",
    "union": "its pool comes from more than one stage",
}


@dataclass(frozen=True)
class PoolPlan:
    """Where a qualifying program's pool and selector are, and how the selector scores."""

    sample: int  # the sample node (lowering numbers a program's nodes alike at every budget)
    selector: int
    op: str  # vote, best or weighted_vote
    verifier: str | None  # the selector's verifier, by name
    agg: str  # how that verifier's step scores aggregate


def pool_plan(program: Program, param: str, budgets: list[int]) -> PoolPlan | str:
    """The plan to sweep `program`'s budget parameter `param` over `budgets` from one pool,
    or why it cannot be (a sentence): at the smallest and the largest budget it must be
    question -> sample(n = the budget) -> a selector -> output."""
    plans = []
    for budget in sorted({min(budgets), max(budgets)}):
        graph = program.bind(**{param: budget}).graph
        ops = {graph.nodes[n]["op"] for n in graph}
        reason = next((why for op, why in _WHY_NOT.items() if op in ops), None)
        if reason:
            return reason
        chain = list(nx.topological_sort(graph))
        shape = [graph.nodes[n]["op"] for n in chain]
        if len(shape) != 4 or shape[1] != "sample" or shape[2] not in SELECTORS:
            return f"it is not one sample(n) feeding vote, best or weighted_vote ({' -> '.join(shape)})"
        sample, selector = chain[1], chain[2]
        if graph.nodes[sample]["params"]["n"] != budget:
            return f"`{param}` does not set the number of samples (at {budget} it draws {graph.nodes[sample]['params']['n']})"
        verifier = graph.nodes[selector]["params"].get("v")
        agg = graph.graph["verifiers"][verifier].get("agg", "last") if verifier else "last"
        plans.append(PoolPlan(sample, selector, shape[2], verifier, agg))
    return plans[0]


@dataclass
class Outcome:
    """One budget's result from a pool: the share of subsets answered right, the answer the
    subsets chose most often, and the mean cost of a subset run alone."""

    share: float
    answer: str | None
    tokens: float
    flops: float | None
    generations: int


def outcomes(
    result: Result, plan: PoolPlan, budgets: list[int], answers: AnswerKind, truth: str, rng: random.Random
) -> dict[int, Outcome]:
    """Each budget's outcome from the pool `result` drew at the largest budget. The largest
    budget (or any the pool does not exceed) is the pool itself, as it ran."""
    pool = [c for c in result.candidates if c.node == plan.sample]
    scores = [aggregate(c.scores.get(plan.verifier, []), plan.agg) for c in pool] if plan.verifier else []
    out = {}
    for budget in budgets:
        if budget >= len(pool):
            subsets = [list(range(len(pool)))]
        else:
            subsets = [sorted(rng.sample(range(len(pool)), budget)) for _ in range(RESAMPLES)]
        chosen = [
            select(plan.op, [pool[i] for i in s], [scores[i] for i in s] if scores else [], answers) for s in subsets
        ]
        right = [answers.same(c.answer if c else None, truth) for c in chosen]
        costs = [subset_cost(result, plan, pool, s) for s in subsets]
        flops = [f for _, f in costs]
        out[budget] = Outcome(
            share=sum(right) / len(right),
            answer=_most_chosen(chosen, answers),
            tokens=sum(t for t, _ in costs) / len(costs),
            flops=None if None in flops else sum(f for f in flops if f is not None) / len(flops),
            generations=min(budget, len(pool)),
        )
    return out


def select(op: str, pool: list[Candidate], scores: list[float], answers: AnswerKind) -> Candidate | None:
    """What the selector `op` chooses from `pool` (with its candidates' `scores`)."""
    if not pool:
        return None
    if op == "vote":
        return majority(pool, answers)
    if op == "best":
        return highest(pool, scores)
    return weighted_choice(pool, scores, answers)


def _most_chosen(chosen: list[Candidate | None], answers: AnswerKind) -> str | None:
    classes = [c for c in answers.classes([c.answer if c else None for c in chosen]) if c is not None]
    return Counter(classes).most_common(1)[0][0] if classes else None


def subset_cost(
    result: Result, plan: PoolPlan, pool: list[Candidate], subset: list[int], scored: list[int] | None = None
) -> tuple[float, float | None]:
    """A subset's tokens and FLOPs run alone: the shared prompt once and its own generated
    tokens, at the pool's measured FLOPs per token, plus the verifier's work on the candidates
    `scored` (by default the subset; [] for a selector without a verifier)."""
    sampled, selected = result.cost.per_node.get(plan.sample), result.cost.per_node.get(plan.selector)
    if sampled is None or not pool:
        return 0.0, None
    scored = subset if scored is None else scored
    own = sampled.prompt_tokens + sum(pool[i].generated_tokens for i in subset)
    # a backend scores identical candidates once (their prompts are one): the verifier's work
    # is per distinct text
    share = len({pool[i].text for i in scored}) / len({c.text for c in pool}) if scored else 0.0
    tokens = own + (selected.tokens * share if selected else 0.0)
    flops = None
    if sampled.flops is not None and (selected is None or selected.flops is not None):
        per_token = sampled.flops / max(1, sampled.prompt_tokens + sampled.generated_tokens)
        flops = own * per_token + (selected.flops * share if selected and selected.flops else 0.0)
    return tokens, flops
