"""`ttcl doc [NAME]`: every primitive, stdlib strategy, model, verifier and answer kind with
its options (type, default, limits or choices, meaning), read from the one table of
built-ins (`ttcl/signatures.py`) and from the stdlib's own files, where the comment above a
strategy is its documentation. Nothing here restates what those say.

`ttcl doc` shows them all, `ttcl doc llama` one, `ttcl doc models` a section; `--markdown`
prints the same as Markdown. The reference tables of docs/language.md are such sections,
between marker comments: `update_markdown` regenerates them, and a test holds the file to it.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from typing import Any

SECTIONS = ("primitives", "strategies", "models", "verifiers", "answers", "prompts")


@dataclass(frozen=True)
class Row:
    """One option: its name, type, default, limits or choices, and meaning, as shown."""

    name: str
    type: str
    default: str
    limits: str
    meaning: str
    keyword_only: bool = False  # a generator option, inherited from the model when left out


@dataclass(frozen=True)
class Doc:
    """The documentation of one built-in or stdlib strategy."""

    name: str
    section: str
    kind: str
    form: str  # how it is written, its required arguments first: `beam(n, v, width=4, depth=40)`
    summary: str
    rows: tuple[Row, ...] = ()
    stage: str = ""  # its stage type, for a primitive
    generations: str = ""  # its generation count, as a formula of its parameters
    module: str = ""  # a strategy's stdlib module
    definition: str = ""  # a strategy's body


# ---- what there is to document -------------------------------------------------------------


def docs() -> list[Doc]:
    """Everything, section by section, in the order of the signatures table and the stdlib."""
    from ttcl.signatures import ANSWERS, DIFFICULTY, MODELS, STAGES, VERIFIERS

    found = [builtin(sig, "primitives") for sig in (*STAGES.values(), DIFFICULTY)]
    shipped = stdlib()
    found += [d for d in shipped if d.section == "strategies"]
    for section, table in (("models", MODELS), ("verifiers", VERIFIERS), ("answers", ANSWERS)):
        found += [builtin(sig, section) for sig in table.values()]
    return found + [d for d in shipped if d.section == "prompts"]


def builtin(sig, section: str) -> Doc:
    """A signature's documentation: its form, stage type, generations and options."""
    from ttcl.signatures import GENERATOR_OPTIONS

    rows = tuple(row(p, keyword_only=p in GENERATOR_OPTIONS) for p in sig.params)
    arguments = [_argument(r) for r in rows if not r.keyword_only]
    form = f"{sig.name}({', '.join(arguments)})" if arguments else sig.name
    if sig.kind == "difficulty":  # valid only as the head of a match; it costs its probes and the arm that runs
        kind, generations = "difficulty, the head of a `match`", f"{formula(sig.generations)} + the arm's"
        return Doc(
            sig.name,
            section,
            kind,
            f"match {form} {{ arms }}",
            sig.doc,
            rows,
            "Question -> the arms' type",
            generations,
        )
    stage = str(sig.stage) if section == "primitives" else ""
    generations = formula(sig.generations) if section == "primitives" else ""
    return Doc(sig.name, section, sig.kind, form, sig.doc, rows, stage, generations)


def row(p, keyword_only: bool = False) -> Row:
    """A parameter of the signatures table as a row."""
    from ttcl.signatures import REQUIRED

    default = "required" if p.default is REQUIRED else "" if p.default is None else _literal(p.default)
    return Row(p.name, p.type, default, limits(p), p.doc, keyword_only)


def limits(p) -> str:
    """A parameter's limits and choices: `1 to 1,000,000`, `≥ 0`, `"cpu", "cuda"`, `step-level`."""
    parts = []
    if p.minimum is not None and p.maximum is not None:
        parts.append(f"{_number(p.minimum)} to {_number(p.maximum)}")
    elif p.minimum is not None:
        parts.append(f"≥ {_number(p.minimum)}")
    elif p.maximum is not None:
        parts.append(f"≤ {_number(p.maximum)}")
    if p.ascending:  # a list: the limits hold for each item
        parts = [f"each {part}" for part in parts] + ["strictly ascending"]
    if p.choices:
        parts.append(", ".join(_literal(c) for c in p.choices))
    if p.step_level:
        parts.append("step-level")
    return "; ".join(parts)


