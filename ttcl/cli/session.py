"""The REPL's session, with no terminal in it: the declarations entered so far, whether an
input is a whole statement yet, and compiling the session with the real pipeline.

    s = Session()
    is_complete("strategy bon(n: int) =")                     # False: the statement goes on
    s.submit("strategy bon(n: int) = sample(n) |> vote")      # Outcome("defined", [Entry(...)])
    s.submit("bon(4)")                                        # Outcome("pipeline", ...), program main

The session's source is its declarations, one after another, then what was typed; a bare
pipeline is compiled as `program main =` followed by it. Errors point into what was typed
(or the loaded file), not into that concatenation. A declaration of a name already defined
replaces the old one where it stood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import cast

import networkx as nx
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

from ttcl import ast
from ttcl.checker import Checked
from ttcl.errors import Diagnostic, ParseError, TTCLError, UsageError
from ttcl.overrides import waiting
from ttcl.parser import STATEMENT_KEYWORDS, check_brackets, grammar_parser, parse
from ttcl.program import Program, build, check_programs, check_source
from ttcl.signatures import ANSWER, QUESTION, Stage
from ttcl.source import Span, normalize_newlines, read_source

_STAGE = "_it"  # the strategy a bare pipeline is checked as, to learn its type
_LEADING = re.compile(r"(?:\s+|#[^\n]*)*")  # whitespace and comments before the first word


@dataclass(frozen=True)
class Entry:
    """One declaration: its statement, and the text it was written in (a typed input or a
    loaded file, `path` None for typed ones) so that errors can point back there. It compiles
    as `header` followed by `source[start:end]`."""

    stmt: ast.Statement
    source: str
    path: str | None = None
    start: int = 0
    end: int = 0
    header: str = ""  # a bare pipeline's `program main =`

    @classmethod
    def of(cls, stmt: ast.Statement, source: str, path: str | None = None) -> Entry:
        return cls(stmt, source, path, stmt.span.start, stmt.span.end)

    @property
    def text(self) -> str:
        return self.header + self.source[self.start : self.end]

    @property
    def key(self) -> tuple[str, str]:
        """What it defines: a later entry with the same key replaces it."""
        if isinstance(self.stmt, ast.BudgetDecl):
            return ("budget", self.stmt.unit)
        if isinstance(self.stmt, ast.Import):
            return ("import", self.stmt.path)
        if isinstance(self.stmt, ast.AnswerDecl):
            return ("answer", "")
        return ("def", self.stmt.name)


@dataclass
class Outcome:
    """What an input did: `defined` declarations (`entries`), or a `pipeline` whose stage
    type is `stage` and which, when it runs from the question to an answer, is `program`."""

    kind: str
    entries: list[Entry] = field(default_factory=list)
    stage: Stage | None = None
    program: Program | None = None


class SessionError(TTCLError):
    """Diagnostics moved to where the user wrote them, each rendered with its own source."""

    def __init__(self, pairs: list[tuple[Diagnostic, dict[str, str]]]):
        super().__init__([d for d, _ in pairs])
        self.pairs = pairs

    def render(self) -> str:
        return "\n\n".join(d.render(sources) for d, sources in self.pairs)


def is_statement(text: str) -> bool:
    """Whether an input declares something (begins with a keyword) rather than being a pipeline."""
    leading = _LEADING.match(text)
    assert leading is not None  # the pattern matches the empty string too
    rest = text[leading.end() :]
    word = re.match(r"[A-Za-z_]\w*", rest)
    return not rest or (word is not None and word.group() in STATEMENT_KEYWORDS)


def is_complete(text: str) -> bool:
    """Whether an input is whole, so that Enter submits it: the parser accepts it, or it fails
    before its end. Input that stops early (an open bracket, a trailing `|>`, a long string
    still open) is not. `:commands` and blank input are always whole."""
    if not text.strip() or text.lstrip().startswith(":"):
        return True
    text = normalize_newlines(text)
    wrapped = text if is_statement(text) else f"program main =\n{text}"
    try:
        check_brackets(wrapped, None)  # too deep is whole (an error to show), and quick to tell
        grammar_parser().parse(wrapped)
    except UnexpectedEOF:
        return False
    except UnexpectedToken as e:
        return e.token.type != "$END"
    except UnexpectedCharacters:
        return wrapped.count('"' * 3) % 2 == 0
    except ParseError:
        return True
    return True


class Session:
    """The declarations so far and the current program (the last pipeline typed or program
    declared). Every method either succeeds and updates the session or raises `TTCLError` and
    leaves it as it was."""

    def __init__(self, settings: list[str] | None = None) -> None:
        self.entries: list[Entry] = []
        self.path: str | None = None  # the loaded file: imports are relative to it
        self.current: Entry | None = None  # a program declaration, or a bare pipeline's wrapper
        # `--set`s: applied to the declarations each time they are checked, each once the
        # session declares what it names (declarations come one at a time)
        self.settings = list(settings or [])
        self.checked: Checked = self._check([])

    @property
    def names(self) -> list[str]:
        """Every name defined, imported ones included (for completion)."""
        return sorted(self.checked.definitions)

    def submit(self, text: str) -> Outcome:
        """Declare what `text` declares, or check and compile the pipeline it is."""
        text = normalize_newlines(text)  # spans count lines by "\n", and point into this text
        return self.declare(text) if is_statement(text) else self.pipeline(text)

    def declare(self, text: str) -> Outcome:
        """Add (or replace) the declarations in `text`; programs among them are built."""
        text = normalize_newlines(text)
        new = [Entry.of(s, text) for s in parse(text).statements]
        entries = self._merged(new)
        checked = self._check(entries)
        programs = [e for e in new if isinstance(e.stmt, ast.ProgramDecl) and not needs_params(e.stmt)]
        built = [self._compile(entries, e.key[1], checked) for e in programs]
        self.entries, self.checked = entries, checked
        self.current = programs[-1] if programs else self.current
        return Outcome("defined", new, program=built[-1] if built else None)

    def pipeline(self, text: str) -> Outcome:
        """Check a bare pipeline: its stage type, and the program it is if it runs from the
        question to an answer (which then becomes the current program)."""
        text = normalize_newlines(text)
        checked = self._check(self.entries + [self._wrapper(text, f"strategy {_STAGE} =\n")])
        stage = checked.strategy_types.get(_STAGE)
        if not (isinstance(stage, Stage) and QUESTION in stage.accepts and stage.returns == ANSWER):
            return Outcome("pipeline", stage=stage)
        entry = self._wrapper(text, f"program {self._fresh()} =\n")
        program = self._compile(self.entries + [entry], entry.key[1])
        self.current = entry
        return Outcome("pipeline", stage=stage, program=program)

    def load(self, path: str) -> Outcome:
        """Replace the session with a file's declarations; its `main` (or last) program that
        needs no parameters is current."""
        text = normalize_newlines(read_source(path))
        checked = check_source(text, path, self.settings, later=True)
        check_programs(checked)
        self.entries = [Entry.of(s, text, path) for s in checked.workspace.main.statements]
        self.path, self.checked, self.current = path, checked, None
        programs = {
            e.key[1]: e for e in self.entries if isinstance(e.stmt, ast.ProgramDecl) and not needs_params(e.stmt)
        }
        if programs:
            self.current = programs.get("main") or list(programs.values())[-1]
        return Outcome("defined", self.entries)

    def program(self) -> Program:
        """The current program, compiled afresh with the declarations as they are now."""
        if self.current is None:
            raise UsageError("no program yet: type a pipeline such as `sample(4) |> vote`, or declare a `program`")
        extra = [self.current] if self.current.header else []
        return self._compile(self.entries + extra, self.current.key[1])

    def waiting(self) -> list[str]:
        """The settings that name what the session does not declare (yet)."""
        return waiting(self.checked.workspace.main, self.settings)

    def models(self) -> list[Entry]:
        """The model declarations; the first is the policy, the default of every stage."""
        return [e for e in self.entries if isinstance(e.stmt, ast.ModelDecl)]

    def replace(self, old: Entry | None, text: str) -> Entry:
        """Put the declaration `text` makes in the place of `old` (at the front when None:
        a first model becomes the policy); kept only if the session still checks."""
        text = normalize_newlines(text)
        new = Entry.of(parse(text).statements[0], text)
        rest = [e for e in self.entries if e.key != new.key or e is old]
        entries = [new if e is old else e for e in rest] if old is not None else [new] + rest
        self.checked, self.entries = self._check(entries), entries
        return new

    def promote(self, entry: Entry) -> None:
        """Move a declaration to the front: a model there is the policy."""
        entries = [entry] + [e for e in self.entries if e is not entry]
        self.checked, self.entries = self._check(entries), entries

    def located(self, graph: nx.DiGraph) -> nx.DiGraph:
        """A copy of a session program's graph whose node spans, and the strategy calls in
        their origins, point to where they were written (for `draw.to_text`)."""
        extra = [self.current] if self.current is not None and self.current.header else []
        text, placed = _assemble(self.entries + extra)
        starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

        def moved(span: Span) -> Span:
            found = _locate(span, placed) if span.path == self.path else None
            return found[1] if found else span

        def call(site: str) -> str:  # "bon@4:1", a position in the session's text
            name, _, pos = site.rpartition("@")
            line, col = map(int, pos.split(":"))
            at = starts[line - 1] + col - 1
            span = moved(Span(path=self.path, line=line, col=col, end_line=line, end_col=col, start=at, end=at))
            return f"{name}@{span.line}:{span.col}"

        copy = graph.copy()
        for _, attrs in copy.nodes(data=True):
            attrs["span"] = moved(attrs["span"])
            sites, inside = [], True  # a call is in the session's text if its caller is
            for site in attrs.get("origin") or ():
                sites.append(call(site) if inside else site)
                decl = self.checked.definitions.get(site.rpartition("@")[0])
                inside = decl is not None and decl.span.path == self.path
            attrs["origin"] = tuple(sites)
        return copy

    # ---- compiling -------------------------------------------------------------------------

    def _merged(self, new: list[Entry]) -> list[Entry]:
        """The entries with `new` added: each replaces an old one of the same key in place."""
        by_key = {e.key: e for e in new}
        kept = [by_key.pop(e.key, e) for e in self.entries]
        return kept + [e for e in new if e.key in by_key]

    def _check(self, entries: list[Entry]) -> Checked:
        """Check the entries as one source text; errors are moved back to where each entry
        was written."""
        text, placed = _assemble(entries)
        try:
            return check_source(text, self.path, self.settings, later=True)
        except TTCLError as e:
            raise self._relocated(e, placed, text) from None

    def _compile(self, entries: list[Entry], name: str, checked: Checked | None = None) -> Program:
        """Program `name` of the entries (`checked`: their check, where done already)."""
        checked = checked or self._check(entries)
        try:
            return build(checked, name, {})
        except TTCLError as e:
            text, placed = _assemble(entries)
            raise self._relocated(e, placed, text) from None

    def _relocated(self, error: TTCLError, placed: list[tuple[int, Entry]], text: str) -> TTCLError:
        """The error with its spans, and the call sites its notes name, moved from the
        session's assembled `text` to where each was written."""
        starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        here = re.escape(self.path or "<input>")

        def note(n: str) -> str:  # "in strategy `bon` called at <input>:7:16", as a stdlib error has
            site = re.fullmatch(rf"(.* called at ){here}:(\d+):(\d+)", n)
            if site is None or not 1 <= int(site[2]) <= len(starts):
                return n
            at = starts[int(site[2]) - 1] + int(site[3]) - 1
            found = _locate(Span(path=self.path, line=1, col=1, end_line=1, end_col=1, start=at, end=at), placed)
            return f"{site[1]}{found[1]}" if found else n

        pairs = []
        for d in error.diagnostics:
            notes = tuple(note(n) for n in d.notes)
            found = _locate(d.span, placed) if d.span and d.span.path == self.path else None
            if found is None:
                pairs.append((Diagnostic(d.message, d.span, notes), error.sources))
                continue
            entry, span = found
            pairs.append((Diagnostic(d.message, span, notes), {entry.path or "<input>": entry.source}))
        relocated = SessionError(pairs)
        relocated.exit_code = error.exit_code
        return relocated

    def _wrapper(self, text: str, header: str) -> Entry:
        """A bare pipeline as a declaration: `header` (ending in a newline), then the text."""
        entry = Entry(cast(ast.Statement, None), text, None, 0, len(text), header)  # stmt: parsed next
        try:
            return replace(entry, stmt=parse(entry.text, self.path).statements[0])
        except TTCLError as e:
            raise self._relocated(e, [(0, entry)], entry.text) from None

    def _fresh(self) -> str:
        """The name a bare pipeline's program takes: `main`, unless one is declared."""
        return next(n for n in ("main", "it", "it_") if n not in self.checked.definitions)


def needs_params(decl: ast.ProgramDecl) -> bool:
    """Whether a program has a parameter with no default (the session builds only those without)."""
    return any(p.default is None for p in decl.params or ())


def _assemble(entries: list[Entry]) -> tuple[str, list[tuple[int, Entry]]]:
    """The session's source text, and where each entry begins in it."""
    parts, placed, at = [], [], 0
    for e in entries:
        placed.append((at, e))
        parts.append(e.text + "\n")
        at += len(e.text) + 1
    return "".join(parts), placed


def _locate(span: Span, placed: list[tuple[int, Entry]]) -> tuple[Entry, Span] | None:
    """The entry a span of the session's text falls in, and the span in that entry's source."""
    for at, entry in reversed(placed):
        if span.start >= at:
            shift = entry.start - len(entry.header) - at
            return entry, _span_at(entry.source, entry.path, span.start + shift, span.end + shift)
    return None


def _span_at(text: str, path: str | None, start: int, end: int) -> Span:
    start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
    end = max(start, end)

    def position(i: int) -> tuple[int, int]:
        return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1

    (line, col), (end_line, end_col) = position(start), position(end)
    return Span(path=path, line=line, col=col, end_line=end_line, end_col=end_col, start=start, end=end)
