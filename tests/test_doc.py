"""`ttcl doc`: every built-in and stdlib strategy with its options, read from the signatures
table and the stdlib; docs/language.md's reference tables are its Markdown (`TTCL_REGEN=1`
rewrites them for review)."""

import os
from pathlib import Path

import pytest

from ttcl.cli.app import main
from ttcl.cli.doc import SECTIONS, docs, formula, update_markdown
from ttcl.loader import stdlib_modules
from ttcl.parser import parse, resource_dir
from ttcl.signatures import ANSWERS, DIFFICULTY, MODELS, REQUIRED, STAGES, VERIFIERS

LANGUAGE = Path(__file__).resolve().parent.parent / "docs" / "language.md"
TABLES = {"primitives": [*STAGES.values(), DIFFICULTY], "models": MODELS, "verifiers": VERIFIERS, "answers": ANSWERS}


def doc(capsys, *argv):
    code = main(["doc", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_parameter_of_the_signatures_table_has_a_meaning():
    missing = [
        f"{sig.name}.{p.name}"
        for table in TABLES.values()
        for sig in (table.values() if isinstance(table, dict) else table)
        for p in sig.params
        if not p.doc
    ]
    assert not missing


def test_everything_is_documented_once_per_section():
    found = {(d.section, d.name) for d in docs()}
    for section, table in TABLES.items():
        names = table if isinstance(table, dict) else [s.name for s in table]
        assert {(section, name) for name in names} <= found
    strategies = [
        s.name
        for m in stdlib_modules()
        for s in parse((resource_dir("stdlib") / f"{m}.ttcl").read_text()).statements
        if type(s).__name__ == "StrategyDecl"
    ]
    assert sorted(d.name for d in docs() if d.section == "strategies") == sorted(strategies)
    assert all(d.summary for d in docs())  # a stdlib strategy without a comment above it would show none


def test_one_built_in_shows_each_option_with_its_type_default_limits_and_meaning(capsys):
    code, out, _ = doc(capsys, "llama")
    assert code == 0 and "a GGUF model run by llama.cpp" in out
    for p in MODELS["llama"].params:
        line = next(line for line in out.splitlines() if line.split()[:1] == [p.name])
        assert p.type in line and ("required" in line if p.default is REQUIRED else str(p.default) in line)
    assert "1 to 1,000,000" in out and "sampling temperature" in out


def test_a_strategy_shows_its_definition_and_its_comment(capsys):
    code, out, _ = doc(capsys, "beam_search")
    assert code == 0 and 'strategy (stdlib "search")' in out
    assert "beam_search(n: int, v: verifier, width: int = 4) = beam(n, v, width=width) |> weighted_vote(v)" in out
    assert "The paper uses width 4 or sqrt(n)" in out


def test_a_name_of_two_kinds_shows_both_and_a_section_shows_all_of_it(capsys):
    code, out, _ = doc(capsys, "registered")
    assert code == 0 and "register_verifier" in out and "register_answer" in out
    code, out, _ = doc(capsys, "verifiers")
    assert code == 0 and all(name in out for name in VERIFIERS)
    code, out, _ = doc(capsys)
    assert code == 0 and all(f"── {section} ──" in out for section in SECTIONS)
    assert "list[float]" in out  # a type, not rich markup


def test_an_unknown_name_gets_a_suggestion(capsys):
    code, _, err = doc(capsys, "lama")
    assert code == 2 and "no built-in, stdlib strategy or section `lama`; did you mean `llama`?" in err


def test_generation_counts_read_as_formulas():
    assert formula(STAGES["lookahead"].generations) == "n·(k + 1)"
    assert formula(STAGES["sample"].generations) == "n" and formula(STAGES["vote"].generations) == "0"


def test_markdown(capsys):
    code, out, _ = doc(capsys, "models", "--markdown")
    assert code == 0 and out.startswith("`llama(path, ...)`: a GGUF model run by llama.cpp")
    assert "| `max_tokens` | int | `256` | 1 to 1,000,000 | the most tokens an answer may have |" in out
    code, out, _ = doc(capsys, "--markdown")
    assert code == 0 and all(f"### {section}" in out for section in SECTIONS)


def test_the_language_reference_tables_are_the_generated_ones():
    text = LANGUAGE.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"<!-- generated: ttcl doc {section}," in text and f"<!-- end: ttcl doc {section} -->" in text
    fresh = update_markdown(text)
    if os.environ.get("TTCL_REGEN") and fresh != text:
        LANGUAGE.write_text(fresh, encoding="utf-8")
        pytest.skip("docs/language.md regenerated; review the diff")
    assert fresh == text, "docs/language.md is out of date: TTCL_REGEN=1 pytest tests/test_doc.py rewrites it"
