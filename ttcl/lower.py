"""Lowering: a program's rewritten body to the IR, a `networkx.DiGraph` of primitive operations.

Nodes are integers with attributes `op`, `params`, `type` (what the node gives), `span`,
`generations` (its static count) and `origin` (the strategy calls it was expanded from).
Edges carry data; `slot` orders the inputs of a `union` or `merge`, `guard` marks the entry
into a `match` arm (the list of bins it takes) and `probe` marks the difficulty probe pool
joining an arm. Graph attributes hold the declarations the nodes refer to by name.

    question -> sample(16) -> best(prm) -> output
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import networkx as nx

from ttcl import ast
from ttcl.checker import Checked, bind_arguments
from ttcl.errors import CheckError, Diagnostic
from ttcl.formatter import format_expr
from ttcl.signatures import (
    ANSWER,
    ANSWERS,
    BUILTIN_VERIFIERS,
    DEFAULT_ANSWER,
    DEFAULT_HEAD,
    DEFAULT_HEAD_MODELS,
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    DIFFICULTY,
    MAX_BINS,
    MODELS,
    POOL,
    QUESTION,
    REQUIRED,
    STAGES,
    VERIFIERS,
    Signature,
    step_level,
)

MAX_NODES = 10_000  # a `* k` that expands past this is almost surely a typo


@dataclass
class Lowering:
    checked: Checked
    program: ast.ProgramDecl
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    errors: list[Diagnostic] = field(default_factory=list)
    origin: tuple[str, ...] = ()
    inside: list[ast.Inlined] = field(default_factory=list)  # the strategy calls being lowered
    probe: int | None = None  # a difficulty node whose probe pool awaits the arm's first selector

    def error(self, span, message: str, *notes: str) -> None:
        self.errors.append(Diagnostic(message, span, (*notes, *call_notes(self.inside, span))))

    def add(self, op: str, span, type_: str, params: dict | None = None, generations: int = 0, inputs=()) -> int:
        if len(self.graph) >= MAX_NODES:
            raise CheckError(
                f"program `{self.program.name}` expands to more than {MAX_NODES} operations", self.program.name_span
            )
        node = len(self.graph)
        self.graph.add_node(
            node, op=op, params=params or {}, type=type_, span=span, generations=generations, origin=self.origin
        )
        for slot, src in enumerate(inputs):
            self.graph.add_edge(src, node, slot=slot)
        return node

    # ---- expressions: each returns (output node, static generation count) -----------------

    def lower(self, expr: ast.Expr, src: int) -> tuple[int, int]:
        return getattr(self, f"lower_{type(expr).__name__}")(expr, src)

    def lower_Inlined(self, e: ast.Inlined, src: int):
        outer, self.origin = self.origin, self.origin + (f"{e.strategy}@{e.span.line}:{e.span.col}",)
        self.inside.append(e)
        try:
            return self.lower(e.body, src)
        finally:
            self.origin = outer
            self.inside.pop()

    def lower_Name(self, e: ast.Name, src: int):
        return self.lower_Call(ast.Call(span=e.span, func=e.id), src)

    def lower_Call(self, e: ast.Call, src: int):
        sig = STAGES[e.func]
        params = self.arguments(sig, e)
        if sig.kind == "generator" and "model" not in params:
            params["model"] = self.default_model()
        if sig.kind == "selector" and self.probe is not None:
            src = self.join_probes(src, e.span)
        gens = _safe(sig.generations, params) or 0
        return self.add(e.func, e.span, sig.returns, params, gens, inputs=(src,)), gens

    def lower_BinOp(self, e: ast.BinOp, src: int):
        if e.op == "|>":
            mid, g1 = self.lower(e.left, src)
            out, g2 = self.lower(e.right, mid)
            return out, g1 + g2
        if e.op == "+":
            outs = [self.lower(part, src) for part in _union_parts(e)]
            return self.add("union", e.span, POOL, inputs=[o for o, _ in outs]), sum(g for _, g in outs)
        stage, count = (e.left, e.right) if isinstance(e.right, ast.Int) else (e.right, e.left)
        if not isinstance(count, ast.Int) or count.value < 1:
            self.error(count.span, f"a stage is repeated a positive number of times, not {_show(count)}")
            return self.lower(stage, src)
        outs = [self.lower(stage, src) for _ in range(count.value)]
        return self.add("union", e.span, POOL, {"repeat": count.value}, inputs=[o for o, _ in outs]), sum(
            g for _, g in outs
        )

    def lower_Match(self, e: ast.Match, src: int):
        params = self.arguments(DIFFICULTY, e.head)
        params["model"] = self.default_model()  # the probe samples come from the policy
        if "thresholds" in params:  # n thresholds make n + 1 bins (the checker saw they agree)
            params["bins"] = len(params["thresholds"]) + 1
        bins = min(params.get("bins", 5), MAX_BINS)  # past MAX_BINS is an error already reported
        head = self.add("difficulty", e.head.span, QUESTION, params, params.get("probe", 0), inputs=(src,))
        outs, arm_generations = [], []
        for arm in e.arms:
            guard = _guard(arm, e, bins)
            before = set(self.graph.successors(head))
            out, generations = self.lower_arm(arm, head)
            for entry in set(self.graph.successors(head)) - before:
                self.graph.edges[head, entry]["guard"] = guard
            outs.append((out, guard))
            arm_generations.append(generations)
        merge = self.add("merge", e.span, self.graph.nodes[outs[0][0]]["type"], {"bins": bins})
        for slot, (out, guard) in enumerate(outs):
            self.graph.add_edge(out, merge, slot=slot, guard=guard)
        return merge, params.get("probe", 0) + max(arm_generations)

    def lower_arm(self, arm: ast.Arm, head: int) -> tuple[int, int]:
        """Lower one arm; the probe pool joins the arm's first selector, or its result."""
        outer, self.probe = self.probe, head
        out, generations = self.lower(arm.body, head)
        if self.probe is not None:
            out = self.join_probes(out, arm.span)
        self.probe = outer
        return out, generations

    def join_probes(self, pool: int, span) -> int:
        """A union of `pool` with the pending difficulty probes, whose edge is marked `probe`."""
        union = self.add("union", span, POOL, inputs=(pool, self.probe))
        self.graph.edges[self.probe, union]["probe"] = True
        self.probe = None
        return union

    # ---- arguments and declarations ------------------------------------------------------

    def arguments(self, sig: Signature, call: ast.Call) -> dict:
        """Bound argument values with defaults filled in and limits checked."""
        bound, _ = bind_arguments(sig, call)
        values = {}
        for p in sig.params:
            expr = bound.get(p.name)
            value = p.default if expr is None else self.value(expr, p.type)
            if value is None or value is REQUIRED:
                continue
            if isinstance(value, list):  # a list literal: each item against the limits
                self.check_items(sig, p, value, cast(ast.List, expr).items)  # a list value comes from a list literal
            else:
                self.check_limits(sig, p, value, expr.span if expr is not None else call.span)
            values[p.name] = value
        if not self.errors:
            problem = _safe(sig.rule, values)
            if problem:
                self.error(call.span, f"`{sig.name}`: {problem}")
        return values

    def check_limits(self, sig: Signature, p, value, span) -> None:
        if p.minimum is not None and value < p.minimum:
            self.error(span, f"`{sig.name}` argument `{p.name}` must be at least {_number(p.minimum)}, got {value}")
        elif p.maximum is not None and value > p.maximum:
            self.error(span, f"`{sig.name}` argument `{p.name}` must be at most {_number(p.maximum)}, got {value}")
        elif p.choices is not None and value not in p.choices:
            self.error(
                span,
                f"`{sig.name}` argument `{p.name}` must be one of {', '.join(map(repr, p.choices))}, got {value!r}",
            )
        elif p.step_level and not step_level(self.graph.graph["verifiers"][value]):
            self.error(
                span,
                f"`{sig.name}` needs a step-level verifier (a PRM), but `{value}` scores only whole answers",
                "use self_verify(...), check(...) or a prm",
            )

    def check_items(self, sig: Signature, p, values: list, items: tuple[ast.Expr, ...]) -> None:
        """A list argument's limits, item by item (the caret on the item), and its order."""
        for value, item in zip(values, items):
            self.check_limits(sig, p, value, item.span)
        if p.ascending:
            for i in range(1, len(values)):
                if values[i] <= values[i - 1]:
                    self.error(
                        items[i].span,
                        f"`{sig.name}` argument `{p.name}` must be strictly "
                        f"ascending, but {_number(values[i])} follows {_number(values[i - 1])}",
                    )
                    break

    def value(self, expr: ast.Expr, type_: str):
        """A literal's Python value, or the name of a declaration (registered in the graph)."""
        if isinstance(expr, ast.List) and type_.startswith("list["):
            items = [self.value(item, type_[5:-1]) for item in expr.items]
            return None if None in items else items
        if isinstance(expr, (ast.Int, ast.Float, ast.Str, ast.Bool)):
            return float(expr.value) if type_ == "float" else expr.value
        if isinstance(expr, ast.Neg):
            return -self.value(expr.operand, type_)
        if isinstance(expr, ast.Name) and type_ in ("model", "verifier", "prompt"):
            return getattr(self, f"declare_{type_}")(expr.id)
        self.error(expr.span, f"expected a constant {type_} here, got `{_show(expr)}`")
        return None

    def declare_model(self, name: str) -> str:
        models = self.graph.graph["models"]
        if name not in models:
            # the checker saw that a model is declared by a constructor call
            call = cast(ast.Call, cast(ast.ModelDecl, self.checked.definitions[name]).value)
            models[name] = {"kind": call.func, **self.arguments(MODELS[call.func], call)}
        return name

    def default_model(self) -> str:
        first = next((s for s in self.checked.workspace.main.statements if isinstance(s, ast.ModelDecl)), None)
        if first is not None:
            return self.declare_model(first.name)
        self.graph.graph["models"].setdefault(DEFAULT_MODEL_NAME, dict(DEFAULT_MODEL))
        return DEFAULT_MODEL_NAME

    def declare_verifier(self, name: str) -> str:
        verifiers = self.graph.graph["verifiers"]
        if name in verifiers:
            return name
        if name in BUILTIN_VERIFIERS and name not in self.checked.definitions:
            verifiers[name] = self.default_prm() if name == "prm" else dict(BUILTIN_VERIFIERS[name])
            return name
        value = cast(ast.VerifierDecl, self.checked.definitions[name]).value
        if isinstance(value, ast.Name):  # an alias: `verifier v = prm`
            verifiers[name] = verifiers[self.declare_verifier(value.id)]
        else:
            value = cast(ast.Call, value)  # the checker saw a verifier constructor call
            verifiers[name] = {"kind": value.func, **self.arguments(VERIFIERS[value.func], value)}
            if value.func == "prm" and "m" not in verifiers[name]:
                verifiers[name]["m"] = self.default_model()
            if value.func == "prm" and self.graph.graph["models"][verifiers[name]["m"]]["kind"] == "openai":
                self.error(
                    value.span,
                    f"verifier `{name}` reads hidden states, which a served openai(...) "
                    f"model `{verifiers[name]['m']}` cannot give",
                    'give the head a local model: prm("head.safetensors", m=local) with '
                    "`model local = llama(...)`, or use self_verify(...) or check(...)",
                )
        return name

    def default_prm(self) -> dict:
        """The undeclared `prm`: the shipped head where the policy is the SmolLM2 it was
        trained on, else the policy's own self-verification."""
        model = self.default_model()
        decl = self.graph.graph["models"][model]
        trained_on = os.path.basename(str(decl.get("path", ""))) in DEFAULT_HEAD_MODELS
        if decl.get("kind") in ("llama", "torch") and trained_on:
            return {"kind": "prm", "path": DEFAULT_HEAD, "m": model, "agg": "last"}
        return {"kind": "self_verify", "m": model, "agg": "last"}

    def declare_answer(self) -> dict:
        """The file's `answer` declaration as IR values, or the default (`number`)."""
        decl = self.checked.answer
        if decl is None:
            return dict(DEFAULT_ANSWER)
        value = decl.value
        call = ast.Call(span=value.span, func=value.id) if isinstance(value, ast.Name) else cast(ast.Call, value)
        return {"kind": call.func, **self.arguments(ANSWERS[call.func], call)}

    def declare_prompt(self, name: str) -> str:
        self.graph.graph["prompts"][name] = cast(ast.PromptDecl, self.checked.definitions[name]).template
        return name


