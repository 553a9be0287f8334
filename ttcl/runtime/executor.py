"""The executor: walks the IR for one or many questions and batches what is ready.

Every node runs as a generator (see `ops.py`). The scheduler advances all of them until each
is waiting on an ask, groups the asks by model and kind, and sends each group to its backend
as one batch: the samples of one node, the beams of a search, parallel branches and the
questions of a `run_many` all share a batch. Budgets and time limits are checked before a
batch goes out; a run that would overrun stops there with the best answer found so far, and
so does every run on Ctrl-C, keeping as candidates what the batch in flight had generated.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import networkx as nx

from ttcl.backends.base import (
    NOT_STARTED,
    Backend,
    BackendError,
    Cut,
    Generation,
    as_backend,
    placed,
    split_in_proportion,
)
from ttcl.cost.flops import counted_flops
from ttcl.results import Candidate, Cost, NodeCost, Result, TraceEvent
from ttcl.runtime.answers import answer_kind
from ttcl.runtime.ops import OPS, Generate, NodeContext, majority
from ttcl.runtime.verifiers import Hidden, Probs
from ttcl.signatures import DEFAULT_ANSWER

EventKind = Literal["node", "batch", "score", "difficulty", "stop", "adaptive"]  # a trace event's kind
StopReason = Literal["budget", "time", "interrupted"]  # why a run ended early
Value = Any  # a question (str), a Pool (list of candidates) or an Answer (a candidate or None)


@dataclass
class Limits:
    """What one question may spend: the program's budgets and a wall-clock limit."""

    generations: float | None = None
    tokens: float | None = None
    flops: float | None = None
    seconds: float | None = None


@dataclass
class Task:
    run: QuestionRun
    node: int
    ctx: NodeContext
    coro: Any
    ask: Generate | Probs | Hidden | None = None

    @property
    def pending(self) -> Generate | Probs | Hidden:
        """The ask the task waits on (read only while it waits on one)."""
        assert self.ask is not None
        return self.ask


@dataclass
class QuestionRun:
    """The state of one question going through the graph."""

    question: str
    truth: str | None
    seed: int
    limits: Limits
    values: dict[int, Value] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    candidates: list[Candidate] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    trace: list[TraceEvent] = field(default_factory=list)
    bin: int | None = None
    stopped: StopReason | None = None
    started: float = field(default_factory=time.perf_counter)
    _ids: int = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids - 1

    def event(self, kind: str, node: int | None, op: str | None, detail: dict) -> None:
        self.trace.append(TraceEvent(event=cast(EventKind, kind), node=node, op=op, detail=detail))

    @property
    def done(self) -> bool:
        return self.stopped is not None


