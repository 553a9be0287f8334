"""Golden error messages: each `golden/errors/NAME.ttcl` must fail with exactly the text in
`NAME.err` (positions, source line and caret included). Set TTCL_REGEN=1 to rewrite the
expectations after a deliberate change, then review the diff."""

import os
from pathlib import Path

import pytest

from ttcl import TTCLError
from ttcl.program import check_programs, check_source

GOLDEN = Path(__file__).parent / "golden" / "errors"
CASES = sorted(p.stem for p in GOLDEN.glob("*.ttcl"))


@pytest.mark.parametrize("name", CASES)
def test_golden_error(name, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    path = f"{name}.ttcl"
    with pytest.raises(TTCLError) as info:
        check_programs(check_source(Path(path).read_text(), path))
    rendered = info.value.render() + "\n"
    expected = GOLDEN / f"{name}.err"
    if os.environ.get("TTCL_REGEN"):
        expected.write_text(rendered)
    assert rendered == expected.read_text()


def test_every_error_has_a_span_inside_its_file(monkeypatch):
    monkeypatch.chdir(GOLDEN)
    for name in CASES:
        text = Path(f"{name}.ttcl").read_text()
        with pytest.raises(TTCLError) as info:
            check_programs(check_source(text, f"{name}.ttcl"))
        for d in info.value.diagnostics:
            assert d.span is not None, (name, d.message)
            source = info.value.sources[d.span.path]
            assert 0 <= d.span.start <= d.span.end <= len(source), (name, d.message)
