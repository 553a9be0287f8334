"""Settings: `--set NAME.OPTION=VALUE` applied to a program's declarations, between loading
and checking.

    source -> loader (Workspace) -> overrides.apply -> checker -> passes -> lower -> Program

A setting edits the main file's declarations as the user could have edited the source:
`policy.max_tokens=64` puts `max_tokens=64` into `model policy = llama(...)`, replacing the
argument where one is given (by keyword, or by position: `policy.path=x.gguf` replaces the
`"smollm2-135m"` of `llama("smollm2-135m")`). NAME is a `model` or `verifier` of the main
file, `answer` (its `answer` declaration; without one, `answer number(...)` is made), or
`policy` where the file declares no model (the default model, `llama("smollm2-135m")`).

So the checker and the lowering judge a set value exactly as they judge one written in the
file, and their errors point into the settings: the pseudo-source `--set` holds one setting
per line, as typed, and a caret goes under the name, the option or the value at fault. The
value is read by the option's declared type: a `str` option takes the text as it is (quotes
are optional), any other is a TTCL expression read by the parser (`64`, `0.5`, `true`,
`[0.3, 0.6]`, or the name of a declared model, verifier or prompt).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ttcl import ast
from ttcl.errors import Diagnostic, ParseError, UsageError
from ttcl.formatter import format_float, format_statement
from ttcl.loader import Workspace
from ttcl.loader import load as load_workspace
from ttcl.parser import parse
from ttcl.signatures import (
    ANSWERS,
    BUILTIN_VERIFIERS,
    DEFAULT_ANSWER,
    DEFAULT_MODEL,
    DEFAULT_MODEL_NAME,
    GENERATOR_OPTIONS,
    MODELS,
    VERIFIERS,
    Signature,
)
from ttcl.source import Span

SOURCE = "--set"  # the pseudo-file errors in settings point into: line N is the Nth setting
EXAMPLE = "write NAME.OPTION=VALUE, such as --set policy.max_tokens=64"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*|_[A-Za-z0-9_]+")
_PREFIX = "answer ("  # a value is parsed as the expression of `answer (VALUE\n)`
_TABLES: dict[type, dict[str, Signature]] = {
    ast.ModelDecl: MODELS,
    ast.VerifierDecl: VERIFIERS,
    ast.AnswerDecl: ANSWERS,
}


@dataclass(frozen=True)
class Setting:
    """One `NAME.OPTION=VALUE` as typed: line `line` of the pseudo-source, starting at
    `offset` there; each part with the column (0-based) where it starts in `text`."""

    text: str
    line: int
    offset: int
    name: str = ""
    name_at: int = 0
    option: str = ""
    option_at: int = 0
    value: str = ""
    value_at: int = 0

    def span(self, start: int, end: int) -> Span:
        """The span of `text[start:end]` in the pseudo-source."""
        return Span(
            path=SOURCE,
            line=self.line,
            col=start + 1,
            end_line=self.line,
            end_col=end + 1,
            start=self.offset + start,
            end=self.offset + end,
        )

    @property
    def name_span(self) -> Span:
        """Where NAME is."""
        return self.span(self.name_at, self.name_at + len(self.name))

    @property
    def option_span(self) -> Span:
        """Where OPTION is."""
        return self.span(self.option_at, self.option_at + len(self.option))

    @property
    def value_span(self) -> Span:
        """Where VALUE is."""
        return self.span(self.value_at, self.value_at + len(self.value))


# ---- reading settings ------------------------------------------------------------------------


def setting_lines(settings: Any) -> list[str]:
    """Settings as lines of text: a list of "NAME.OPTION=VALUE" strings, or a dict from
    "NAME.OPTION" to a value (a bool, int, float or list of numbers, or text read as `--set`
    reads it). None is no settings."""
    if settings is None:
        return []
    if isinstance(settings, Mapping):
        lines = [f"{_key(key)}={_text(key, value)}" for key, value in settings.items()]
    elif isinstance(settings, Sequence) and not isinstance(settings, (str, bytes)):
        lines = [_line(item) for item in settings]
    else:
        raise UsageError(
            'settings must be a list of "NAME.OPTION=VALUE" strings or a dict from "NAME.OPTION" to a value, '
            f"not a {type(settings).__name__}"
        )
    for line in lines:
        if "\n" in line or "\r" in line:
            raise UsageError(f"a setting is one line; {line!r} holds a line break (write \\n inside quotes)")
    return lines


def _line(item: Any) -> str:
    if not isinstance(item, str):
        raise UsageError(f'each setting must be a "NAME.OPTION=VALUE" string, not a {type(item).__name__}')
    return item


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise UsageError(f'a settings key must be a "NAME.OPTION" string, not a {type(key).__name__}')
    return key


def _text(key: str, value: Any) -> str:
    """A Python value as the text of a setting."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return format_float(float(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(key, v) for v in value) + "]"
    raise UsageError(f"settings[{key!r}] must be a bool, a number, a list of numbers or text, not {value!r}")