class Executor:
    """Runs one program's graph over questions with a backend per model name (a `Backend`,
    or an object `as_backend` makes one of)."""

    def __init__(
        self,
        graph: nx.DiGraph,
        backends: Callable[[str], Any],
        thresholds: list[float] | None = None,
        on_result: Callable[[int, Result], None] | None = None,
    ):
        self.graph = graph
        self.backends: Callable[[str], Backend] = lambda name: as_backend(backends(name))
        self.thresholds = thresholds
        self.on_result = on_result
        self.tasks: list[Task] = []
        self.order = list(nx.lexicographical_topological_sort(graph))
        self.answers = answer_kind(graph.graph.get("answer"))  # votes and the oracle read answers so

    # ---- driving ---------------------------------------------------------------------------

    def run(self, questions: list[tuple[str, str | None]], seed: int, limits: Limits) -> list[Result]:
        """Run every question; results in order, each reported to `on_result` as it finishes."""
        runs = [QuestionRun(q, truth, seed, limits) for q, truth in questions]
        finished: set[int] = set()
        for run in runs:
            self.finish(run, self.order[0], run.question)
        try:
            while True:
                self.advance()
                self.report(runs, finished)
                if not self.tasks:
                    break
                self.dispatch()
        except KeyboardInterrupt:
            for run in runs:
                if not self.complete(run):
                    self.stop(run, "interrupted")
        self.report(runs, finished)
        return [self.result(r) for r in runs]

    def advance(self) -> None:
        """Step every task that is not waiting, until all wait on an ask or are done."""
        progress = True
        while progress:
            progress = False
            for task in list(self.tasks):
                if task.ask is None and not task.run.done:
                    self.step(task, None)
                    progress = True

    def step(self, task: Task, reply) -> None:
        try:
            task.ask = task.coro.send(reply)
        except StopIteration as done:
            self.tasks.remove(task)
            task.run.candidates.extend(task.ctx.made)
            self.finish(task.run, task.node, done.value)

    def report(self, runs: list[QuestionRun], finished: set[int]) -> None:
        for i, run in enumerate(runs):
            if i not in finished and (self.complete(run) or run.done):
                finished.add(i)
                if self.on_result:
                    self.on_result(i, self.result(run))

    def complete(self, run: QuestionRun) -> bool:
        return self.order[-1] in run.values

    # ---- the graph walk --------------------------------------------------------------------

    def finish(self, run: QuestionRun, node: int, value: Value) -> None:
        """Record a node's value and start every successor whose inputs are now known."""
        attrs = self.graph.nodes[node]
        run.values[node] = value
        run.event("node", node, attrs["op"], _summary(value))
        for succ in self.graph.successors(node):
            self.consider(run, succ)

    def consider(self, run: QuestionRun, node: int) -> None:
        preds = list(self.graph.predecessors(node))
        if any(p not in run.values and p not in run.dead for p in preds) or node in run.values:
            return
        live = [p for p in preds if p not in run.dead and self.passes_guard(run, p, node)]
        op = self.graph.nodes[node]["op"]
        if (op == "merge" and not live) or (op != "merge" and len(live) < len(preds)):
            run.dead.add(node)
            for succ in self.graph.successors(node):
                self.consider(run, succ)
            return
        inputs = [self.input_of(run, p, node) for p in sorted(live, key=lambda p: self.graph.edges[p, node]["slot"])]
        ctx = NodeContext(
            run=run,
            node=node,
            op=op,
            params=dict(self.graph.nodes[node]["params"]),
            inputs=inputs,
            models=self.graph.graph["models"],
            verifiers=self.graph.graph["verifiers"],
            prompts=self.graph.graph["prompts"],
            thresholds=self.thresholds,
            answer=self.graph.graph.get("answer", DEFAULT_ANSWER),
            answers=self.answers,
        )
        self.tasks.append(Task(run, node, ctx, OPS[op](ctx)))

    def passes_guard(self, run: QuestionRun, pred: int, node: int) -> bool:
        guard = self.graph.edges[pred, node].get("guard")
        return guard is None or run.bin in guard

    def input_of(self, run: QuestionRun, pred: int, node: int) -> Value:
        value = run.values[pred]
        if self.graph.nodes[pred]["op"] == "difficulty" and not self.graph.edges[pred, node].get("probe"):
            return run.question  # arms take the question; the probe pool joins by its own edge
        return value

    # ---- batching --------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Send every waiting ask, grouped by (kind, model, options), one batch per group."""
        groups: dict[tuple, list[Task]] = defaultdict(list)
        for task in self.tasks:
            if task.ask is not None and not task.run.done and self.affordable(task):
                key = (type(task.ask).__name__, task.ask.model, tuple(getattr(task.ask, "options", ())))
                groups[key].append(task)
        self.tasks = [t for t in self.tasks if not t.run.done]
        for (kind, model, options), tasks in groups.items():
            tasks = [t for t in tasks if not t.run.done]
            if not tasks:
                continue
            try:
                replies, spent = self.call(tasks, kind, model, list(options))
            except BackendError as e:
                node = self.graph.nodes[tasks[0].node]
                raise placed(e, f"model `{model}`: {e.message} (running `{node['op']}` at {node['span']})") from None
            for task, mine in zip(tasks, self.charge(tasks, replies, kind, model, spent)):
                task.ask = None
                self.step(task, mine)

    def call(
        self, tasks: list[Task], kind: str, model: str, options: list[str]
    ) -> tuple[list, tuple[int, float | None]]:
        """One batch on the backend: its replies, and what it spent (from the counters). On
        Ctrl-C, what the batch did is not lost: its cost is charged and the text it had
        generated becomes each task's candidates, marked cut; then the interrupt goes on."""
        backend = self.backends(model)
        before = backend.counters.model_copy()
        requests = [r for t in tasks for r in t.pending.requests]
        try:
            return _ASKS[kind](backend, requests, options), _spent(backend, before)
        except KeyboardInterrupt as stop:
            generations = stop.generations if isinstance(stop, Cut) else []
            if len(generations) != len(requests):  # a backend that kept no text: its counters say what it did
                generations = _untold(len(requests), backend.counters, before)
            for task, mine in zip(tasks, self.charge(tasks, generations, kind, model, _spent(backend, before))):
                if kind == "Generate":
                    task.ctx.keep_cut(task.pending.requests, mine)
            raise

    def charge(
        self, tasks: list[Task], replies: list, kind: str, model: str, spent: tuple[int, float | None]
    ) -> list[list]:
        """Each task's replies (in request order), after charging it its share of the batch's
        cost: a verifier pass reports no per-request tokens, so its tokens are shared by
        requests; FLOPs are shared in proportion to tokens."""
        parts, at = [], 0
        for task in tasks:  # each task's replies, in request order
            parts.append(replies[at : at + len(task.pending.requests)])
            at += len(task.pending.requests)
        prompt_tokens, flops = spent
        if kind != "Generate":  # a verifier pass
            tokens = split_in_proportion(prompt_tokens, [len(mine) for mine in parts])
        else:
            tokens = [sum(g.prompt_tokens + g.generated_tokens for g in mine) for mine in parts]
        whole = sum(tokens) or 1
        for task, mine, share in zip(tasks, parts, tokens):
            self.account(task, mine, kind, share, None if flops is None else flops * share / whole)
            task.run.event(
                "batch",
                task.node,
                self.graph.nodes[task.node]["op"],
                {"kind": kind, "model": model, "requests": len(mine), "batch_size": len(replies)},
            )
        return parts

    def account(self, task: Task, replies: list, kind: str, share: int, flops: float | None) -> None:
        run, node = task.run, task.node
        cost = run.cost.per_node.setdefault(node, NodeCost(op=self.graph.nodes[node]["op"]))
        for target in (cost, run.cost):
            target.flops = _add_flops(target.flops, target.tokens, flops)
        if kind != "Generate":  # a verifier pass
            tokens = share
            cost.verifier_prompt_tokens += tokens
            run.cost.verifier_prompt_tokens += tokens
            return
        prompt = sum(g.prompt_tokens for g in replies)
        generated = sum(g.generated_tokens for g in replies)
        for target in (cost, run.cost):
            target.generations += cast(Generate, task.ask).generations
            target.prompt_tokens += prompt
            target.generated_tokens += generated

    def affordable(self, task: Task) -> bool:
        """Whether the task's next batch fits its question's budgets and time; stop it if not."""
        run, limits = task.run, task.run.limits
        if limits.seconds is not None and time.perf_counter() - run.started > limits.seconds:
            self.stop(run, "time")
            return False
        pending = [t.ask for t in self.tasks if t.run is run and t.ask is not None]
        generations = run.cost.generations + sum(a.generations for a in pending if isinstance(a, Generate))
        next_tokens = sum(_max_tokens(a) for a in pending)
        if (
            (limits.generations is not None and generations > limits.generations)
            or (limits.tokens is not None and run.cost.tokens + next_tokens > limits.tokens)
            or (limits.flops is not None and self.flops(run.cost.flops, next_tokens, task) > limits.flops)
        ):
            self.stop(run, "budget")
            return False
        return True

    def flops(self, spent: float | None, next_tokens: int, task: Task) -> float:
        """FLOPs measured so far plus 2·N per token the next batch may use at most."""
        n_params = self.backends(task.pending.model).n_params
        if n_params is None or (spent is None and task.run.cost.tokens):
            # refuse rather than silently never enforce the budget
            raise BackendError(
                f"model `{task.pending.model}`: cannot enforce a flops budget, the backend "
                "reports no parameter count; use a generations or tokens budget"
            )
        return (spent or 0.0) + 2.0 * n_params * next_tokens

    def stop(self, run: QuestionRun, why: StopReason) -> None:
        """End a run early, keeping every candidate its unfinished nodes had made."""
        for task in self.tasks:
            if task.run is run:
                task.ctx.salvage()  # a search's solutions so far
                run.candidates.extend(task.ctx.made)
        run.candidates.sort(key=lambda c: c.id)
        run.stopped = why
        run.event("stop", None, None, {"reason": why})
        self.tasks = [t for t in self.tasks if t.run is not run]

    # ---- results ---------------------------------------------------------------------------

    def result(self, run: QuestionRun) -> Result:
        chosen = run.values.get(self.order[-1]) if self.complete(run) else self.best_so_far(run)
        return Result(
            question=run.question,
            answer=chosen.answer if chosen else None,
            text=chosen.text if chosen else None,
            candidates=run.candidates,
            cost=run.cost,
            stopped=None if self.complete(run) else run.stopped,
            bin=run.bin,
            seed=run.seed,
            elapsed_s=time.perf_counter() - run.started,
            trace=run.trace,
        )

    def best_so_far(self, run: QuestionRun) -> Candidate | None:
        """A run stopped early answers with the best it has: the last selector's choice, else a
        majority vote over every candidate made so far."""
        for node in reversed(self.order):
            value = run.values.get(node)
            if isinstance(value, Candidate):
                return value
        return majority(run.candidates, self.answers)


