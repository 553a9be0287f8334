"""Parser: TTCL source text to an `ast.Module`, with Lark (LALR) and friendly syntax errors."""

from __future__ import annotations

import difflib
import re
import sys
from functools import cache
from pathlib import Path
from typing import cast

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from ttcl import ast
from ttcl.errors import ParseError
from ttcl.source import Span

MAX_DEPTH = 200  # levels of nesting in one expression; CPython's own parser stops at 200 too
MAX_INT = 2**63 - 1  # an integer literal fits in 64 bits (a count or a seed, never more)
_LONE_CR = re.compile(r"\r(?!\n)")


def resource_dir(name: str) -> Path:
    """Where the shipped `grammar/` or `stdlib/` folder is: inside the installed package, or at
    the top of the source tree in a checkout."""
    inside = Path(__file__).parent / name
    return inside if inside.is_dir() else Path(__file__).parent.parent / name


@cache
def grammar_parser() -> Lark:
    """The one Lark parser of the TTCL grammar (LALR, positions kept): the formatter, the REPL
    and the benchmarks use it as `parse` does."""
    grammar = (resource_dir("grammar") / "ttcl.lark").read_text(encoding="utf-8")
    # cache=True stores the built LALR tables in the temp dir: start-up drops from ~100 ms to ~10 ms.
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True)


def parse(text: str, path: str | None = None) -> ast.Module:
    """Parse TTCL source text into a Module, or raise `ParseError` pointing at the bad token.

    A lone `\\r` ends a line as `\\n` does (the grammar, the spans and the excerpts count lines
    by `\\n`); it is read as one, so that offsets still point into the text as given. Callers
    that keep texts (the loader, the REPL, the formatter) use `normalize_newlines` first.
    """
    text = _LONE_CR.sub("\n", text) if "\r" in text else text
    try:
        return _parse(text, path)
    except ParseError as e:
        raise e.with_sources({path or "<input>": text}) from None


def _parse(text: str, path: str | None) -> ast.Module:
    check_brackets(text, path)  # 100,000 open brackets are refused before Lark spends seconds on them
    try:
        tree = grammar_parser().parse(text)  # LALR with its own stack: any nesting parses
    except UnexpectedInput as e:
        raise _syntax_error(e, text, path) from None
    _check_depth(tree, text, path)  # before the recursive transform, and every pass after it
    try:
        return _ToAST(path).transform(tree)
    except VisitError as e:  # an error raised while building the AST (a bad escape, say)
        if isinstance(e.orig_exc, ParseError):
            raise e.orig_exc from None
        raise
    except RecursionError:  # not expected below MAX_DEPTH; still an error with a place
        raise ParseError(f"program is nested too deeply (limit {MAX_DEPTH} levels)", _point(text, path, 0)) from None


# What the bracket scan skips (strings and comments, as the grammar lexes them) and counts.
_BRACKETS = re.compile(r'(?s:"""(?:[^"\\]|\\.|"(?!""))*""")|"(?:[^"\\\n]|\\.)*"|#[^\n]*|([\[({])|[\])}]')


def _too_deep(text: str, path: str | None, pos: int) -> ParseError:
    return ParseError(
        f"expression is nested more than {MAX_DEPTH} levels deep",
        _point(text, path, pos),
        ("brackets, calls, operators and `match` arms each add a level; name a part with a `strategy`",),
    )


def check_brackets(text: str, path: str | None) -> None:
    """Refuse brackets nested more than MAX_DEPTH deep, at the first one too many: a scan
    of the text, far quicker than parsing it (grouping parentheses count too, as in Python)."""
    depth = 0
    for m in _BRACKETS.finditer(text):
        if m.group(1):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(text, path, m.start())
        elif m.group() in (")", "]", "}"):
            depth = max(0, depth - 1)


def _check_depth(tree: Tree, text: str, path: str | None) -> None:
    """Refuse an expression nested more than MAX_DEPTH levels, pointing at where it goes
    deeper. Walked with an explicit stack: this is the check that keeps every recursive pass
    (the AST builder, checker, rewrites, lowering, formatter) within Python's stack."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(text, path, getattr(node.meta, "start_pos", 0) if not node.meta.empty else 0)
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


def _integer(tok: Token, span: Span) -> int:
    """An INT token's value, refused past MAX_INT (before `int()`, which would refuse a
    literal of thousands of digits with a Python error of its own)."""
    digits = tok.value.lstrip("0") or "0"
    if len(digits) > len(str(MAX_INT)) or int(digits) > MAX_INT:
        raise ParseError(
            f"integer {_shown(tok.value)} ({len(tok.value)} digits) is too large; "
            f"integers are at most {MAX_INT} (2^63 - 1)",
            span,
        )
    return int(digits)


def _shown(text: str, limit: int = 30) -> str:
    """A token as a message quotes it: on one line, and cut if long (a literal can be huge)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- tree -> AST -------------------------------------------------------------------------