def read(lines: list[str]) -> tuple[list[Setting], list[Diagnostic]]:
    """Each line split into its name, option and value; a malformed one is a diagnostic."""
    settings, errors, offset = [], [], 0
    for number, text in enumerate(lines, 1):
        found = _split(Setting(text, number, offset))
        if isinstance(found, Diagnostic):
            errors.append(found)
        else:
            settings.append(found)
        offset += len(text) + 1
    return settings, errors


def _split(s: Setting) -> Setting | Diagnostic:
    text = s.text
    eq = text.find("=")
    if eq < 0:
        shown = f"`{text.strip()}` is not a setting: it has no `=`" if text.strip() else "an empty setting"
        return Diagnostic(shown, s.span(0, len(text)), (EXAMPLE,))
    dot = text.find(".", 0, eq)
    if dot < 0:
        start, end = _stripped(text, 0, eq)
        shown = f"`{text[start:end]}` names no option" if end > start else "nothing before `=` names an option"
        return Diagnostic(f"{shown}: a `.` goes between the declaration and the option", s.span(start, end), (EXAMPLE,))
    (name_at, name_end), (option_at, option_end) = _stripped(text, 0, dot), _stripped(text, dot + 1, eq)
    value_at, value_end = _stripped(text, eq + 1, len(text))
    for start, end, what in ((name_at, name_end, "declaration"), (option_at, option_end, "option")):
        if not _NAME.fullmatch(text[start:end]):
            shown = f"`{text[start:end]}` is not a name" if end > start else f"the {what}'s name is missing"
            return Diagnostic(f"{shown}; {EXAMPLE}", s.span(start, end))
    return replace(
        s,
        name=text[name_at:name_end],
        name_at=name_at,
        option=text[option_at:option_end],
        option_at=option_at,
        value=text[value_at:value_end],
        value_at=value_at,
    )


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    """`text[start:end]` without the spaces around it, as (start, end)."""
    part = text[start:end]
    if not part.strip():
        return start, start
    return start + len(part) - len(part.lstrip()), start + len(part.rstrip())


# ---- applying them ---------------------------------------------------------------------------


def apply(ws: Workspace, settings: Any, later: bool = False) -> Workspace:
    """The workspace with the settings applied to its main file's declarations. What is wrong
    with a setting itself (its form, its name, its option, a value that does not parse) is
    added to the workspace's errors, which the checker reports with its own. With `later`, a
    setting that names what the file does not declare is left for later, not an error (a
    session's declarations come one at a time)."""
    lines = setting_lines(settings)
    if not lines:
        return ws
    parsed, errors = read(lines)
    editor = _Editor(ws, errors)
    for s in parsed:
        if not (later and not _declares(editor.statements, s.name)):
            editor.apply(s)
    main = ws.main.model_copy(update={"statements": tuple(editor.statements)})
    return Workspace([main, *ws.modules[1:]], {**ws.sources, SOURCE: "\n".join(lines)}, [*ws.errors, *errors])


def waiting(module: ast.Module, settings: Any) -> list[str]:
    """The settings that name what the module does not declare, which `apply(..., later=True)`
    leaves for later."""
    parsed, _ = read(setting_lines(settings))
    return [s.text for s in parsed if not _declares(module.statements, s.name)]


def rewrite_source(text: str, path: str | None, settings: Any) -> str:
    """The source text with the settings written into it: each changed declaration in its
    canonical form, and a declaration they make (`answer`, the default `policy`) at the end.
    For a program written from another (`ttcl optimize`), so it keeps what it was chosen with;
    the settings were checked already, so they are applied here without errors."""
    if not setting_lines(settings):
        return text
    ws = load_workspace(text, path)
    text = ws.sources[path or "<input>"]  # with newlines normalized, as the spans count them
    old, new = ws.main.statements, apply(ws, settings).main.statements
    pieces, at = [], 0
    for before, after in zip(old, new):
        if after is not before:
            pieces += [text[at : before.span.start], "\n".join(format_statement(after))]
            at = before.span.end
    pieces.append(text[at:])
    made = [line for stmt in new[len(old) :] for line in format_statement(stmt)]
    return "".join(pieces).rstrip("\n") + "\n" + "".join(f"{line}\n" for line in made)