# what each kind of ask calls on the backend
_ASKS = {
    "Generate": lambda backend, requests, options: backend.generate(requests),
    "Probs": lambda backend, requests, options: backend.next_token_probs(requests, options),
    "Hidden": lambda backend, requests, options: backend.hidden_states(requests),
}


def _spent(backend: Backend, before) -> tuple[int, float | None]:
    """A batch's prompt tokens and FLOPs, from the backend's counters: counted exactly
    (`counted_flops`) where the backend counts positions and knows its model's facts, else
    2·N per token where it knows N, else unknown."""
    after = backend.counters
    prompt = after.prompt_tokens - before.prompt_tokens
    facts = backend.facts
    if facts is not None and after.forward_tokens > before.forward_tokens:
        return prompt, counted_flops(
            facts,
            after.forward_tokens - before.forward_tokens,
            after.attended - before.attended,
            after.logits - before.logits,
        )
    n_params = backend.n_params
    tokens = prompt + after.generated_tokens - before.generated_tokens
    return prompt, None if n_params is None else 2.0 * n_params * tokens


def _untold(requests: int, after, before) -> list[Generation]:
    """A generation batch cut short by a backend that kept no text: the tokens its counters
    say it processed, charged to the first request, and nothing else."""
    spent = Generation(
        text="",
        prompt_tokens=after.prompt_tokens - before.prompt_tokens,
        generated_tokens=after.generated_tokens - before.generated_tokens,
        finish="cut",
    )
    return [spent, *[NOT_STARTED] * (requests - 1)][:requests]


def _add_flops(total: float | None, tokens_so_far: int, flops: float | None) -> float | None:
    """A running FLOPs total: unknown (None) once any batch's FLOPs were unknown."""
    if flops is None or (total is None and tokens_so_far):
        return None
    return (total or 0.0) + flops


def _summary(value: Value) -> dict:
    if isinstance(value, list):
        return {"candidates": [c.id for c in value]}
    if isinstance(value, Candidate):
        return {"chosen": value.id, "answer": value.answer}
    return {}


def _max_tokens(ask) -> int:
    """An upper bound on the tokens an ask can use: its prompts' words plus max_tokens."""
    prompts = sum(sum(len(m.content.split()) for m in r.messages) + len(r.prefix.split()) for r in ask.requests)
    if isinstance(ask, Generate):
        return prompts + sum(r.params.max_tokens for r in ask.requests)
    return prompts
