"""Pass fixtures, after sqlglot's tests/fixtures/optimizer/<rule>.sql: `fixtures/passes/NAME.ttcl`
holds the cases of the pass `ttcl.passes.NAME`, each run through that pass alone.

A fixture file is a header (comments, ignored) and then cases:

    # --- case_name
    <before: TTCL source that checks clean: declarations and one or more programs>
    # =>
    <after: each program of before, rewritten by the pass, in the formatter's canonical form>

A case starts at a line `# --- NAME` (NAME is its test id, `PASS/NAME`) and its before ends at
the line `# =>`. Every program of the before is rewritten by the pass, with its parameters
bound to their defaults as `ttcl.program.build` binds them, and printed by the formatter
(`format_statement`); the after is those programs in order. Declarations other than programs
are context and are not repeated; comments are not carried over. Where the pass must reject the
program, the after is the rendered error (`<input>:LINE:COL: error: MESSAGE` and its caret).
A case whose after is its before's program, formatted, is one the pass must leave unchanged.

Set TTCL_REGEN=1 to rewrite every after from what the passes give now, then review the diff.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from ttcl import TTCLError, ast, passes
from ttcl.formatter import format_statement
from ttcl.passes import PASSES, PassContext
from ttcl.program import bind_params, check_source

FIXTURES = Path(__file__).parent / "fixtures" / "passes"
CASE = "# --- "
ARROW = "# =>"


@dataclass
class Case:
    name: str
    before: str
    after: str


def read_fixture(path: Path) -> tuple[str, list[Case]]:
    """The header and the cases of a fixture file."""
    header, cases, part = [], [], None
    for line in path.read_text().splitlines():
        if line.startswith(CASE):
            cases.append(Case(line[len(CASE) :].strip(), "", ""))
            part = "before"
        elif line.strip() == ARROW and part == "before":
            part = "after"
        elif part is None:
            header.append(line)
        else:
            setattr(cases[-1], part, getattr(cases[-1], part) + line + "\n")
    for case in cases:
        case.before, case.after = case.before.strip("\n").rstrip(), case.after.strip("\n").rstrip()
    return "\n".join(header).strip("\n"), cases


def write_fixture(path: Path, header: str, cases: list[Case]) -> None:
    parts = [header + "\n"] if header else []
    parts += [f"{CASE}{c.name}\n{c.before}\n{ARROW}\n{c.after}\n" for c in cases]
    path.write_text("\n".join(parts))


def rewrite(pass_name: str, before: str) -> str:
    """Each program of `before` rewritten by the pass alone, formatted; or the rendered error."""
    rule = getattr(passes, pass_name)
    checked = check_source(before)
    kinds = {bool: ast.Bool, int: ast.Int, float: ast.Float, str: ast.Str}
    out = []
    for decl in checked.programs:  # every parameter needs a default: a fixture names no values
        values = bind_params(decl, {})
        bindings = {k: kinds[type(v)](span=decl.span, value=v) for k, v in values.items()}
        try:
            snapshot = decl.body.model_dump()
            body = rule(decl.body, PassContext(checked.definitions, bindings))
            assert decl.body.model_dump() == snapshot, f"{pass_name} changed its input"
        except TTCLError as e:
            return e.with_sources(checked.workspace.sources).render()
        out.append("\n".join(format_statement(decl.model_copy(update={"body": body}))))
    return "\n".join(out)


def unchanged(before: str) -> str:
    """The programs of `before`, formatted as they are."""
    return "\n".join("\n".join(format_statement(d)) for d in check_source(before).programs)


PARAMS = [
    pytest.param(path, case.name, id=f"{path.stem}/{case.name}")
    for path in sorted(FIXTURES.glob("*.ttcl"))
    for case in read_fixture(path)[1]
]


@pytest.mark.parametrize("path, name", PARAMS)
def test_pass_fixture(path, name):
    header, cases = read_fixture(path)
    case = next(c for c in cases if c.name == name)
    got = rewrite(path.stem, case.before)
    if os.environ.get("TTCL_REGEN"):
        case.after = got
        write_fixture(path, header, cases)
    assert got == case.after


def test_every_pass_has_fixtures():
    """Each pass has a fixture file of at least five cases, one of them leaving its program
    unchanged and at least one changing it; every fixture file names a pass."""
    names = {p.__name__ for p in PASSES}
    assert {p.stem for p in FIXTURES.glob("*.ttcl")} == names
    for name in names:
        _, cases = read_fixture(FIXTURES / f"{name}.ttcl")
        assert len(cases) >= 5, name
        assert len({c.name for c in cases}) == len(cases), f"{name}: duplicate case names"
        same = [c.after == unchanged(c.before) for c in cases]
        assert any(same) and not all(same), name


def test_fixture_files_round_trip(tmp_path):
    """Reading and writing a fixture gives back its text, so TTCL_REGEN only touches afters."""
    for path in sorted(FIXTURES.glob("*.ttcl")):
        write_fixture(tmp_path / path.name, *read_fixture(path))
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name