def call_notes(inside: Sequence[ast.Inlined], span) -> list[str]:
    """For an error inside an expanded strategy from another file (the stdlib, an import):
    where it was called from, innermost call first, as "in strategy X called at FILE:L:C"."""
    if not inside or span is None or span.path == inside[0].span.path:
        return []
    return [f"in strategy `{e.strategy}` called at {e.span}" for e in reversed(inside)]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _safe(fn, values: dict):
    """`fn(values)`, or None where an argument it needs was missing or already reported."""
    try:
        return fn(values)
    except (KeyError, ZeroDivisionError, TypeError):
        return None


def _union_parts(e: ast.Expr) -> list[ast.Expr]:
    """`a + b + c` as [a, b, c]: one union node, not a chain of them."""
    if isinstance(e, ast.BinOp) and e.op == "+":
        return _union_parts(e.left) + _union_parts(e.right)
    return [e]


def _guard(arm: ast.Arm, match: ast.Match, bins: int) -> list[int]:
    """The bins an arm takes; `_` takes every bin that no earlier range names."""

    def bins_of(pattern: ast.Range) -> list[int]:
        return list(range(pattern.lo, pattern.hi + 1))

    if isinstance(arm.pattern, ast.Range):
        return bins_of(arm.pattern)
    taken = {b for a in match.arms if isinstance(a.pattern, ast.Range) for b in bins_of(a.pattern)}
    return [b for b in range(1, bins + 1) if b not in taken]


