"""Rewrite passes over a checked program body, run in order before lowering.

Each pass is a pure function `(expr, context) -> expr` (sqlglot's optimizer RULES): it builds
a new tree and never mutates its input. After `PASSES` the body holds only primitive calls
with literal arguments, names of declarations, and the combinators `|>`, `+`, `* k`, `match`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ttcl import ast
from ttcl.checker import bind_arguments, strategy_calls, strategy_order, strategy_signature
from ttcl.errors import CheckError
from ttcl.lower import MAX_NODES, call_notes
from ttcl.parser import MAX_INT
from ttcl.signatures import STAGES

MAX_EXPANDED_NODES = 25 * MAX_NODES  # syntax nodes of a body once expanded: operations and their arguments
MAX_EXPANDED_DEPTH = 250  # levels of a body once expanded; the recursive passes and lowering stay in the stack


@dataclass(frozen=True)
class PassContext:
    """What passes may read: the definitions in scope and the program's parameter values."""

    definitions: Mapping[str, ast.Definition]
    bindings: Mapping[str, ast.Expr] = field(default_factory=dict)


def substitute(expr: ast.Expr, mapping: Mapping[str, ast.Expr]) -> ast.Expr:
    """Replace each `Name` in `mapping` by its expression, once (inserted trees are not
    searched again, so a caller's `n` never captures a callee's `n`)."""

    def visit(node):
        if isinstance(node, ast.Name) and node.id in mapping:
            return mapping[node.id]
        return ast.map_children(node, visit)

    return visit(expr)


def bind_parameters(expr: ast.Expr, ctx: PassContext) -> ast.Expr:
    """Put the program's parameter values in place of their names.

    `program main(n: int = 16) = sample(n) |> vote` becomes `sample(16) |> vote`. Each value
    takes the span of the name it replaces, so an error about it points at the use.
    """

    def visit(node):
        if isinstance(node, ast.Name) and node.id in ctx.bindings:
            return ctx.bindings[node.id].model_copy(update={"span": node.span})
        return ast.map_children(node, visit)

    return visit(expr)


def inline_strategies(expr: ast.Expr, ctx: PassContext) -> ast.Expr:
    """Expand every strategy call into its body with the arguments substituted.

    With `strategy bon(n: int, v: verifier) = sample(n) |> best(v)`, the call `bon(8, prm)`
    becomes `Inlined(bon, sample(8) |> best(prm))`. The checker has ruled out recursion.

    The expansion is measured first (`check_expansion`), so a program that would grow past
    the limits is refused in time linear in its text, before anything is copied.
    """
    check_expansion(expr, ctx)

    def visit(node):
        name = node.func if isinstance(node, ast.Call) else getattr(node, "id", None)
        decl = ctx.definitions.get(name) if isinstance(node, (ast.Call, ast.Name)) else None
        if not isinstance(decl, ast.StrategyDecl):
            return ast.map_children(node, visit)
        call = node if isinstance(node, ast.Call) else ast.Call(span=node.span, func=name)
        bound, _ = bind_arguments(strategy_signature(decl), call)
        mapping = {p.name: visit(bound[p.name]) if p.name in bound else p.default for p in decl.params or ()}
        return ast.Inlined(span=node.span, strategy=name, body=visit(substitute(decl.body, mapping)))

    return visit(expr)


@dataclass
class Growth:
    """What a tree becomes once every strategy call in it is expanded, as a function of the
    arguments its parameters get (each use of a parameter is a copy of the argument):
    `nodes + sum(copies[p] * nodes(arg p))` syntax nodes, of which `ops + sum(copies[p] *
    ops(arg p))` are stage calls (each at least one IR operation), and `max(depth, offset[p] +
    depth(arg p))` levels deep."""

    nodes: int = 0
    ops: int = 0
    depth: int = 0
    copies: dict[str, int] = field(default_factory=dict)
    offset: dict[str, int] = field(default_factory=dict)

    def add(self, other: Growth, times: int = 1, below: int = 0) -> None:
        """Take in `times` copies of `other`, placed `below` levels under this tree's root."""
        self.nodes += times * other.nodes
        self.ops += times * other.ops
        self.depth = max(self.depth, below + other.depth)
        for p, n in other.copies.items():
            self.copies[p] = self.copies.get(p, 0) + times * n
            self.offset[p] = max(self.offset.get(p, 0), below + other.offset[p])


