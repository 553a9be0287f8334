"""Rewrite passes over a checked program body, run in order before lowering.

Each pass is a pure function `(expr, context) -> expr` (sqlglot's optimizer RULES): it builds
a new tree and never mutates its input. After `PASSES` the body holds only primitive calls
with literal arguments, names of declarations, and the combinators `|>`, `+`, `* k`, `match`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ttcl import ast
from ttcl.checker import bind_arguments, strategy_signature
from ttcl.errors import CheckError


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
    """

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


def fold_constants(expr: ast.Expr, ctx: PassContext) -> ast.Expr:
    """Evaluate integer and float arithmetic: `revise(4) * (16 / 4)` becomes `revise(4) * 4`.

    `/` between integers is floor division, as counts must stay whole.
    """

    def visit(node):
        node = ast.map_children(node, visit)
        if isinstance(node, ast.Neg) and isinstance(node.operand, (ast.Int, ast.Float)):
            return type(node.operand)(span=node.span, value=-node.operand.value)
        if isinstance(node, ast.BinOp) and node.op != "|>":
            left, right = node.left, node.right
            if isinstance(left, (ast.Int, ast.Float)) and isinstance(right, (ast.Int, ast.Float)):
                return _literal(_arith(node, left.value, right.value), node.span)
        return node

    return visit(expr)


def _arith(node: ast.BinOp, a, b):
    if node.op in "/%" and b == 0:
        raise CheckError(f"division by zero in `{node.op}`", node.right.span)
    both_int = isinstance(a, int) and isinstance(b, int)
    ops = {
        "+": lambda: a + b,
        "-": lambda: a - b,
        "*": lambda: a * b,
        "%": lambda: a % b,
        "/": lambda: a // b if both_int else a / b,
    }
    return ops[node.op]()


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
