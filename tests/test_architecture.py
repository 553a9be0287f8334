"""The code's habits, held by the test command: the import layers and no cycles
(`lint-imports`, contracts in pyproject.toml), ruff's lint and format, mypy, no module that
imports another's private name, and no long module without a reason at its top."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted((ROOT / "ttcl").rglob("*.py"))
LONG = 500  # lines; a longer module says at its top why it stays whole


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize(
    "command",
    [
        ["lint-imports"],
        ["ruff", "check", "ttcl", "tests", "bench"],
        ["ruff", "format", "--check", "ttcl", "tests", "bench"],
        ["mypy"],
    ],
    ids=["import-layers", "ruff-check", "ruff-format", "mypy"],
)
def test_the_code_passes(command):
    run = subprocess.run([tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ttcl"):
                found += [
                    f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found


def test_a_long_module_says_why_at_its_top():
    unexplained = []
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LONG and "Why one module:" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained
