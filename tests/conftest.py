"""Shared helpers for the test suite."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "stdlib").glob("*.ttcl")) + sorted((ROOT / "programs").glob("*.ttcl"))
CORPUS = sorted((ROOT / "tests" / "corpus").glob("*.ttcl"))


def check_text(text: str, path: str = "t.ttcl"):
    """Check source text the way `ttcl check` does; returns the compiled programs."""
    from ttcl.program import check_programs, check_source

    return check_programs(check_source(text, path))


@pytest.fixture
def errors_of():
    """The rendered error text of a program, or None if it checks clean."""
    from ttcl import TTCLError

    def run(text: str, path: str = "t.ttcl") -> str | None:
        try:
            check_text(text, path)
        except TTCLError as e:
            return e.render()
        return None

    return run


@pytest.fixture(autouse=True)
def _run_from_the_repository_root(monkeypatch):
    """Tests name files like `programs/beam.ttcl`, relative to the repository root."""
    monkeypatch.chdir(ROOT)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip at once where torch sees no GPU (not after loading a model)."""
    gpu = [item for item in items if item.get_closest_marker("cuda")]
    if not gpu:
        return
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU"))