def _declares(statements: Sequence[ast.Statement], name: str) -> bool:
    """Whether a setting of `name` has a declaration to apply to in the main file's statements."""
    if any(isinstance(s, (ast.ModelDecl, ast.VerifierDecl)) and s.name == name for s in statements):
        return True
    return name == "answer" or (
        name == DEFAULT_MODEL_NAME and not any(isinstance(s, ast.ModelDecl) for s in statements)
    )


class _Editor:
    """The main file's statements, edited one setting at a time."""

    def __init__(self, ws: Workspace, errors: list[Diagnostic]):
        self.ws = ws
        self.statements: list[ast.Statement] = list(ws.main.statements)
        self.errors = errors

    def error(self, span: Span, message: str, *notes: str) -> None:
        self.errors.append(Diagnostic(message, span, notes))

    def apply(self, s: Setting) -> None:
        index = self.target(s)
        if index is None:
            return
        stmt = self.statements[index]
        call = _constructor(stmt)
        if call is None:
            return  # not made by a known constructor: the checker reports the declaration itself
        sig = _TABLES[type(stmt)][call.func]
        param = sig.param(s.option)
        if param is None:
            self.unknown_option(s, sig, stmt)
            return
        value = self.value(s, param.type)
        if value is not None:
            keyword = ast.Keyword(span=s.span(s.option_at, len(s.text)), name=s.option, value=value)
            self.statements[index] = stmt.model_copy(update={"value": _with(call, sig, keyword)})

    # ---- the declaration a setting names ---------------------------------------------------

    def target(self, s: Setting) -> int | None:
        """The index of the statement NAME names, made where it may be (`answer`, `policy`);
        None after reporting why there is none."""
        for i, stmt in enumerate(self.statements):
            if isinstance(stmt, (ast.ModelDecl, ast.VerifierDecl)) and stmt.name == s.name:
                if isinstance(stmt.value, ast.Name):  # `verifier v = prm`: an alias
                    self.error(
                        s.name_span,
                        f"verifier `{s.name}` is another name for `{stmt.value.id}` and has no options of its own",
                        f"set `{stmt.value.id}`'s options instead",
                    )
                    return None
                return i
        if s.name == "answer":
            found = next((i for i, stmt in enumerate(self.statements) if isinstance(stmt, ast.AnswerDecl)), None)
            return found if found is not None else self.made(_default_answer(s))
        if s.name == DEFAULT_MODEL_NAME and _declares(self.statements, s.name) and not self.defined(s.name):
            return self.made(_default_model(s))
        self.not_settable(s)
        return None

    def made(self, stmt: ast.Statement) -> int:
        self.statements.append(stmt)
        return len(self.statements) - 1

    def defined(self, name: str) -> ast.Node | None:
        """The statement that defines `name` in any module (a strategy, a program, ...)."""
        for module in self.ws.modules:
            for stmt in module.statements:
                if getattr(stmt, "name", None) == name:
                    return stmt
        return None

    def not_settable(self, s: Setting) -> None:
        """Why NAME is no declaration a setting can change."""
        other = self.defined(s.name)
        if isinstance(other, (ast.ModelDecl, ast.VerifierDecl)):
            self.error(
                s.name_span,
                f"`{s.name}` is declared in {other.span.path}, an imported module; "
                "--set changes the main file's declarations",
            )
        elif other is not None:
            kind = type(other).__name__.removesuffix("Decl").lower()
            self.error(
                s.name_span,
                f"`{s.name}` is a {kind}; --set changes the options of a model, a verifier or the answer",
                *self.known_note(),
            )
        elif s.name in BUILTIN_VERIFIERS:
            self.error(
                s.name_span,
                f"`{s.name}` is the built-in verifier, with no declaration to change",
                f"declare it to set its options, e.g. `verifier {s.name} = self_verify(policy)`"
                if s.name == "prm"
                else "it has no options",
            )
        else:
            known = self.settable()
            close = difflib.get_close_matches(s.name, known, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            self.error(s.name_span, f"no model or verifier `{s.name}` to set{hint}", *self.known_note())

    def settable(self) -> list[str]:
        names = [s.name for s in self.statements if isinstance(s, (ast.ModelDecl, ast.VerifierDecl))]
        if _declares(self.statements, DEFAULT_MODEL_NAME) and DEFAULT_MODEL_NAME not in names:
            names.insert(0, DEFAULT_MODEL_NAME)
        return names + ["answer"]

    def known_note(self) -> tuple[str, ...]:
        return (f"--set can name: {', '.join(self.settable())}",)

    def unknown_option(self, s: Setting, sig: Signature, stmt: ast.Statement) -> None:
        names = [p.name for p in sig.params]
        close = difflib.get_close_matches(s.option, names, n=2)
        hint = f"; did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
        notes = [f"`{sig.name}` takes: {', '.join(names)}"]
        if isinstance(stmt, ast.AnswerDecl) and stmt.span.path == SOURCE:
            notes.append(f"the file declares no `answer`, so it is `{sig.name}`; declare one such as `answer choice`")
        self.error(s.option_span, f"`{sig.name}` has no parameter `{s.option}`{hint}", *notes)

    # ---- the value ---------------------------------------------------------------------------

    def value(self, s: Setting, type_: str) -> ast.Expr | None:
        """The value as an expression of the option's type: text for a `str` (unless quoted),
        else parsed as TTCL; None after reporting a value that does not parse."""
        if type_ == "str" and not s.value.startswith('"'):
            return ast.Str(span=s.value_span, value=s.value)
        if not s.value:
            self.error(s.span(s.value_at, s.value_at), f"`{s.name}.{s.option}` needs a value after `=`")
            return None
        source = f"{_PREFIX}{s.value}\n)"
        try:
            module = parse(source, SOURCE)
        except ParseError as e:
            self.errors.extend(_moved_diagnostic(d, s) for d in e.diagnostics)
            return None
        wrapper = module.statements[0]
        assert isinstance(wrapper, ast.AnswerDecl)  # the text parsed begins `answer (`
        if len(module.statements) != 1:
            self.error(s.value_span, "the value is more than one expression")
            return None
        return _moved(wrapper.value, s)


def _constructor(stmt: ast.Statement) -> ast.Call | None:
    """The constructor call of a declaration (`answer math` is `math()`), if it is a known one."""
    value = stmt.value if isinstance(stmt, (ast.ModelDecl, ast.VerifierDecl, ast.AnswerDecl)) else None
    if isinstance(stmt, ast.AnswerDecl) and isinstance(value, ast.Name):
        value = ast.Call(span=value.span, func=value.id)
    table = _TABLES.get(type(stmt), {})
    return value if isinstance(value, ast.Call) and value.func in table else None


def _with(call: ast.Call, sig: Signature, keyword: ast.Keyword) -> ast.Call:
    """The call with the keyword's value in place of the argument it names (positional or
    keyword), or added as a keyword argument."""
    positional = [p.name for p in sig.params if p not in GENERATOR_OPTIONS]
    if keyword.name in positional and positional.index(keyword.name) < len(call.args):
        i = positional.index(keyword.name)
        return call.model_copy(update={"args": (*call.args[:i], keyword.value, *call.args[i + 1 :])})
    kept = tuple(k for k in call.kwargs if k.name != keyword.name)
    at = next((i for i, k in enumerate(call.kwargs) if k.name == keyword.name), len(kept))
    return call.model_copy(update={"kwargs": (*kept[:at], keyword, *kept[at:])})


def _default_model(s: Setting) -> ast.ModelDecl:
    """`model policy = llama(path="smollm2-135m")`: the default model, declared where the
    setting names it."""
    span = s.name_span
    kwargs = tuple(
        ast.Keyword(span=span, name=k, value=ast.Str(span=span, value=v))
        for k, v in DEFAULT_MODEL.items()
        if k != "kind"
    )
    call = ast.Call(span=span, func=DEFAULT_MODEL["kind"], kwargs=kwargs)
    return ast.ModelDecl(span=s.span(0, len(s.text)), name=s.name, name_span=span, value=call)


def _default_answer(s: Setting) -> ast.AnswerDecl:
    """`answer number()`: the answer kind a file without a declaration has."""
    span = s.name_span
    return ast.AnswerDecl(span=s.span(0, len(s.text)), value=ast.Call(span=span, func=DEFAULT_ANSWER["kind"]))


# ---- spans: from the parsed `answer (VALUE\n)` to the setting's line -----------------------


def _position(offset: int, s: Setting) -> int:
    """A column (0-based) in the setting's text, for an offset in the parsed text; what lies
    past the value (the closing bracket added to parse it) is its end."""
    return s.value_at + max(0, min(offset - len(_PREFIX), len(s.value)))


def _span(span: Span, s: Setting) -> Span:
    return s.span(_position(span.start, s), _position(span.end, s))


def _moved(node: Any, s: Setting) -> Any:
    """A parsed value's tree with every span moved onto the setting's line."""
    node = ast.map_children(node, lambda child: _moved(child, s))
    return node.model_copy(update={"span": _span(node.span, s)})


def _moved_diagnostic(d: Diagnostic, s: Setting) -> Diagnostic:
    message = d.message
    if d.span is not None and d.span.start >= len(_PREFIX) + len(s.value):  # at the bracket it was wrapped in
        message = message.replace("unexpected `)`", "unexpected end of the value", 1)
    return replace(d, message=message, span=_span(d.span, s) if d.span is not None else None)
