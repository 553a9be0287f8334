"""Errors. Every mistake in a program is a `TTCLError` holding one or more diagnostics.

A diagnostic is a message with the span it is about; rendering gives the
`path:line:col: error: message` line, the source line and a caret under the span, so users
never see a Python traceback or a Lark internal for a mistake in their program.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ttcl.source import Span


@dataclass(frozen=True)
class Diagnostic:
    """One error: what is wrong, where, and optional notes (each a line of advice or context)."""

    message: str
    span: Span | None = None
    notes: tuple[str, ...] = field(default=())

    def render(self, sources: Mapping[str, str] | None = None) -> str:
        """Format as `path:line:col: error: message`, the source line, a caret and the notes.

        Control characters from the source (an escape sequence in a string or a comment, a
        file name) are shown as visible symbols, never sent to the terminal as they are.
        """
        if self.span is None:
            lines = [f"error: {printable(self.message)}"]
        else:
            lines = [f"{printable(str(self.span), keep_newlines=False)}: error: {printable(self.message)}"]
            text = (sources or {}).get(self.span.path or "<input>")
            if text is not None:
                lines += _excerpt(text, self.span)
        lines += [f"  note: {printable(n)}" for n in self.notes]
        return "\n".join(lines)


EXCERPT_WIDTH = 100  # the most source characters an excerpt shows of one line

# C0 controls show as their Unicode "control pictures" (ESC as U+241B), DEL as U+2421; C1
# controls and the bidirectional overrides (which can make shown code differ from what is
# parsed) as U+FFFD. Each stays one column wide, so the caret still lines up.
_PICTURES = {c: chr(0x2400 + c) for c in range(0x20)} | {0x7F: "\u2421"}
_PICTURES |= {c: "\ufffd" for c in [*range(0x80, 0xA0), 0x61C, 0x200E, 0x200F, *range(0x202A, 0x202F)]}
_PICTURES |= {c: "\ufffd" for c in range(0x2066, 0x206A)}
_PICTURES[ord("\t")] = " "


def printable(text: str, keep_newlines: bool = True) -> str:
    """`text` safe to print on a terminal: no control characters but newlines (and those
    too with `keep_newlines=False`), tabs as spaces."""
    table = _PICTURES if not keep_newlines else {**_PICTURES, ord("\n"): "\n"}
    return text.translate(table)


def _excerpt(text: str, span: Span) -> list[str]:
    """The span's first source line with a caret underline, numbered like compilers do.

    Lines are counted by `\\n` alone, as the parser counts them (a form feed or a U+2028 in a
    comment does not start a line). A long line is cut to a window around the span.
    """
    source_lines = text.split("\n")
    if not 1 <= span.line <= len(source_lines):
        return []
    line = printable(source_lines[span.line - 1].removesuffix("\r"), keep_newlines=False)
    col = min(span.col, len(line) + 1)
    width = max(1, (span.end_col if span.end_line == span.line else len(line) + 1) - col)
    if len(line) > EXCERPT_WIDTH:  # a window of the line: a few characters before the span, then what fits
        first = max(0, col - 1 - 20)
        shown = line[first : first + EXCERPT_WIDTH]
        lead = "..." if first > 0 else ""
        tail = "..." if first + EXCERPT_WIDTH < len(line) else ""
        col = col - first + len(lead)
        width = min(width, len(shown) + len(lead) + 1 - (col - 1))
        line = lead + shown + tail
    gutter = str(span.line)
    pad = " " * len(gutter)
    return [
        f" {gutter} | {line}",
        f" {pad} | {' ' * (col - 1)}{'^' * max(1, width)}",
    ]


class TTCLError(Exception):
    """Base of all TTCL errors; carries diagnostics and the sources needed to render them."""

    exit_code = 1  # the CLI's exit status: 1 for errors in a program, 2 for usage errors

    def __init__(
        self,
        message: str | list[Diagnostic],
        span: Span | None = None,
        notes: tuple[str, ...] = (),
        sources: Mapping[str, str] | None = None,
    ):
        if isinstance(message, str):
            self.diagnostics = [Diagnostic(message, span, tuple(notes))]
        else:
            self.diagnostics = list(message)
        self.sources = dict(sources or {})
        super().__init__(self.diagnostics[0].message if self.diagnostics else "")

    @property
    def span(self) -> Span | None:
        """The span of the first diagnostic (the one a caller most likely wants to point at)."""
        return self.diagnostics[0].span if self.diagnostics else None

    @property
    def message(self) -> str:
        return self.diagnostics[0].message if self.diagnostics else ""

    def with_sources(self, sources: Mapping[str, str]) -> TTCLError:
        """Attach source texts (path -> text) so rendering can show lines and carets."""
        self.sources = {**sources, **self.sources}
        return self

    def render(self) -> str:
        """All diagnostics, rendered with their source excerpts, separated by blank lines."""
        return "\n\n".join(d.render(self.sources) for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


class SourceError(TTCLError):
    """A file that cannot be a program: missing, a directory, binary, not UTF-8, empty, huge."""

    def __init__(self, message: str, usage: bool = True):
        super().__init__(message)
        self.exit_code = 2 if usage else 1


class ParseError(TTCLError):
    """The text is not in the TTCL grammar."""


class CheckError(TTCLError):
    """The program parses but is wrong: names, arity, types, bins, counts, budget."""


class ArtifactError(TTCLError):
    """A compiled program file (JSON) that is corrupt, tampered with, or from another version."""


class UsageError(TTCLError):
    """A command-line or API call that is wrong independently of any program text."""

    exit_code = 2