def check_expansion(expr: ast.Expr, ctx: PassContext) -> None:
    """Refuse a body that inlining would grow past MAX_NODES operations, MAX_EXPANDED_NODES
    syntax nodes or MAX_EXPANDED_DEPTH levels, with an error on the call that does it.

    Each strategy's growth is computed once, from those of the strategies it calls (taken in
    dependency order), so `s40 = s39 + s39` is measured in 40 steps, not 2**40.
    """
    definitions = ctx.definitions
    grown: dict[str, Growth] = {}

    def grow(node: ast.Node, params: frozenset[str]) -> Growth:
        if isinstance(node, ast.Name) and node.id in params:
            return Growth(copies={node.id: 1}, offset={node.id: 0})
        name = node.func if isinstance(node, ast.Call) else node.id if isinstance(node, ast.Name) else None
        decl = definitions.get(name) if name is not None else None
        if isinstance(decl, ast.StrategyDecl):
            callee = grown.get(decl.name, Growth())  # absent only in a cycle, which the checker refuses
            call = node if isinstance(node, ast.Call) else ast.Call(span=node.span, func=decl.name)
            bound, _ = bind_arguments(strategy_signature(decl), call)
            g = Growth(1 + callee.nodes, callee.ops, 1 + callee.depth)
            for p in decl.params or ():
                arg = bound.get(p.name, p.default)
                if arg is not None and callee.copies.get(p.name):
                    g.add(grow(arg, params), callee.copies[p.name], 1 + callee.offset[p.name])
            return g
        g = Growth(1, int(name in STAGES and name not in definitions) + 2 * isinstance(node, ast.Match), 1)
        for child in _children(node):
            g.add(grow(child, params), below=1)
        return g

    for name in strategy_order(definitions, strategy_calls(expr, definitions)):
        decl = definitions[name]
        assert isinstance(decl, ast.StrategyDecl)  # strategy_order gives strategies only
        grown[name] = grow(decl.body, frozenset(p.name for p in decl.params or ()))
    total = grow(expr, frozenset())
    doubles = (
        "each call of a strategy becomes a copy of its body, so a strategy that calls another "
        "twice doubles with every level"
    )
    limits = (
        ("ops", MAX_NODES, "operations", "a program may have at most {limit}", doubles),
        (
            "nodes",
            MAX_EXPANDED_NODES,
            "syntax nodes (a parameter's argument is copied to each use)",
            "at most {limit}",
            doubles,
        ),
        (
            "depth",
            MAX_EXPANDED_DEPTH,
            "levels of nesting",
            "at most {limit}",
            "a strategy's body is nested inside its call, so a chain of strategies calling each other nests deeper",
        ),
    )
    for measure, limit, what, rule, why in limits:
        if getattr(total, measure) <= limit:
            continue
        culprit, size = expr, getattr(total, measure)
        for call in _strategy_calls_in(expr, definitions):  # the first call that alone is too big
            own = getattr(grow(call, frozenset()), measure)
            if own > limit:
                culprit, size = call, own
                break
        shown = f"`{culprit.func}(...)`" if isinstance(culprit, ast.Call) else f"`{getattr(culprit, 'id', 'this')}`"
        raise CheckError(
            f"{shown if culprit is not expr else 'this program'} expands to {_count(size)} {what} "
            f"once its strategies are inlined; {rule.format(limit=limit)}",
            culprit.span,
            (why,),
        )


def _children(node: ast.Node):
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, ast.Node):
            yield value
        elif isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, ast.Node))