def _show(expr: ast.Expr) -> str:
    return format_expr(expr)


def lower(body: ast.Expr, program: ast.ProgramDecl, checked: Checked, budgets: dict[str, float]) -> nx.DiGraph:
    """Lower a rewritten program body to its IR graph; raise `CheckError` on value errors
    (non-positive counts, a beam without a PRM, more generations than the budget allows; token
    and FLOPs budgets are checked against the estimate afterwards, by `program.check_budget`)."""
    lowering = Lowering(checked, program)
    g = lowering.graph
    g.graph.update(program=program.name, models={}, verifiers={}, prompts={})
    question = lowering.add("question", program.name_span, QUESTION)
    g.graph["answer"] = lowering.declare_answer()
    out, generations = lowering.lower(body, question)
    lowering.add("output", program.span, ANSWER, inputs=(out,))
    g.graph["generations"] = generations
    g.graph["budgets"] = budgets
    limit = budgets.get("generations")
    if limit is not None and generations > limit:
        costly = sorted((n for n in g if g.nodes[n]["generations"]), key=lambda n: -g.nodes[n]["generations"])[:3]
        names = ", ".join(
            f"{g.nodes[n]['op']} at {g.nodes[n]['span'].line}:{g.nodes[n]['span'].col} ({g.nodes[n]['generations']})"
            for n in costly
        )
        lowering.error(
            program.name_span,
            f"program `{program.name}` needs {generations} generations but its budget is {limit:g}",
            f"costliest: {names}",
        )
    if lowering.errors:
        raise CheckError(lowering.errors)
    return g
