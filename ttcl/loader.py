"""Loading a program and everything it imports: stdlib modules by name, files by path.

`import "search"` names `stdlib/search.ttcl`; anything with a slash or a `.ttcl` ending is a
file, relative to the importing file. Each file is parsed once however often it is imported;
a cycle or a missing module is a diagnostic on the `import` statement.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ttcl import ast
from ttcl.errors import Diagnostic, SourceError, TTCLError
from ttcl.parser import parse, resource_dir
from ttcl.source import read_source


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
    ws.sources[path or "<input>"] = text
    main = parse(text, path)
    ws.modules.append(main)
    key = _key(path) if path else "<input>"
    _load_imports(main, path, ws, stack=[key], seen={key})
    return ws


def _key(path: str) -> str:
    return os.path.realpath(path)


def _display(path: Path) -> str:
    """A path as users should see it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _load_imports(module: ast.Module, path: str | None, ws: Workspace, stack: list[str], seen: set[str]) -> None:
    base = Path(path).parent if path else Path.cwd()
    for stmt in module.statements:
        if not isinstance(stmt, ast.Import):
            continue
        target = _resolve(stmt, base, ws)
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
            text = read_source(target)
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
        _load_imports(child, shown, ws, stack + [key], seen)


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
    if not target.is_file():
        ws.errors.append(Diagnostic(f"cannot import {name!r}: no such file {_display(target)}", stmt.span))
        return None
    return target


@lru_cache(maxsize=64)
def _parse_cached(path: str, text: str) -> ast.Module:
    # Keyed by the text, so an edited file is parsed again; stdlib modules parse once per process.
    return parse(text, path)