def _strategy_calls_in(expr: ast.Expr, definitions: Mapping[str, ast.Definition]):
    """The strategy calls in a tree (not inside their arguments), in source order."""
    todo: list[ast.Node] = [expr]
    while todo:
        node = todo.pop()
        name = node.func if isinstance(node, ast.Call) else node.id if isinstance(node, ast.Name) else None
        if name is not None and isinstance(definitions.get(name), ast.StrategyDecl):
            yield node
            continue
        todo.extend(reversed(list(_children(node))))


def _count(n: int) -> str:
    """A count as a message shows it: exact while short, else a power of two."""
    return str(n) if n < 10**15 else f"about 2^{n.bit_length() - 1}"


def fold_constants(expr: ast.Expr, ctx: PassContext) -> ast.Expr:
    """Evaluate integer and float arithmetic: `revise(4) * (16 / 4)` becomes `revise(4) * 4`.

    `/` between integers is floor division, as counts must stay whole. A result must stay in
    range as literals do (integers within 64 bits, floats finite), so arithmetic can never
    build a number too big to compute with or to print.
    """
    inside: list[ast.Inlined] = []  # the strategy calls the visited node was expanded from

    def visit(node):
        if isinstance(node, ast.Inlined):
            inside.append(node)
            try:
                return ast.map_children(node, visit)
            finally:
                inside.pop()
        node = ast.map_children(node, visit)
        if isinstance(node, ast.Neg) and isinstance(node.operand, (ast.Int, ast.Float)):
            return type(node.operand)(span=node.span, value=-node.operand.value)
        if isinstance(node, ast.BinOp) and node.op != "|>":
            left, right = node.left, node.right
            if isinstance(left, (ast.Int, ast.Float)) and isinstance(right, (ast.Int, ast.Float)):
                return _literal(_arith(node, left.value, right.value, inside), node.span)
        return node

    return visit(expr)


def _arith(node: ast.BinOp, a, b, inside: Sequence[ast.Inlined] = ()):
    def refuse(message: str, span) -> CheckError:
        return CheckError(message, span, tuple(call_notes(inside, span)))

    if node.op in "/%" and b == 0:
        raise refuse(f"division by zero in `{node.op}`", node.right.span)
    both_int = isinstance(a, int) and isinstance(b, int)
    ops = {
        "+": lambda: a + b,
        "-": lambda: a - b,
        "*": lambda: a * b,
        "%": lambda: a % b,
        "/": lambda: a // b if both_int else a / b,
    }
    value = ops[node.op]()
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise refuse(f"`{node.op}` gives an integer out of range; integers are at most {MAX_INT} (2^63 - 1)", node.span)
    if isinstance(value, float) and not math.isfinite(value):
        raise refuse(f"`{node.op}` gives a number too large to represent", node.span)
    return value


def _literal(value, span) -> ast.Expr:
    return ast.Int(span=span, value=value) if isinstance(value, int) else ast.Float(span=span, value=value)


def fuse_repeated_samples(expr: ast.Expr, ctx: PassContext) -> ast.Expr:
    """`sample(n) * k` is the same distribution as `sample(n * k)`, which batches as one call.

    `sample(4, temperature=1.0) * 4` becomes `sample(16, temperature=1.0)`.
    """

    def visit(node):
        node = ast.map_children(node, visit)
        if isinstance(node, ast.BinOp) and node.op == "*":
            for call, count in ((node.left, node.right), (node.right, node.left)):
                if (
                    isinstance(call, ast.Call)
                    and call.func == "sample"
                    and isinstance(count, ast.Int)
                    and len(call.args) == 1
                    and isinstance(call.args[0], ast.Int)
                ):
                    n = ast.Int(span=node.span, value=call.args[0].value * count.value)
                    return call.model_copy(update={"args": (n,), "span": node.span})
        return node

    return visit(expr)


PASSES: tuple[Callable[[ast.Expr, PassContext], ast.Expr], ...] = (
    bind_parameters,
    inline_strategies,
    fold_constants,
    fuse_repeated_samples,
)


def run_passes(expr: ast.Expr, ctx: PassContext) -> ast.Expr:
    """Apply every pass of `PASSES` in order."""
    for rewrite in PASSES:
        expr = rewrite(expr, ctx)
    return expr
