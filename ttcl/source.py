"""Source text: reading program files safely, and spans that point back into them.

Every AST node, IR node and diagnostic carries a `Span`, so that an error found at any stage
(checking, lowering, running) can be shown as `path:line:col` with the source line and a caret.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ttcl.errors import SourceError, UsageError

MAX_SOURCE_BYTES = 1_000_000  # a TTCL program is a few kilobytes; refuse what cannot be one
MAX_ARTIFACT_BYTES = 64_000_000  # a compiled program of the largest allowed graph fits well


class Span(BaseModel):
    """A region of a source file: 1-based line and column, 0-based character offsets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str | None = None
    line: int
    col: int
    end_line: int
    end_col: int
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.path or '<input>'}:{self.line}:{self.col}"


def read_source(path: str | Path, max_bytes: int = MAX_SOURCE_BYTES, kind: str = "program files") -> str:
    """Read a program file (or a compiled artifact) as UTF-8 text, or raise `SourceError`
    with a one-line reason.

    Missing files, directories, binary or non-UTF-8 content, empty files and files over
    `max_bytes` are refused before any parsing is attempted.
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file")
    if p.is_dir():
        raise SourceError(f"{p}: is a directory, not a program file")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise SourceError(
                f"{p}: file is {size / 1e6:.1f} MB; {kind} are limited to {max_bytes // 1_000_000} MB",
                usage=False,
            )
        data = p.read_bytes()
    except OSError as e:
        raise SourceError(f"{p}: cannot read: {e.strerror or e}") from None
    return decode_source(data, str(p))


def decode_source(data: bytes, name: str) -> str:
    """Decode the bytes of a program, refusing binary, non-UTF-8 and empty content."""
    if b"\0" in data:
        raise SourceError(f"{name}: is a binary file, not a TTCL program", usage=False)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{name}: is not UTF-8 text (invalid byte at offset {e.start})", usage=False) from None
    if not text.strip():
        raise SourceError(f"{name}: file is empty", usage=False)
    return text.removeprefix("\ufeff")


def write_text(path: str | Path, text: str) -> None:
    """Write a file the user named; a failure is a one-line `UsageError`, not a traceback."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from None