def _span(path: str | None, m) -> Span:
    """The span of a Lark token or rule (both carry the same position attributes)."""
    return Span(
        path=path,
        line=m.line,
        col=m.column,
        end_line=m.end_line,
        end_col=m.end_column,
        start=m.start_pos,
        end=m.end_pos,
    )


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


def _binop(op: str):
    """The transformer method of a binary operator rule (used in `_ToAST`'s class body)."""

    def build(self, meta, left, right):
        return ast.BinOp(span=self.sp(meta), op=op, left=left, right=right)

    return build


@v_args(meta=True, inline=True)
class _ToAST(Transformer):
    """Builds AST nodes bottom-up; every node gets the span Lark propagated to its rule."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def sp(self, meta) -> Span:
        return _span(self.path, meta)

    # statements
    def start(self, meta, *statements):
        span = (
            self.sp(meta)
            if not meta.empty
            else Span(path=self.path, line=1, col=1, end_line=1, end_col=1, start=0, end=0)
        )
        return ast.Module(span=span, path=self.path, statements=statements)

    def import_stmt(self, meta, path):
        return ast.Import(span=self.sp(meta), path=path.value)

    def model_decl(self, meta, name, value):
        return ast.ModelDecl(span=self.sp(meta), name=name.value, name_span=self.sp(name), value=value)

    def verifier_decl(self, meta, name, value):
        return ast.VerifierDecl(span=self.sp(meta), name=name.value, name_span=self.sp(name), value=value)

    def prompt_decl(self, meta, name, template):
        return ast.PromptDecl(span=self.sp(meta), name=name.value, name_span=self.sp(name), template=template.value)

    def answer_decl(self, meta, value):
        return ast.AnswerDecl(span=self.sp(meta), value=value)

    def budget_decl(self, meta, amount, unit):
        return ast.BudgetDecl(span=self.sp(meta), amount=amount, unit=unit.value, unit_span=self.sp(unit))

    def strategy_decl(self, meta, name, params, body):
        return ast.StrategyDecl(span=self.sp(meta), name=name.value, name_span=self.sp(name), params=params, body=body)

    def program_decl(self, meta, name, params, body):
        return ast.ProgramDecl(span=self.sp(meta), name=name.value, name_span=self.sp(name), params=params, body=body)

    def params(self, meta, *params):
        # `program main() = ...` means the same as `program main = ...`: one AST for both.
        return tuple(p for p in params if p is not None) or None

    def param(self, meta, name, type_, default):
        return ast.Param(span=self.sp(meta), name=name.value, type=type_.value, default=default)

    # expressions
    pipe, add, sub = _binop("|>"), _binop("+"), _binop("-")
    mul, div, mod = _binop("*"), _binop("/"), _binop("%")

    def neg(self, meta, operand):
        return ast.Neg(span=self.sp(meta), operand=operand)

    def int(self, meta, tok):
        return ast.Int(span=self.sp(meta), value=_integer(tok, self.sp(meta)))

    def float(self, meta, tok):
        value = float(tok)  # any length converts; past the largest double it is inf
        if value == float("inf"):
            raise ParseError(
                f"number {_shown(tok.value)} is too large; numbers are at most {sys.float_info.max:.4g}",
                self.sp(meta),
            )
        return ast.Float(span=self.sp(meta), value=value)

    def true(self, meta):
        return ast.Bool(span=self.sp(meta), value=True)

    def false(self, meta):
        return ast.Bool(span=self.sp(meta), value=False)

    def name(self, meta, tok):
        return ast.Name(span=self.sp(meta), id=tok.value)

    def string(self, meta, tok):
        quote = 3 if tok.type == "LONG_STRING" else 1
        raw = tok.value[quote:-quote]
        return ast.Str(span=self.sp(meta), value=self._unescape(raw, self.sp(meta)))

    def _unescape(self, raw: str, span: Span) -> str:
        def replace(m: re.Match) -> str:
            if m.group(1) not in _ESCAPES:
                raise ParseError(f"unknown escape \\{m.group(1)} in string; use \\\\ for a backslash", span)
            return _ESCAPES[m.group(1)]

        return re.sub(r"\\(.)", replace, raw, flags=re.S)

    def list(self, meta, *items):
        return ast.List(span=self.sp(meta), items=tuple(i for i in items if i is not None))

    def call(self, meta, name, *args):
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, ast.Keyword))
        kwargs = tuple(a for a in args if isinstance(a, ast.Keyword))
        for i, a in enumerate(args):
            if isinstance(a, ast.Keyword) and any(not isinstance(b, ast.Keyword) for b in args[i:]):
                bad = next(b for b in args[i:] if not isinstance(b, ast.Keyword))
                raise ParseError("positional argument follows a keyword argument", bad.span)
        return ast.Call(span=self.sp(meta), func=name.value, args=positional, kwargs=kwargs)

    def kwarg(self, meta, name, value):
        return ast.Keyword(span=self.sp(meta), name=name.value, value=value)

    def match(self, meta, head, *arms):
        return ast.Match(span=self.sp(meta), head=head, arms=arms)

    def arm(self, meta, pattern, body):
        return ast.Arm(span=self.sp(meta), pattern=pattern, body=body)

    def range(self, meta, lo, hi):
        return ast.Range(span=self.sp(meta), lo=_integer(lo, self.sp(lo)), hi=_integer(hi, self.sp(hi)))

    def single(self, meta, lo):
        value = _integer(lo, self.sp(lo))
        return ast.Range(span=self.sp(meta), lo=value, hi=value)

    def wildcard(self, meta):
        return ast.Wildcard(span=self.sp(meta))


# ---- syntax errors -----------------------------------------------------------------------

_TERMINAL_NAMES = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "$END": "end of file",
}
STATEMENT_KEYWORDS = ("import", "model", "verifier", "prompt", "answer", "budget", "strategy", "program")


def _describe(terminal: str) -> str:
    """A human name for a Lark terminal: `a name`, `` `)` ``, `end of file`."""
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    try:
        pattern = grammar_parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal
    return f"`{pattern.value}`" if pattern.type == "str" else terminal.lower()


_EXPRESSION_START = {
    "a name",
    "an integer",
    "a number",
    "a string",
    "`(`",
    "`[`",
    "`-`",
    "`true`",
    "`false`",
    "`match`",
}


def _expected(names) -> str:
    """The set of acceptable terminals as a short English list ("an expression" for the lot)."""
    described = {_describe(n) for n in names}
    statement = {f"`{k}`" for k in STATEMENT_KEYWORDS}
    groups = []
    if statement <= described:
        described -= statement
        groups.append("a statement (`program`, `strategy`, `model`, ...)")
    if {"a name", "an integer", "`(`"} <= described:
        described -= _EXPRESSION_START
        groups.append("an expression")
    items = groups + sorted(described)
    if len(items) > 6:
        items = items[:6] + ["..."]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _point(text: str, path: str | None, pos: int, length: int = 1) -> Span:
    pos = max(0, min(pos, len(text)))
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    end = min(pos + length, len(text))
    if "\n" in text[pos:end]:
        end = text.index("\n", pos)
    return Span(path=path, line=line, col=col, end_line=line, end_col=col + max(end - pos, 0), start=pos, end=end)


def _syntax_error(e: UnexpectedInput, text: str, path: str | None) -> ParseError:
    if isinstance(e, UnexpectedCharacters):
        pos = cast(int, e.pos_in_stream)  # lark types it Optional, but sets it on UnexpectedCharacters
        char = text[pos] if pos < len(text) else ""
        if char == '"':
            return ParseError("unterminated string", _point(text, path, pos))
        return ParseError(f"unexpected character {char!r}", _point(text, path, pos))
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        return ParseError(
            f"unexpected end of file; expected {_expected(e.expected)}", _point(text, path, len(text.rstrip()), 0)
        )
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    notes: tuple[str, ...] = ()
    if tok.type == "NAME" and "PROGRAM" in e.expected:
        close = difflib.get_close_matches(tok.value, STATEMENT_KEYWORDS, n=1)
        notes = (f"did you mean `{close[0]}`?",) if close else ()
    return ParseError(
        f"unexpected `{_shown(tok.value)}`; expected {_expected(e.expected)}",
        _point(text, path, tok.start_pos, len(tok.value)),
        notes,
    )
