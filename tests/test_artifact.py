"""Compiled artifacts: a program saved as JSON loads back to the same IR; bad ones are refused."""

import json

import pytest

import ttcl
from ttcl.draw import to_text
from ttcl.errors import ArtifactError
from ttcl.ir import checksum


@pytest.fixture
def artifact(tmp_path):
    prog = ttcl.load("programs/per_difficulty.ttcl")
    path = tmp_path / "prog.json"
    prog.save(path)
    return prog, path


def test_round_trip(artifact):
    prog, path = artifact
    loaded = ttcl.load(path)
    assert loaded.ir == prog.ir
    assert loaded.ast is None
    a, b = prog.graph, loaded.graph
    assert dict(a.nodes(data=True)) == dict(b.nodes(data=True))
    assert sorted(a.edges(data=True)) == sorted(b.edges(data=True))
    assert a.graph == b.graph


def _rewrite(path, change, fix_checksum=False):
    data = json.loads(path.read_text())
    change(data)
    if fix_checksum:
        data["checksum"] = checksum(data)
    path.write_text(json.dumps(data))


def test_tampered_artifact_is_refused(artifact):
    _, path = artifact
    _rewrite(path, lambda d: d["nodes"][2]["params"].update(k=1000))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        ttcl.load(path)


def test_other_version_is_refused(artifact):
    _, path = artifact
    _rewrite(path, lambda d: d.update(version=99), fix_checksum=True)
    with pytest.raises(ArtifactError, match="IR version 99"):
        ttcl.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["nodes"][1].update(op="teleport"), "malformed artifact at nodes.1.op"),
        (lambda d: d["edges"].append({"source": 0, "target": 999, "slot": 0}), "missing node"),
        (lambda d: d["edges"].append({"source": 16, "target": 0, "slot": 0}), "cycle"),
        (lambda d: d["nodes"][2]["params"].update(model="ghost"), "undeclared model 'ghost'"),
        (lambda d: d.update(extra=1), "malformed artifact at extra"),
    ],
)
def test_malformed_artifact_is_refused(artifact, change, message):
    _, path = artifact
    _rewrite(path, change, fix_checksum=True)
    with pytest.raises(ArtifactError, match=message):
        ttcl.load(path)


@pytest.mark.parametrize(
    "text, message", [("{not json", "not valid JSON"), ('{"a": 1}', "not a compiled TTCL program")]
)
def test_not_an_artifact(tmp_path, text, message):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(ArtifactError, match=message):
        ttcl.load(path)


def test_an_artifact_binds_its_parameters_again_from_the_sources_it_carries(artifact):
    prog, path = artifact
    loaded = ttcl.load(path)
    assert loaded.bind(budget=4).ir == prog.bind(budget=4).ir == ttcl.load(path, params={"budget": 4}).ir
    with pytest.raises(ttcl.TTCLError, match="has no parameter `n`; its parameters: budget"):
        loaded.bind(n=4)


def test_an_artifact_keeps_its_settings_when_bound_again(tmp_path):
    prog = ttcl.load("programs/bon.ttcl", settings=["policy.max_tokens=64"])
    prog.save(tmp_path / "p.json")
    again = ttcl.load(tmp_path / "p.json").bind(n=3)
    assert again.ir == prog.bind(n=3).ir and again.ir.models["policy"]["max_tokens"] == 64


def test_an_artifact_without_its_sources_has_fixed_parameters(artifact):
    _, path = artifact
    _rewrite(path, lambda d: d.pop("sources"), fix_checksum=True)
    loaded = ttcl.load(path)  # as artifacts written before they carried sources: still run
    with pytest.raises(ttcl.TTCLError, match="without its source, so its parameters are fixed"):
        loaded.bind(budget=4)


def test_round_trip_keeps_difficulty_thresholds(tmp_path):
    src = (
        'verifier prm = check("arith")\nprogram main =\n'
        "  match difficulty(prm, probe=4, thresholds=[0.31, 0.45, 0.58, 0.72]) {\n"
        "    1..2 => sample(4) |> best(prm)\n    3..5 => beam(16, prm, width=4) |> best(prm)\n  }\n"
    )
    prog = ttcl.compile(src)
    path = tmp_path / "fitted.json"
    prog.save(path)
    data = json.loads(path.read_text())
    head = next(n for n in data["nodes"] if n["op"] == "difficulty")
    assert head["params"]["thresholds"] == [0.31, 0.45, 0.58, 0.72] and head["params"]["bins"] == 5
    loaded = ttcl.load(path)
    assert loaded.ir == prog.ir
    assert dict(loaded.graph.nodes(data=True)) == dict(prog.graph.nodes(data=True))
    assert "thresholds=[0.31, 0.45, 0.58, 0.72]" in to_text(loaded.graph)  # as `ttcl graph` shows it


def test_malformed_thresholds_are_refused(tmp_path):
    src = 'verifier prm = check("arith")\nprogram main = match difficulty(prm, thresholds=[0.5]) { _ => sample(1) |> vote }\n'
    path = tmp_path / "fitted.json"
    ttcl.compile(src).save(path)
    _rewrite(path, lambda d: d["nodes"][1]["params"].update(thresholds=["high"]), fix_checksum=True)
    with pytest.raises(ArtifactError, match="malformed artifact at nodes.1.params.thresholds"):
        ttcl.load(path)
