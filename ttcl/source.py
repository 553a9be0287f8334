"""Source text: reading program files (and any JSON) safely, and spans that point back into them.

Every AST node, IR node and diagnostic carries a `Span`, so that an error found at any stage
(checking, lowering, running) can be shown as `path:line:col` with the source line and a caret.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

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

    Missing files, directories, devices, FIFOs and sockets, binary or non-UTF-8 content, empty
    files and files over `max_bytes` are refused before any parsing is attempted.
    """
    return decode_source(read_regular_file(path, max_bytes, kind), str(path))


def read_regular_file(path: str | Path, max_bytes: int, kind: str = "files") -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or `SourceError`.

    Only a regular file is read (`/dev/zero` would never end, a FIFO would block), and never
    more than `max_bytes + 1` bytes, so a file that grows while it is read is refused too.
    The file is opened without blocking and checked again once open, so a FIFO swapped in
    after the first check cannot hang the read either.
    """
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SourceError(f"{p}: no such file") from None
        raise SourceError(f"{p}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SourceError(f"{p}: is a directory, not a program file")
    _refuse_irregular(p, info.st_mode)
    limit = f"{max_bytes / 1e6:g} MB" if max_bytes >= 1_000_000 else f"{max_bytes} bytes"
    too_big = f"{kind} are limited to {limit}"
    if info.st_size > max_bytes:
        shown = f"{info.st_size / 1e6:.1f} MB" if info.st_size >= 100_000 else f"{info.st_size} bytes"
        raise SourceError(f"{p}: file is {shown}; {too_big}", usage=False)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise SourceError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        _refuse_irregular(p, os.fstat(fd).st_mode)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SourceError(f"{p}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise SourceError(f"{p}: {too_big}, and this file holds more", usage=False)
    return b"".join(chunks)


def _refuse_irregular(p: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    )
    what = next((name for test, name in kinds if test(mode)), "a special file")
    raise SourceError(f"{p}: is {what}, not a regular file; only regular files are read")


class NotJSON(ValueError):
    """Why a text cannot be read as JSON; the message is a phrase (`not valid JSON (...)`)
    that a reader puts after what the text should have been."""


def parse_json(data: str | bytes, **options: Any) -> Any:
    """`json.loads(data, **options)`, with every way hostile input makes it fail raised as one
    `NotJSON` saying why. Besides invalid JSON and bytes that are not UTF-8 (ValueErrors),
    Python reads nesting by recursion, so a few thousand `[` raise RecursionError, and an
    integer of over 4300 digits raises a plain ValueError whose advice (a Python setting) is
    not for a user. Errors raised by the `options` hooks pass through as they are."""
    try:
        return json.loads(data, **options)
    except json.JSONDecodeError as e:
        where = "" if e.lineno == 1 else f" at line {e.lineno}"
        raise NotJSON(f"not valid JSON ({e.msg}{where})") from None
    except UnicodeDecodeError:
        raise NotJSON("not UTF-8") from None
    except RecursionError:
        raise NotJSON("JSON nested too deeply to read") from None
    except ValueError as e:
        if type(e) is not ValueError:  # a hook's own error
            raise
        if "integer string conversion" in str(e):
            raise NotJSON("JSON holding an integer of thousands of digits") from None
        raise NotJSON(f"not valid JSON ({e})") from None


def normalize_newlines(text: str) -> str:
    """Every line break as `\\n`: `\\r\\n` (Windows) and a lone `\\r` (old Mac) become one.

    The parser, spans and excerpts all count lines by `\\n`, so a text is normalized once
    before it is parsed and kept in that form wherever its spans are used.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


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