def stdlib() -> list[Doc]:
    """The stdlib's strategies and prompts, each documented by the comment above it."""
    from ttcl import ast
    from ttcl.formatter import format_expr, format_string
    from ttcl.loader import stdlib_modules
    from ttcl.parser import parse, resource_dir

    found = []
    for module in stdlib_modules():
        text = (resource_dir("stdlib") / f"{module}.ttcl").read_text(encoding="utf-8")
        lines = text.split("\n")
        for stmt in parse(text, f"stdlib/{module}.ttcl").statements:
            if isinstance(stmt, ast.StrategyDecl):
                params = ", ".join(
                    f"{p.name}: {p.type}" + (f" = {format_expr(p.default)}" if p.default is not None else "")
                    for p in stmt.params or ()
                )
                form = f"{stmt.name}({params})"
                summary = comment_above(lines, stmt.span.line)
                body = format_expr(stmt.body)
                found.append(Doc(stmt.name, "strategies", "strategy", form, summary, module=module, definition=body))
            elif isinstance(stmt, ast.PromptDecl):
                summary, template = comment_above(lines, stmt.span.line), format_string(stmt.template, multiline=True)
                form = f"prompt {stmt.name}"
                found.append(Doc(stmt.name, "prompts", "prompt", form, summary, module=module, definition=template))
    return found


def comment_above(lines: list[str], line: int) -> str:
    """The comment lines right above line `line` (1-based), as one paragraph."""
    start = line - 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    return " ".join(text.lstrip("#").strip() for text in lines[start : line - 1])


def module_comment(module: str) -> str:
    """A stdlib module's first comment paragraph: what its strategies have in common."""
    from ttcl.parser import resource_dir

    lines = (resource_dir("stdlib") / f"{module}.ttcl").read_text(encoding="utf-8").split("\n")
    end = next((i for i, text in enumerate(lines) if not text.startswith("#") or text.strip() == "#"), len(lines))
    return " ".join(text.lstrip("#").strip() for text in lines[:end])


class Symbol:
    """A parameter's name standing for its value, so that a signature's generation count,
    a function of its arguments, can be read as a formula (`n·(k + 1)`)."""

    def __init__(self, text: str, sum_: bool = False):
        self.text, self.sum = text, sum_

    def __str__(self) -> str:
        return self.text

    def __add__(self, other: Any) -> Symbol:
        return Symbol(f"{self} + {other}", sum_=True)

    __radd__ = __add__

    def __mul__(self, other: Any) -> Symbol:
        return Symbol("·".join(f"({x})" if getattr(x, "sum", False) else str(x) for x in (self, other)))

    __rmul__ = __mul__


class _Arguments(dict):
    def __missing__(self, name: str) -> Symbol:
        return Symbol(name)


def formula(generations) -> str:
    """A generation count as a formula of the parameters: `n`, `n·(k + 1)`, `0`."""
    try:
        return str(generations(_Arguments()))
    except (TypeError, ArithmeticError):
        return ""


def _argument(r: Row) -> str:
    """A parameter in a form: `n` (required), `width=4`, `thresholds=...` (no default value)."""
    return r.name if r.default == "required" else f"{r.name}={r.default or '...'}"


def _literal(value: Any) -> str:
    """A default or a choice as TTCL writes it."""
    from ttcl.formatter import format_string

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return format_string(value)
    return repr(value) if isinstance(value, float) else str(value)


def _number(x: float) -> str:
    """A limit: whole numbers with thousands separators, others in the shortest form."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


# ---- choosing ------------------------------------------------------------------------------


def chosen(name: str | None) -> list[Doc]:
    """The docs NAME asks for: everything, a section, or each built-in so named (`registered`
    is both a verifier and an answer kind); an unknown NAME is a `UsageError` with a suggestion."""
    from ttcl.errors import UsageError

    every = docs()
    if name is None:
        return every
    found = [d for d in every if name in (d.name, d.section)]
    if not found:
        known = list(dict.fromkeys([*SECTIONS, *(d.name for d in every)]))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise UsageError(f"no built-in, stdlib strategy or section `{name}`{hint} (`ttcl doc` lists them all)")
    return found


def doc_command(args, out) -> int:
    """`ttcl doc [NAME] [--markdown]`."""
    found = chosen(args.name)
    if args.markdown:
        sections = [s for s in SECTIONS if any(d.section == s for d in found)]
        if args.name in SECTIONS or len(sections) == 1 and args.name is not None:
            sys.stdout.write(markdown(found))
        else:
            sys.stdout.write(
                "\n".join(f"### {s}\n\n{markdown([d for d in found if d.section == s])}" for s in sections)
            )
        return 0
    show(found, out, headings=args.name is None or args.name in SECTIONS)
    return 0


# ---- as text -------------------------------------------------------------------------------


def show(found: list[Doc], out, headings: bool = True) -> None:
    """Each doc: its name and kind, how it is written, what it does, and its options."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    section = None
    for d in found:
        if headings and d.section != section:
            section = d.section
            out.print(Text(f"── {section} ──", style="bold"))
        out.print(Text.assemble((d.name, "bold cyan"), f"  {d.kind}" + (f' (stdlib "{d.module}")' if d.module else "")))
        definition = f" = {d.definition}".replace("\n", "\n    ") if d.definition else ""
        out.print(Text(f"  {d.form}{definition}"))
        out.print(Text(f"  {d.summary}"))
        if d.stage:
            out.print(Text(f"  type {d.stage}; generations {d.generations}"))
        if d.rows:
            table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
            for column in ("option", "type", "default", "limits", "meaning"):
                table.add_column(column, overflow="fold")
            for r in d.rows:
                cells = (r.name + "=" * r.keyword_only, r.type, r.default, r.limits, r.meaning)
                table.add_row(*map(Text, cells))  # Text: `list[float]` is no markup
            out.print(table)
        out.print()


