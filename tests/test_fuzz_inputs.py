"""Hypothesis properties for every input that is not a program (tests/test_fuzz.py has those):
mutated artifacts, dataset lines, results files and served replies. Each asserts that only
TTCL's own error escapes (a `TTCLError`, or the served reply's `MalformedReply` that the
backend turns into one) and, through a deadline, that nothing hangs. TTCL_FUZZ=N runs more."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ttcl
from ttcl import ir
from ttcl.backends.remote import MalformedReply, _parse_json, checked_reply
from ttcl.eval.datasets import read_jsonl
from ttcl.eval.evaluate import Eval

EXAMPLES = int(os.environ.get("TTCL_FUZZ", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

ARTIFACT = json.loads(
    ttcl.compile(
        'import "search"\nverifier v = self_verify(policy)\nmodel policy = llama("smollm2-135m")\n'
        "program main = match difficulty(v, probe=2, bins=2) { 1 => sample(4) |> vote\n 2 => beam_search(4, v, width=2) }"
    ).to_json()
)


def paths(value, at=()):
    """Every place in a JSON document, as a tuple of keys and indexes."""
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*at, i))


PLACES = [p for p in paths(ARTIFACT) if p and p[0] != "checksum"]


def reseal(data: dict) -> str:
    data.pop("checksum", None)
    data["checksum"] = ir.checksum(data)
    return json.dumps(data)


@FUZZ
@given(place=st.sampled_from(PLACES), value=json_values, delete=st.booleans())
def test_a_mutated_resealed_artifact_loads_or_is_an_artifact_error(place, value, delete):
    data = json.loads(json.dumps(ARTIFACT))
    parent = data
    for key in place[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        parent.pop(place[-1], None)
    else:
        parent[place[-1]] = value
    try:
        ir.loads(reseal(data))
    except ttcl.TTCLError:
        pass


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=60), json_values.map(json.dumps)), min_size=1, max_size=5))
def test_a_dataset_file_reads_or_is_a_clear_error(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    for strict in (False, True):
        try:
            read_jsonl(str(path), strict=strict)
        except ttcl.TTCLError:
            pass


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=60), json_values.map(json.dumps)), min_size=1, max_size=4))
def test_a_results_file_resumes_or_is_a_clear_error(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("results") / "r.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        Eval(path, [{"question": "What is 1 + 1?", "answer": "2"}], resume=True)
    except ttcl.TTCLError:
        pass


@FUZZ
@given(
    body=st.one_of(json_values.map(json.dumps), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))),
    chat=st.booleans(),
    n=st.integers(1, 4),
)
def test_a_served_reply_is_read_or_is_a_malformed_reply(body, chat, n):
    try:
        checked_reply(_parse_json(body.encode("utf-8", "surrogatepass")), chat, n)
    except MalformedReply:
        pass


def test_a_reply_of_the_right_shape_is_read():
    reply = {
        "choices": [{"index": 0, "text": "The answer is 4.", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }
    assert checked_reply(reply, False, 1)["choices"][0]["text"] == "The answer is 4."
    with pytest.raises(MalformedReply):
        checked_reply({"choices": ["x"]}, False, 1)
