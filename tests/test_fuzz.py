"""Property tests: whatever text goes in, only `TTCLError` comes out, with spans inside it."""

from conftest import CORPUS, SHIPPED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttcl import TTCLError
from ttcl.formatter import format_source
from ttcl.program import check_programs, check_source

SEEDS = [p.read_text() for p in SHIPPED + CORPUS]
TOKENS = [
    "program",
    "strategy",
    "model",
    "verifier",
    "prompt",
    "budget",
    "import",
    "match",
    "difficulty",
    "sample",
    "vote",
    "best",
    "weighted_vote",
    "beam",
    "lookahead",
    "dvts",
    "revise",
    "oracle",
    "prm",
    "policy",
    "main",
    "n",
    "(",
    ")",
    "{",
    "}",
    ",",
    "=",
    "=>",
    "..",
    "|>",
    "+",
    "-",
    "*",
    "/",
    "%",
    ":",
    "_",
    "0",
    "1",
    "4",
    "16",
    "1e9",
    "2.5",
    '"x"',
    '"""t {question}"""',
    "#c\n",
    "\n",
    " ",
    "int",
    "verifier",
    "true",
    "generations",
    "-99999999999999999999",
]
SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("TTCL_FUZZ", 250)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def assert_only_ttcl_errors(text: str) -> None:
    path = "fuzz.ttcl"
    try:
        check_programs(check_source(text, path))
    except TTCLError as e:
        assert e.diagnostics
        for d in e.diagnostics:
            assert d.span is not None, d.message
            source = e.sources[d.span.path or "<input>"]
            assert 0 <= d.span.start <= d.span.end <= len(source), (d.message, d.span)
            assert 1 <= d.span.line <= source.count("\n") + 2
        e.render()  # rendering never fails either


@SETTINGS
@given(st.text(max_size=300))
def test_random_text(text):
    assert_only_ttcl_errors(text)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_random_token_soup(text):
    assert_only_ttcl_errors(text)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 30)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        token = draw(st.sampled_from(TOKENS))
        text = {
            "delete": text[:i] + text[j:],
            "insert": text[:i] + token + text[i:],
            "replace": text[:i] + token + text[j:],
            "duplicate": text[:j] + text[i:j] + text[j:],
        }[kind]
    return text


@SETTINGS
@given(mutated())
def test_mutated_programs(text):
    assert_only_ttcl_errors(text)


@SETTINGS
@given(mutated())
def test_formatter_on_whatever_parses(text):
    try:
        once = format_source(text)
    except TTCLError:
        return
    assert format_source(once) == once
