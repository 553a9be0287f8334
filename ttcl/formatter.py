"""Formatter: the canonical text of a program (`ttcl fmt`).

Canonical means: one statement per line (a long or `match` body breaks before each `|>`),
two-space indents, match arms with aligned `=>`, minimal parentheses, at most one blank line
where the source had one, and every comment kept: above the statement or arm it precedes, or
at the end of the line it ended. `format_source(format_source(x)) == format_source(x)`, and
parsing the output gives the same AST as parsing the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ttcl import ast
from ttcl.parser import grammar_parser, parse
from ttcl.source import normalize_newlines

WIDTH = 88
INDENT = "  "
_PRECEDENCE = {"|>": 1, "+": 2, "-": 2, "*": 3, "/": 3, "%": 3}


@dataclass(frozen=True)
class Comment:
    start: int
    line: int
    text: str


def format_source(text: str, path: str | None = None) -> str:
    """Parse `text` and return its canonical form (raises `ParseError` if it does not parse).
    Line breaks come out as `\\n` whatever they were (`\\r\\n`, a lone `\\r`)."""
    text = normalize_newlines(text)  # the spans and comment offsets below point into this text
    module = parse(text, path)
    comments = [
        Comment(t.start_pos, t.line, t.value.rstrip())  # type: ignore[arg-type]  # lark: Optional, set by the lexer
        for t in grammar_parser().lex(text, dont_ignore=True)
        if t.type == "COMMENT"
    ]
    out: list[str] = []
    prev_end = 0
    for stmt in module.statements:
        leading = [c for c in comments if prev_end <= c.start < stmt.span.start]
        inner = [c for c in comments if stmt.span.start <= c.start < stmt.span.end]
        trailing = [c for c in comments if c.start >= stmt.span.end and c.line == stmt.span.end_line]
        for c in leading:
            _blank_if_gap(out, text, prev_end, c.start)
            out.append(c.text)
            prev_end = c.start + len(c.text)
        _blank_if_gap(out, text, prev_end, stmt.span.start)
        lines = format_statement(stmt, inner)
        if trailing:
            lines[-1] += "  " + trailing[0].text
            prev_end = trailing[0].start + len(trailing[0].text)
        else:
            prev_end = stmt.span.end
        out.extend(lines)
    for c in (c for c in comments if c.start >= prev_end):
        _blank_if_gap(out, text, prev_end, c.start)
        out.append(c.text)
        prev_end = c.start + len(c.text)
    return "\n".join(out).rstrip("\n") + "\n"


def _blank_if_gap(out: list[str], text: str, start: int, end: int) -> None:
    if out and text[start:end].count("\n") >= 2 and out[-1] != "":
        out.append("")


# ---- statements --------------------------------------------------------------------------


def format_statement(stmt: ast.Statement, comments: Sequence[Comment] = ()) -> list[str]:
    """The lines of one statement; comments inside it go above it or above their match arm."""
    arm_comments = [c for c in comments if _in_match(stmt, c)]
    hoisted = [c.text for c in comments if c not in arm_comments]
    return hoisted + getattr(_Statements, type(stmt).__name__)(stmt, arm_comments)


def _in_match(stmt, c: Comment) -> bool:
    body = getattr(stmt, "body", None)
    return isinstance(body, ast.Match) and body.span.start < c.start < body.span.end


class _Statements:
    @staticmethod
    def Import(s: ast.Import, comments):
        return [f"import {format_string(s.path)}"]

    @staticmethod
    def ModelDecl(s: ast.ModelDecl, comments):
        return [f"model {s.name} = {format_expr(s.value)}"]

    @staticmethod
    def VerifierDecl(s: ast.VerifierDecl, comments):
        return [f"verifier {s.name} = {format_expr(s.value)}"]

    @staticmethod
    def PromptDecl(s: ast.PromptDecl, comments):
        return f"prompt {s.name} = {format_string(s.template, multiline=True)}".split("\n")

    @staticmethod
    def AnswerDecl(s: ast.AnswerDecl, comments):
        return [f"answer {format_expr(s.value)}"]

    @staticmethod
    def BudgetDecl(s: ast.BudgetDecl, comments):
        return [f"budget {format_expr(s.amount)} {s.unit}"]

    @staticmethod
    def StrategyDecl(s, comments):
        return _definition("strategy", s, comments)

    @staticmethod
    def ProgramDecl(s, comments):
        return _definition("program", s, comments)


def _definition(keyword: str, s, comments) -> list[str]:
    params = ""
    if s.params:
        params = "(" + ", ".join(_param(p) for p in s.params) + ")"
    head = f"{keyword} {s.name}{params} ="
    one_line = f"{head} {format_expr(s.body)}"
    if len(one_line) <= WIDTH and not _has_match(s.body):
        return [one_line]
    return [head] + layout(s.body, INDENT, comments)


def layout(e: ast.Expr, indent: str, comments=()) -> list[str]:
    """Lines for an expression that does not fit after its `=` or `=>`: on its own indented
    line if it fits there, else a pipeline breaks before each `|>` and a match puts each arm
    on its own line."""
    if not _has_match(e) and len(indent + format_expr(e)) <= WIDTH:
        return [indent + format_expr(e)]
    return _broken(e, indent, comments)


def _param(p: ast.Param) -> str:
    default = f" = {format_expr(p.default)}" if p.default is not None else ""
    return f"{p.name}: {p.type}{default}"


def _has_match(e: ast.Expr) -> bool:
    if isinstance(e, ast.Match):
        return True
    return isinstance(e, ast.BinOp) and e.op == "|>" and (_has_match(e.left) or _has_match(e.right))


# ---- multi-line layout -------------------------------------------------------------------


def _broken(e: ast.Expr, indent: str, comments=()) -> list[str]:
    stages = _pipeline(e)
    lines: list[str] = []
    for i, stage in enumerate(stages):
        prefix = "" if i == 0 else "|> "
        if isinstance(stage, ast.Match):
            body = _match_lines(stage, indent, comments)
            lines.append(indent + prefix + body[0])
            lines.extend(body[1:])
        else:
            lines.append(indent + prefix + format_expr(stage, 1 if i == 0 else 2))
    return lines


def _pipeline(e: ast.Expr) -> list[ast.Expr]:
    """A left-nested `a |> b |> c` as [a, b, c]; a parenthesized right side stays one stage."""
    if isinstance(e, ast.BinOp) and e.op == "|>":
        return _pipeline(e.left) + [e.right]
    return [e]


def _match_lines(m: ast.Match, indent: str, comments) -> list[str]:
    inner = indent + INDENT
    patterns = [_pattern(a.pattern) for a in m.arms]
    width = max(map(len, patterns), default=0)
    lines = [f"match {format_expr(m.head)} {{"]
    taken: set[Comment] = set()
    ends = [a.span.start for a in m.arms[1:]] + [m.span.end]
    for arm, pattern, next_start in zip(m.arms, patterns, ends):
        for c in comments:
            if c not in taken and c.start < arm.span.start:
                lines.append(inner + c.text)
                taken.add(c)
        trailing = [
            c
            for c in comments
            if c not in taken and arm.span.end <= c.start < next_start and c.line == arm.span.end_line
        ]
        head = f"{inner}{pattern.ljust(width)} =>"
        one_line = f"{head} {format_expr(arm.body)}"
        if len(one_line) <= WIDTH and not _has_match(arm.body):
            lines.append(one_line)
        else:
            lines.append(head)
            lines.extend(layout(arm.body, inner + INDENT, comments))
        if trailing:
            lines[-1] += "  " + trailing[0].text
            taken.add(trailing[0])
    lines.extend(inner + c.text for c in comments if c not in taken and c.start < m.span.end)
    lines.append(indent + "}")
    return lines


def _pattern(p) -> str:
    if isinstance(p, ast.Wildcard):
        return "_"
    return str(p.lo) if p.lo == p.hi else f"{p.lo}..{p.hi}"


# ---- one-line expressions ----------------------------------------------------------------


def format_expr(e: ast.Expr, parent: int = 0, right: bool = False) -> str:
    """One-line canonical text of an expression, parenthesized only where precedence needs it.

    `parent` is the precedence of the enclosing operator; a right operand of equal precedence
    is parenthesized too, so the tree shape survives a round trip.
    """
    if isinstance(e, ast.BinOp):
        prec = _PRECEDENCE[e.op]
        text = f"{format_expr(e.left, prec)} {e.op} {format_expr(e.right, prec, right=True)}"
        return f"({text})" if prec < parent or (prec == parent and right) else text
    if isinstance(e, ast.Neg):
        inner = format_expr(e.operand, 4)
        return f"-({inner})" if isinstance(e.operand, ast.Neg) else f"-{inner}"
    if isinstance(e, ast.Int):
        return str(e.value)
    if isinstance(e, ast.Float):
        return format_float(e.value)
    if isinstance(e, ast.Str):
        return format_string(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.List):
        return "[" + ", ".join(format_expr(i) for i in e.items) + "]"
    if isinstance(e, ast.Call):
        args = [format_expr(a) for a in e.args] + [f"{k.name}={format_expr(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(args)})"
    if isinstance(e, ast.Match):
        arms = ", ".join(f"{_pattern(a.pattern)} => {format_expr(a.body)}" for a in e.arms)
        return f"match {format_expr(e.head)} {{ {arms} }}"
    if isinstance(e, ast.Inlined):
        return format_expr(e.body, parent, right)
    raise TypeError(f"cannot format {type(e).__name__}")


def format_float(x: float) -> str:
    """The shortest text that reads back as the same float and as a float (not an int)."""
    for digits in range(1, 18):
        text = f"{x:.{digits}g}"
        if float(text) == x:
            break
    text = text.replace("e+", "e")
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa and not exponent:
        text = mantissa + ".0"
    elif exponent:
        text = mantissa + "e" + str(int(exponent))
    return text


def format_string(value: str, multiline: bool = False) -> str:
    """A double-quoted string with escapes; with `multiline` (prompt templates), a text with
    newlines is triple-quoted so it reads as it will be sent."""
    escaped = value.replace("\\", "\\\\")
    if multiline and "\n" in value:
        out = []
        for i, ch in enumerate(escaped):
            # a quote that could close the string early is escaped; all others stay readable
            needs = ch == '"' and (i == len(escaped) - 1 or escaped[i + 1] == '"')
            out.append('\\"' if needs else ch)
        return '"""' + "".join(out) + '"""'
    for char, escape in (('"', '\\"'), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        escaped = escaped.replace(char, escape)
    return f'"{escaped}"'
