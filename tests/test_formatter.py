"""The formatter: the identity corpus, idempotence, AST round trips, comments kept."""

import re

import pytest
from conftest import CORPUS, SHIPPED

import ttcl
from ttcl.ast import to_data
from ttcl.formatter import format_float, format_source
from ttcl.parser import parse

ALL = SHIPPED + CORPUS


@pytest.mark.parametrize("path", CORPUS + SHIPPED, ids=lambda p: p.name)
def test_canonical_files_are_unchanged(path):
    text = path.read_text()
    assert format_source(text) == text


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_idempotent_and_same_ast(path):
    text = path.read_text()
    once = format_source(text)
    assert format_source(once) == once
    assert to_data(parse(once), spans=False) == to_data(parse(text), spans=False)


MESSY = """
# lead


model   policy=llama( "smollm2-135m" ,temperature = 0.8)   # t
program main(  ) =sample( 4 )|>vote
strategy s(n:int=2,v:verifier)=sample(n)|>best(v)
program m2 = match difficulty(oracle) { 1..2 => sample(1) |> vote, 3=>sample(2)|>vote # c
  # before
  _ => vote
  }
"""


def test_messy_source_becomes_canonical():
    out = format_source(MESSY)
    assert (
        out
        == """# lead

model policy = llama("smollm2-135m", temperature=0.8)  # t
program main = sample(4) |> vote
strategy s(n: int = 2, v: verifier) = sample(n) |> best(v)
program m2 =
  match difficulty(oracle) {
    1..2 => sample(1) |> vote
    3    => sample(2) |> vote  # c
    # before
    _    => vote
  }
"""
    )
    assert to_data(parse(out), spans=False) == to_data(parse(MESSY), spans=False)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_comment_survives(path):
    text = path.read_text()
    comments = sorted(c.strip() for c in re.findall(r"#[^\n]*", re.sub(r'"""[\s\S]*?"""|"[^"\n]*"', "", text)))
    out = format_source(text)
    assert sorted(c.strip() for c in re.findall(r"#[^\n]*", re.sub(r'"""[\s\S]*?"""|"[^"\n]*"', "", out))) == comments


@pytest.mark.parametrize("x", [0.8, 2.0, 1e12, 1.7e9, 0.0005, 123456.0, 1234567.0, 1e-5, 3.141592653589793])
def test_floats_round_trip_as_floats(x):
    text = format_float(x)
    assert float(text) == x and ("." in text or "e" in text)


def test_strings_round_trip():
    src = (
        'prompt p = """a "quoted" \\\\ text\nwith {question} and a final quote\\""""\n'
        'program main = sample(1, delimiter="\\n\\t\\"x\\"") |> vote\n'
    )
    out = format_source(src)
    assert format_source(out) == out
    assert to_data(parse(out), spans=False) == to_data(parse(src), spans=False)


@pytest.mark.parametrize(
    "messy, canonical",
    [
        ("program m = f([ 0.31,0.45 , ])", "program m = f([0.31, 0.45])"),
        ("program m = f(x = [ ])", "program m = f(x=[])"),
        ("program m = f([ -1, 2*3, [ 1e-3 ] ])", "program m = f([-1, 2 * 3, [0.001]])"),
        ("program m = f([(1 + 2) * 3,\n  4])", "program m = f([(1 + 2) * 3, 4])"),
    ],
)
def test_lists_are_canonical(messy, canonical):
    assert format_source(messy) == canonical + "\n"
    assert format_source(canonical) == canonical + "\n"
    assert to_data(parse(canonical), spans=False) == to_data(parse(messy), spans=False)


def test_list_parse_errors():
    with pytest.raises(ttcl.TTCLError, match="expected an expression or `]`"):
        parse("program m = f([,])")
    with pytest.raises(ttcl.TTCLError, match=r"unexpected end of file"):
        parse("program m = f([0.3, 0.6")