# ---- as Markdown ---------------------------------------------------------------------------


def markdown(found: list[Doc]) -> str:
    """The docs as Markdown: a table per section for primitives and strategies, and for
    models, verifiers and answers a table of each one's options."""
    parts = []
    primitives = [d for d in found if d.section == "primitives"]
    if primitives:
        parts.append(_primitives(primitives))
    for module in dict.fromkeys(d.module for d in found if d.section == "strategies"):
        rows = [[f"`{d.form}`", f"`{d.definition}`", d.summary] for d in found if d.module == module]
        header = ["strategy", "definition", "what it does"]
        parts.append(f'`import "{module}"`: {module_comment(module)}\n\n' + _table(header, rows))
    for module in dict.fromkeys(d.module for d in found if d.section == "prompts"):
        rows = [[f"`{d.name}`", d.summary] for d in found if d.section == "prompts" and d.module == module]
        parts.append(f'`import "{module}"`: {module_comment(module)}\n\n' + _table(["prompt", "for"], rows))
    for d in found:
        if d.section in ("models", "verifiers", "answers"):
            rows = [[f"`{r.name}`", r.type, _code(r.default), r.limits, r.meaning] for r in d.rows]
            required = [r.name for r in d.rows if r.default == "required"]
            short = f"{d.name}({', '.join(required + ['...'] * (len(required) < len(d.rows)))})"
            heading = f"`{short}`: {d.summary}"
            parts.append(
                heading + ("\n\n" + _table(["option", "type", "default", "limits", "meaning"], rows) if rows else "")
            )
    return "\n\n".join(parts) + "\n"


def _primitives(found: list[Doc]) -> str:
    """The stages with their types and costs, their parameters, and the generator options."""
    stages = [[f"`{d.form}`", d.stage.replace("->", "→"), d.summary, d.generations] for d in found]
    params = [
        [f"`{d.name}`" if i == 0 else "", f"`{r.name}`", r.type, _code(r.default), r.limits, r.meaning]
        for d in found
        for i, r in enumerate(r for r in d.rows if not r.keyword_only)
    ]
    generators = [d for d in found if any(r.keyword_only for r in d.rows)]
    options = next((d.rows for d in generators), ())
    text = _table(["stage", "type", "meaning", "generations"], stages)
    text += "\n\nTheir parameters:\n\n" + _table(["stage", "parameter", "type", "default", "limits", "meaning"], params)
    if options:
        names = ", ".join(f"`{d.name}`" for d in generators)
        text += (
            f"\n\n**Generator options.** Every generator ({names}) also takes these keyword-only options; "
            "left out, each is the model's:\n\n"
        )
        text += _table(
            ["option", "type", "limits", "meaning"],
            [[f"`{r.name}=`", r.type, r.limits, r.meaning] for r in options if r.keyword_only],
        )
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    return f"`{text}`" if text and text != "required" else text


# ---- the generated sections of a Markdown file ---------------------------------------------

# `<!-- generated: ttcl doc NAME ... -->` ... `<!-- end: ttcl doc NAME -->` (no `--` inside: not in an HTML comment)
_SECTION = re.compile(r"(<!-- generated: ttcl doc (\w+)\b[^>]*-->\n)(.*?)(<!-- end: ttcl doc \2 -->)", re.S)


def update_markdown(text: str) -> str:
    """A Markdown text with each generated section (from `<!-- generated: ttcl doc NAME ...
    -->` to `<!-- end: ttcl doc NAME -->`) made again: `ttcl doc NAME --markdown`."""
    return _SECTION.sub(lambda m: m.group(1) + "\n" + markdown(chosen(m.group(2))) + "\n" + m.group(4), text)
