"""The abstract syntax tree: frozen pydantic nodes, each with the span it was parsed from.

Expressions are one small algebra: literals (numbers, strings, booleans, lists), names,
calls, binary operators and `match`.
Whether `a + b` adds two integers or unions two stages, and whether `a * k` multiplies or
replicates, is decided by the checker from the operands' types, not by the grammar.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ttcl.source import Span


class Node(BaseModel):
    """Base of every AST node: immutable, no unknown fields, and a source span."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    span: Span


# ---- expressions -------------------------------------------------------------------------


class Int(Node):
    value: int


class Float(Node):
    value: float


class Str(Node):
    value: str


class Bool(Node):
    value: bool


class Name(Node):
    """A reference: a parameter, a declaration, or a stage called without arguments (`vote`)."""

    id: str


class List(Node):
    """A list literal `[e, e, ...]`; the checker allows only numbers in it (`thresholds=`)."""

    items: tuple[Expr, ...] = ()


class Keyword(Node):
    """A keyword argument `name=value`."""

    name: str
    value: Expr


class Call(Node):
    """`func(args..., name=value...)`: a primitive, a strategy, or a model/verifier constructor."""

    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()


class BinOp(Node):
    """`left op right` with op one of `|>`, `+`, `-`, `*`, `/`, `%`."""

    op: str
    left: Expr
    right: Expr


class Neg(Node):
    operand: Expr


class Range(Node):
    """A match pattern over difficulty bins: `lo..hi`, or a single bin `lo` (then hi == lo)."""

    lo: int
    hi: int


class Wildcard(Node):
    """The match pattern `_`: every bin that no earlier arm covers."""


class Arm(Node):
    pattern: Range | Wildcard
    body: Expr


class Match(Node):
    """`match difficulty(v, probe=4, bins=5) { 1..2 => ..., _ => ... }`."""

    head: Call
    arms: tuple[Arm, ...]


class Inlined(Node):
    """A strategy call after expansion (made by the inlining pass, never by the parser): the
    span is the call site's, so errors and IR nodes can say which call they came from."""

    strategy: str
    body: Expr


Expr = Int | Float | Str | Bool | Name | List | Call | BinOp | Neg | Match | Inlined

# ---- statements --------------------------------------------------------------------------


class Param(Node):
    """A typed parameter of a strategy or program: `n: int = 16`."""

    name: str
    type: str
    default: Expr | None = None


class Import(Node):
    """`import "search"` (a stdlib module) or `import "./local.ttcl"` (a file)."""

    path: str


class ModelDecl(Node):
    name: str
    name_span: Span
    value: Expr


class VerifierDecl(Node):
    name: str
    name_span: Span
    value: Expr


class PromptDecl(Node):
    name: str
    name_span: Span
    template: str


class AnswerDecl(Node):
    """`answer math` or `answer regex("Final: (.+)")`: how final answers are read and compared."""

    value: Expr


class BudgetDecl(Node):
    """`budget 64 generations` (units: generations, tokens, flops)."""

    amount: Expr
    unit: str
    unit_span: Span


class StrategyDecl(Node):
    """A parametric stage, expanded at compile time wherever it is called."""

    name: str
    name_span: Span
    params: tuple[Param, ...] | None = None
    body: Expr


class ProgramDecl(Node):
    """An entry point: a stage from Question to Answer; its parameters can be set at run time."""

    name: str
    name_span: Span
    params: tuple[Param, ...] | None = None
    body: Expr


Statement = Import | ModelDecl | VerifierDecl | PromptDecl | AnswerDecl | BudgetDecl | StrategyDecl | ProgramDecl
Definition = ModelDecl | VerifierDecl | PromptDecl | StrategyDecl | ProgramDecl


class Module(Node):
    """One parsed file."""

    path: str | None = None
    statements: tuple[Statement, ...]


for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, Node):
        _cls.model_rebuild()


def sub_span(span: Span, offset: int, length: int) -> Span:
    """The part of a one-line span that starts `offset` characters in and is `length` long."""
    start = span.start + offset
    return span.model_copy(
        update=dict(
            col=span.col + offset,
            end_line=span.line,
            end_col=span.col + offset + length,
            start=start,
            end=start + length,
        )
    )


def map_children(node: Node, fn) -> Node:
    """A copy of `node` with `fn` applied to each child node (in fields and tuples); the
    building block of every tree rewrite (`passes.py`)."""
    changes = {}
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, Node):
            changes[name] = fn(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            changes[name] = tuple(fn(v) for v in value)
    return node.model_copy(update=changes) if changes else node


def to_data(node: Any, spans: bool = True) -> Any:
    """A JSON-ready view of a tree: each node as a dict led by its class name.

    With `spans=False` the result compares equal for trees that differ only in layout, which
    is how tests check that parse -> format -> parse gives the same AST.
    """
    if isinstance(node, Node):
        data: dict[str, Any] = {"node": type(node).__name__}
        for name in type(node).model_fields:
            if not spans and name.endswith("span"):
                continue
            data[name] = to_data(getattr(node, name), spans)
        return data
    if isinstance(node, Span):
        return str(node)
    if isinstance(node, tuple):
        return [to_data(n, spans) for n in node]
    return node
