"""The primitives' algorithms (docs/architecture.md), one generator function per IR op.

Each op receives a `NodeContext` and may `yield` asks (`Generate` for text, `Probs` for a
verifier's forward pass); the executor batches the asks of every op that is waiting at the
same moment and sends back the results. What an op returns is its node's value: a Pool (a
list of candidates), an Answer (one candidate, or None) or the question.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ttcl.backends.base import Generation, GenerationRequest, SamplingParams
from ttcl.cost.stopping import beta_tail, lead, rounds, settled
from ttcl.prompts import DEFAULT_DELIMITER, solve_messages, solve_template, split_steps
from ttcl.results import Candidate
from ttcl.runtime.answers import AnswerKind, NumberAnswer
from ttcl.runtime.verifiers import score

if TYPE_CHECKING:  # the executor imports this module: for annotations only
    from ttcl.runtime.executor import QuestionRun

MAX_CONTEXT = 4  # previous attempts in a prompt, as in the paper


@dataclass
class Generate:
    """An ask to the executor: run these requests on `model`; `generations` is what they
    count against a generations budget (the paper's unit)."""

    model: str
    requests: list[GenerationRequest]
    generations: int


@dataclass
class Partial:
    """A partial solution in a search: its steps so far and whether it has ended."""

    steps: list[str]
    finished: bool = False
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seed: int | None = None
    logprobs: list[float] | None = field(default_factory=list)  # every token's so far; None: not reported


@dataclass
class NodeContext:
    """Everything an op may read: its node, inputs, the program's declarations, the run."""

    run: QuestionRun  # question, truth, seed, candidate ids
    node: int
    op: str
    params: dict
    inputs: list
    models: dict
    verifiers: dict
    prompts: dict
    thresholds: list[float] | None = None
    answer: dict = field(default_factory=lambda: {"kind": "number"})  # the program's answer declaration
    answers: AnswerKind = field(default_factory=NumberAnswer)  # how it reads and compares answers
    made: list[Candidate] = field(default_factory=list)
    searching: list[Partial] = field(default_factory=list)  # a search's solutions so far (see `salvage`)
    cut_kept: bool = False  # whether `keep_cut` kept the continuations of a batch Ctrl-C cut

    # ---- inputs and requests ---------------------------------------------------------------

    @property
    def pool(self) -> list[Candidate]:
        """The input as a Pool (an Answer counts as the one candidate it was chosen from)."""
        value = self.inputs[0]
        if isinstance(value, list):
            return value
        return [value] if isinstance(value, Candidate) else []

    def context_attempts(self) -> list[str]:
        """Texts of the input Pool's best candidates, when a generator is fed a Pool."""
        if isinstance(self.inputs[0], str):
            return []
        ranked = sorted(self.pool, key=lambda c: -(c.score or 0.0))
        return [c.text for c in ranked[:MAX_CONTEXT]]

    @property
    def model(self) -> str:
        return self.params["model"]

    @property
    def delimiter(self) -> str:
        return self.params.get("delimiter", DEFAULT_DELIMITER)

    def sampling(self, seed: int, **overrides) -> SamplingParams:
        decl = self.models[self.model]
        values = {k: decl[k] for k in ("temperature", "top_p", "top_k", "max_tokens") if k in decl}
        values.update({k: self.params[k] for k in ("temperature", "max_tokens") if k in self.params})
        if self.wants_logprobs:
            values["logprobs"] = True
        return SamplingParams(seed=seed, **{**values, **overrides})

    @property
    def wants_logprobs(self) -> bool:
        """Whether generations report their tokens' log-probabilities: only where the program
        scores with the `confidence` verifier, which reads them (they cost a softmax a token)."""
        return any(v.get("kind") == "confidence" for v in self.verifiers.values())

    def seed(self, *keys: int) -> int:
        """A per-request seed derived from the run's seed, the node and the request's place,
        so a seeded run is reproducible however requests are batched."""
        return hash((self.run.seed, self.node) + keys) & 0x7FFFFFFF

    def request(self, attempts: list[str], seed: int, prefix: str = "", **overrides) -> GenerationRequest:
        template = solve_template(self.params, self.prompts, self.answer)
        return GenerationRequest(
            messages=solve_messages(self.run.question, attempts, template, self.answers.name),
            prefix=prefix,
            params=self.sampling(seed, **overrides),
        )

    def candidate(
        self,
        text: str,
        prompt_tokens: int,
        generated_tokens: int,
        seed: int | None,
        steps: list[str] | None = None,
        logprobs: Sequence[float] | None = None,
        cut: bool = False,
    ) -> Candidate:
        c = Candidate(
            id=self.run.next_id(),
            node=self.node,
            text=text.strip(),
            steps=steps or split_steps(text, self.delimiter),
            answer=None if cut else self.answers.extract(text),  # cut text may end mid-number
            prompt_tokens=prompt_tokens,
            generated_tokens=generated_tokens,
            seed=seed,
            mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
            cut=cut,
        )
        self.made.append(c)
        return c

    def from_generation(self, g: Generation, seed: int) -> Candidate:
        return self.candidate(g.text, g.prompt_tokens, g.generated_tokens, seed, logprobs=g.logprobs)

    def keep_cut(self, requests: list[GenerationRequest], generations: list[Generation]) -> None:
        """Keep as candidates what a batch that Ctrl-C cut short had generated: each request's
        text after its prefix (a search's steps so far), with this batch's tokens. A request
        still going, or a search step that ended at its delimiter (the solution goes on), is
        marked cut and states no answer; one that wrote nothing is left out (its tokens are
        charged all the same)."""
        self.cut_kept = True
        for r, g in zip(requests, generations):
            if g.text.strip():
                cut = g.finish in ("cut", "stop")
                self.candidate(
                    r.prefix + g.text, g.prompt_tokens, g.generated_tokens, r.params.seed, logprobs=g.logprobs, cut=cut
                )

    def salvage(self) -> None:
        """Keep as candidates, when the run stops before this search op ends (Ctrl-C, a budget,
        a time limit), the partial solutions it holds (`searching`): one that had ended whole,
        with its answer, and one still going marked cut, unless `keep_cut` already kept its
        continuation, whose text begins with it. Their tokens were charged when spent."""
        for p in self.searching:
            if p.steps and (p.finished or not self.cut_kept):
                text, tokens = self.delimiter.join(p.steps), (p.prompt_tokens, p.generated_tokens)
                self.candidate(text, *tokens, p.seed, steps=list(p.steps), logprobs=p.logprobs, cut=not p.finished)

    def score(self, candidates: list[Candidate]):
        name, truth = self.params["v"], self.run.truth
        correct = None if truth is None else (lambda answer: self.answers.same(answer, truth))
        return (yield from score(self.run.question, candidates, name, self.verifiers[name], correct))


# ---- generators ----------------------------------------------------------------------------


def op_sample(ctx: NodeContext):
    attempts = ctx.context_attempts()
    seeds = [ctx.seed(i) for i in range(ctx.params["n"])]
    results = yield Generate(ctx.model, [ctx.request(attempts, s) for s in seeds], len(seeds))
    return [ctx.from_generation(g, s) for g, s in zip(results, seeds)]


def op_adaptive(ctx: NodeContext):
    """Adaptive self-consistency: samples in rounds of `round` (the last one smaller, so it
    never draws past n) until the answers drawn so far settle the vote under `rule` (`beta`
    or `window`, see `ttcl.cost.stopping`), and gives every candidate drawn. Each round counts
    its own generations, so a run is charged what it drew; the trace says how many and why
    it stopped."""
    n, size = ctx.params["n"], ctx.params.get("round", 4)
    rule, confidence = ctx.params.get("rule", "beta"), ctx.params.get("confidence", 0.95)
    attempts = ctx.context_attempts()
    drawn: list[Candidate] = []
    keys: list[str | None] = []
    done = False
    for s in rounds(n, size):
        seeds = [ctx.seed(len(drawn) + i) for i in range(s)]  # the seeds `sample(n)` would use
        results = yield Generate(ctx.model, [ctx.request(attempts, seed) for seed in seeds], s)
        drawn += [ctx.from_generation(g, seed) for g, seed in zip(results, seeds)]
        keys = ctx.answers.classes([c.answer for c in drawn])
        done = settled(rule, keys, s, confidence)
        if done:
            break
    top, second = lead(keys)
    detail = {"rule": rule, "drawn": len(drawn), "most": n, "stopped": "settled" if done else "maximum"}
    detail.update(leader=top, runner_up=second)
    if rule == "beta":
        detail["posterior"] = float(beta_tail(top, second))  # P(the leader is the majority)
    ctx.run.event("adaptive", ctx.node, ctx.op, detail)
    return drawn


def op_revise(ctx: NodeContext):
    """A chain of k attempts, each seeing up to `context` previous ones (input Pool first)."""
    earlier = ctx.context_attempts()
    chain: list[Candidate] = []
    for step in range(ctx.params["k"]):
        shown = (
            (earlier + [c.text for c in chain])[-ctx.params.get("context", MAX_CONTEXT) :]
            if ctx.params.get("context", MAX_CONTEXT)
            else []
        )
        seed = ctx.seed(step)
        (g,) = yield Generate(ctx.model, [ctx.request(shown, seed)], 1)
        chain.append(ctx.from_generation(g, seed))
    return chain


def op_difficulty(ctx: NodeContext):
    """Probe samples, their mean verifier score, and the bin it falls in (1 = easiest)."""
    seeds = [ctx.seed(i) for i in range(ctx.params["probe"])]
    results = yield Generate(ctx.model, [ctx.request([], s) for s in seeds], len(seeds))
    probes = [ctx.from_generation(g, s) for g, s in zip(results, seeds)]
    scores = yield from ctx.score(probes)
    mean = sum(scores) / len(scores)
    # the program's own fitted thresholds win over the run's; neither: equal widths
    thresholds = ctx.params.get("thresholds") or ctx.thresholds
    ctx.run.bin = difficulty_bin(mean, ctx.params["bins"], thresholds)
    ctx.run.event("difficulty", ctx.node, "difficulty", {"mean_score": mean, "bin": ctx.run.bin})
    return probes


def difficulty_bin(mean_score: float, bins: int, thresholds: list[float] | None = None) -> int:
    """The bin of a mean verifier score: a high score is an easy question (bin 1).

    `thresholds` are bins - 1 ascending cut points fitted on a calibration set (issue 5's
    quantile bins); without them the score range [0, 1] is cut into equal widths. A threshold
    t means a score >= t is in an easier bin than t: each one the score reaches moves it one
    bin up from the hardest, so [0.3, 0.6] puts 0.6 and above in bin 1, 0.3 to 0.6 in bin 2,
    below 0.3 in bin 3.
    """
    if thresholds is None:
        thresholds = [i / bins for i in range(1, bins)]
    above = sum(mean_score >= t for t in thresholds)  # 0 (hardest) .. bins-1 (easiest)
    return bins - above


# ---- selectors -----------------------------------------------------------------------------


def by_answer(pool: list[Candidate], answers: AnswerKind) -> dict[str, list[Candidate]]:
    """The candidates that state an answer, grouped by equivalent answers (`0.5` and
    `\\frac{1}{2}` are one group under `answer math`), keyed by each group's first answer."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c, key in zip(pool, answers.classes([c.answer for c in pool])):
        if key is not None:
            groups[key].append(c)
    return groups


def op_vote(ctx: NodeContext):
    """Majority over extracted answers; ties go to the answer seen first."""
    return majority(ctx.pool, ctx.answers)
    yield


def majority(pool: list[Candidate], answers: AnswerKind | None = None) -> Candidate | None:
    """The first candidate of the largest group of equivalent answers (the first group of
    equals), or the first candidate where none states an answer."""
    groups = by_answer(pool, answers or NumberAnswer())
    if not groups:
        return pool[0] if pool else None
    winner = max(groups.values(), key=len)  # max keeps the first of equals
    return winner[0]


def op_best(ctx: NodeContext):
    pool = ctx.pool
    if not pool:
        return None
    scores = yield from ctx.score(pool)
    return highest(pool, scores)


def highest(pool: list[Candidate], scores: list[float]) -> Candidate:
    """The candidate with the highest score (the first of equals)."""
    return pool[max(range(len(pool)), key=lambda i: scores[i])]


def op_weighted_vote(ctx: NodeContext):
    """Best-of-N weighted: the answer whose candidates' scores sum highest."""
    pool = ctx.pool
    if not pool:
        return None
    scores = yield from ctx.score(pool)
    return weighted_choice(pool, scores, ctx.answers)


def weighted_choice(pool: list[Candidate], scores: list[float], answers: AnswerKind) -> Candidate:
    """The best-scored candidate of the answer whose candidates' scores sum highest (the
    highest-scored candidate where none states an answer)."""
    groups = by_answer(pool, answers)
    if not groups:
        return highest(pool, scores)
    score = {id(c): s for c, s in zip(pool, scores)}
    winner = max(groups.values(), key=lambda group: sum(score[id(c)] for c in group))
    return max(winner, key=lambda c: score[id(c)])


# ---- search against a step-level verifier ---------------------------------------------------


def _expand(ctx: NodeContext, parents: list[Partial], per_parent: int, step: int, attempts, counted: bool, **overrides):
    """Propose the next step of each parent `per_parent` times; returns the children.
    `counted` says whether these requests count as generations (the first round does)."""
    delim = ctx.delimiter
    asks, meta = [], []
    for p_i, parent in enumerate(parents):
        prefix = delim.join(parent.steps) + delim if parent.steps else ""
        for j in range(per_parent):
            seed = ctx.seed(step, p_i, j)
            asks.append(ctx.request(attempts, seed, prefix, stop=(delim,), **overrides))
            meta.append((parent, seed))
    results = yield Generate(ctx.model, asks, len(asks) if counted else 0)
    return [
        Partial(
            parent.steps + ([g.text.strip()] if g.text.strip() else []),
            finished=g.finish != "stop" or not g.text.strip(),
            prompt_tokens=parent.prompt_tokens + g.prompt_tokens,
            generated_tokens=parent.generated_tokens + g.generated_tokens,
            seed=seed,
            logprobs=None if g.logprobs is None or parent.logprobs is None else parent.logprobs + list(g.logprobs),
        )
        for (parent, seed), g in zip(meta, results)
    ]


def _as_candidates(ctx: NodeContext, partials: list[Partial]) -> list[Candidate]:
    return [
        ctx.candidate(
            ctx.delimiter.join(p.steps),
            p.prompt_tokens,
            p.generated_tokens,
            p.seed,
            steps=list(p.steps),
            logprobs=p.logprobs,
        )
        for p in partials
    ]


def _scored(ctx: NodeContext, partials: list[Partial], step: int, attempts):
    """Verifier scores of partial solutions; for lookahead, scored at the end of a greedy
    k-step rollout that is then thrown away."""
    rolled = partials
    for r in range(ctx.params.get("k", 0) if ctx.op == "lookahead" else 0):
        live = [p for p in rolled if not p.finished]
        if not live:
            break
        nxt = yield from _expand(ctx, live, 1, 1000 + step * 100 + r, attempts, step == 1, temperature=0.0)
        it = iter(nxt)
        rolled = [next(it) if not p.finished else p for p in rolled]
    views = [
        Candidate(
            id=-1,
            node=ctx.node,
            text=ctx.delimiter.join(p.steps),
            steps=list(p.steps),
            answer=ctx.answers.extract(ctx.delimiter.join(p.steps)),
        )
        for p in rolled
    ]
    return (yield from ctx.score(views))


def op_beam(ctx: NodeContext):
    """PRM beam search (Snell et al. §5.2): n first steps; keep the top n/width by step score;
    expand each kept beam with width proposals; until every beam ends or `depth` steps."""
    n, width, attempts = ctx.params["n"], ctx.params["width"], ctx.context_attempts()
    beams = yield from _expand(ctx, [Partial([])], n, 0, attempts, True)
    finished: list[Partial] = []
    for step in range(1, ctx.params["depth"]):
        finished += [b for b in beams if b.finished]
        active = [b for b in beams if not b.finished]
        room = n - len(finished)
        if not active or room <= 0:
            break
        ctx.searching = finished + active  # what a run stopped from here keeps
        scores = yield from _scored(ctx, active, step, attempts)
        keep = max(1, min(len(active), room // width))
        kept = [active[i] for i in sorted(range(len(active)), key=lambda i: -scores[i])[:keep]]
        ctx.searching = finished + kept
        beams = yield from _expand(ctx, kept, width, step, attempts, False)
    else:
        finished += [b for b in beams if b.finished]
    leftover = [b for b in beams if not b.finished]
    return _as_candidates(ctx, (finished + leftover)[:n])


op_lookahead = op_beam  # the rollout scoring in `_scored` is the difference


def op_dvts(ctx: NodeContext):
    """Diverse verifier tree search: n/width subtrees, each extended greedily: width proposals
    per step, the verifier's favourite kept."""
    n, width, attempts = ctx.params["n"], ctx.params["width"], ctx.context_attempts()
    trees = [Partial([]) for _ in range(n // width)]
    for step in range(ctx.params["depth"]):
        live = [t for t in trees if not t.finished]
        if not live:
            break
        ctx.searching = [t for t in trees if t.steps]  # what a run stopped from here keeps
        children = yield from _expand(ctx, live, width, step, attempts, step == 0)
        ctx.searching = [t for t in trees if t.finished] + children
        scores = yield from _scored(ctx, children, step, attempts)
        for i, tree in enumerate(live):
            group = range(i * width, (i + 1) * width)
            best = max(group, key=lambda j: scores[j])
            trees[trees.index(tree)] = children[best]
    return _as_candidates(ctx, trees)


# ---- structure -----------------------------------------------------------------------------


def op_union(ctx: NodeContext):
    pools = [v if isinstance(v, list) else ([v] if isinstance(v, Candidate) else []) for v in ctx.inputs]
    return [c for pool in pools for c in pool]
    yield


def op_merge(ctx: NodeContext):
    return ctx.inputs[0]  # only the chosen arm's value arrives
    yield


def op_output(ctx: NodeContext):
    return ctx.inputs[0]
    yield


OPS = {
    "sample": op_sample,
    "adaptive": op_adaptive,
    "revise": op_revise,
    "beam": op_beam,
    "lookahead": op_lookahead,
    "dvts": op_dvts,
    "vote": op_vote,
    "best": op_best,
    "weighted_vote": op_weighted_vote,
    "difficulty": op_difficulty,
    "union": op_union,
    "merge": op_merge,
    "output": op_output,
}

__all__ = ["OPS", "Generate", "NodeContext", "difficulty_bin", "majority"]
