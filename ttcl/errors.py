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
        """Format as `path:line:col: error: message`, the source line, a caret and the notes."""
        if self.span is None:
            lines = [f"error: {self.message}"]
        else:
            lines = [f"{self.span}: error: {self.message}"]
            text = (sources or {}).get(self.span.path or "<input>")
            if text is not None:
                lines += _excerpt(text, self.span)
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _excerpt(text: str, span: Span) -> list[str]:
    """The span's first source line with a caret underline, numbered like compilers do."""
    source_lines = text.splitlines() or [""]
    if not 1 <= span.line <= len(source_lines):
        return []
    line = source_lines[span.line - 1].expandtabs(1)
    width = (span.end_col if span.end_line == span.line else len(line) + 1) - span.col
    gutter = str(span.line)
    pad = " " * len(gutter)
    return [
        f" {gutter} | {line}",
        f" {pad} | {' ' * (span.col - 1)}{'^' * max(1, width)}",
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
