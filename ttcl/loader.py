"""Loading a program and everything it imports: stdlib modules by name, files by path.

`import "search"` names `stdlib/search.ttcl`; anything with a slash or a `.ttcl` ending is a
file, relative to the importing file. Each file is parsed once however often it is imported;
a cycle or a missing module is a diagnostic on the `import` statement.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ttcl import ast
from ttcl.errors import Diagnostic, SourceError, TTCLError
from ttcl.parser import parse, resource_dir
from ttcl.source import normalize_newlines, read_source


@dataclass
class Workspace:
    """The main module first, then every imported module in load order, and their texts."""

    modules: list[ast.Module] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    errors: list[Diagnostic] = field(default_factory=list)

    @property
    def main(self) -> ast.Module:
        return self.modules[0]


def stdlib_modules() -> list[str]:
    """Names of the stdlib modules, e.g. ['parallel', 'revision', 'search']."""
    return sorted(p.stem for p in resource_dir("stdlib").glob("*.ttcl"))


def load(text: str, path: str | None = None) -> Workspace:
    """Parse `text` and, recursively, every module it imports. Raises on a syntax error in the
    main text; problems with imports are collected in `Workspace.errors`."""
    ws = Workspace()
    text = normalize_newlines(text)  # spans point into the text as parsed; excerpts read this one
    ws.sources[path or "<input>"] = text
    main = parse(text, path)
    ws.modules.append(main)
    key = _key(path) if path else "<input>"
    _load_imports(main, path, ws, stack=[key], seen={key})
    return ws


def _key(path: str) -> str:
    return os.path.realpath(path)  # never raises: a symlink loop is left partly resolved


def _display(path: Path) -> str:
    """A path as users should see it: relative to the working directory when inside it."""
    try:
        return str(Path(_key(str(path))).relative_to(Path(_key(os.getcwd()))))
    except (ValueError, OSError):
        return str(path)


def _load_imports(module: ast.Module, path: str | None, ws: Workspace, stack: list[str], seen: set[str]) -> None:
    """Load what `module` imports, depth first, each file once. Walked with an explicit stack
    (a chain of a thousand files importing each other is no Python recursion); `stack` is the
    chain of files that led here, to name a cycle."""
    todo = [(_imports(module), path, stack)]
    while todo:
        imports, path, stack = todo[-1]
        stmt = next(imports, None)
        if stmt is None:
            todo.pop()
            continue
        target = _resolve(stmt, Path(path).parent if path else Path.cwd(), ws)
        if target is None:
            continue
        key = _key(str(target))
        if key in stack:
            cycle = [Path(k).name for k in stack[stack.index(key) :]] + [Path(key).name]
            ws.errors.append(Diagnostic(f"import cycle: {' -> '.join(cycle)}", stmt.span))
            continue
        if key in seen:
            continue
        seen.add(key)
        shown = _display(target)
        try:
            text = normalize_newlines(read_source(target))
            child = _parse_cached(shown, text)
        except SourceError as e:
            ws.errors.append(Diagnostic(f"cannot import {stmt.path!r}: {e.message}", stmt.span))
            continue
        except TTCLError as e:
            ws.sources.update(e.sources)
            ws.errors.extend(e.diagnostics)
            continue
        ws.sources[shown] = text
        ws.modules.append(child)
        todo.append((_imports(child), shown, stack + [key]))


def _imports(module: ast.Module) -> Iterator[ast.Import]:
    return (s for s in module.statements if isinstance(s, ast.Import))


def _resolve(stmt: ast.Import, base: Path, ws: Workspace) -> Path | None:
    name = stmt.path
    if "/" not in name and not name.endswith(".ttcl"):
        target = resource_dir("stdlib") / f"{name}.ttcl"
        if not target.is_file():
            known = stdlib_modules()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            ws.errors.append(
                Diagnostic(
                    f"no stdlib module {name!r}{hint}",
                    stmt.span,
                    (f'stdlib modules: {", ".join(known)}; import a file with a path like "./{name}.ttcl"',),
                )
            )
            return None
        return target
    target = Path(name) if Path(name).is_absolute() else base / name
    problem = _not_importable(target)
    if problem:
        ws.errors.append(Diagnostic(f"cannot import {name!r}: {problem}", stmt.span))
        return None
    return target


def _not_importable(target: Path) -> str | None:
    """Why a file cannot be imported, or None. Only TTCL source is read: a file whose name (or
    the file a symlink leads to) does not end in `.ttcl` is refused unread, so no error about
    it can show a line of, say, /etc/passwd."""
    try:
        os.stat(target)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"no such file {_display(target)}"
        if e.errno == errno.ELOOP:
            return f"{_display(target)} is a symlink loop"
        return f"{_display(target)}: {e.strerror or e}"
    real = Path(_key(str(target)))
    if target.suffix != ".ttcl" or real.suffix != ".ttcl":
        shown = _display(target) + (f" (a link to {real})" if real.name != target.name else "")
        return f"{shown} is not a .ttcl file; only TTCL source files can be imported"
    if not target.is_file():
        return f"{_display(target)} is not a regular file"
    return None


@lru_cache(maxsize=64)
def _parse_cached(path: str, text: str) -> ast.Module:
    # Keyed by the text, so an edited file is parsed again; stdlib modules parse once per process.
    return parse(text, path)
