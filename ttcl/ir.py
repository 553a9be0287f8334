"""The IR as a document: the schema of a compiled program, and its JSON artifact.

`to_document(graph)` turns a lowered graph into a validated pydantic document;
`from_document(data)` checks one (format, version, checksum, schema, shape) and rebuilds the
graph. An app can ship the JSON artifact and run it without the `.ttcl` source.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, ValidationError

from ttcl.errors import ArtifactError
from ttcl.signatures import ANSWER, POOL, QUESTION, STAGES
from ttcl.source import Span

FORMAT = "ttcl-ir"
VERSION = 1  # bump when the document's meaning changes; older artifacts are then refused
OPS = ("question", "output", "union", "difficulty", "merge") + tuple(STAGES)
Scalar = bool | int | float | str
Value = Scalar | list[float]  # an op's argument: a scalar, or a list (difficulty's thresholds)


class IRNode(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int
    op: Literal[OPS]  # type: ignore[valid-type]
    params: dict[str, Value]
    type: Literal[QUESTION, POOL, ANSWER]  # type: ignore[valid-type]
    span: Span
    generations: int
    origin: tuple[str, ...] = ()


class IREdge(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: int
    target: int
    slot: int = 0
    guard: list[int] | None = None
    probe: bool = False


class IRDocument(BaseModel):
    """A compiled program: its operations, data flow, declarations and static figures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[FORMAT]  # type: ignore[valid-type]
    version: int
    ttcl_version: str
    program: str
    params: dict[str, Scalar]
    models: dict[str, dict[str, Scalar]]
    verifiers: dict[str, dict[str, Scalar]]
    prompts: dict[str, str]
    budgets: dict[str, float]
    generations: int
    nodes: list[IRNode]
    edges: list[IREdge]


def to_document(graph: nx.DiGraph, params: dict[str, Any]) -> IRDocument:
    """The serializable document of a lowered graph."""
    from ttcl.version import __version__

    g = graph.graph
    nodes = [IRNode(id=n, **attrs) for n, attrs in graph.nodes(data=True)]
    edges = [IREdge(source=u, target=v, **attrs) for u, v, attrs in graph.edges(data=True)]
    return IRDocument(
        format=FORMAT,
        version=VERSION,
        ttcl_version=__version__,
        program=g["program"],
        params=params,
        models=g["models"],
        verifiers=g["verifiers"],
        prompts=g["prompts"],
        budgets=g["budgets"],
        generations=g["generations"],
        nodes=nodes,
        edges=edges,
    )


def to_graph(doc: IRDocument) -> nx.DiGraph:
    """The networkx graph of a document (node attributes as lowering makes them)."""
    graph = nx.DiGraph(
        program=doc.program,
        models=doc.models,
        verifiers=doc.verifiers,
        prompts=doc.prompts,
        budgets=doc.budgets,
        generations=doc.generations,
    )
    for node in doc.nodes:
        graph.add_node(node.id, **node.model_dump(exclude={"id", "span"}), span=node.span)
    for edge in doc.edges:
        attrs: dict[str, Any] = {"slot": edge.slot}
        attrs.update({"guard": edge.guard} if edge.guard is not None else {})
        attrs.update({"probe": True} if edge.probe else {})
        graph.add_edge(edge.source, edge.target, **attrs)
    return graph


def checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dumps(doc: IRDocument) -> str:
    """The JSON artifact: the document plus a checksum over its canonical JSON."""
    data = doc.model_dump(mode="json")
    data["checksum"] = checksum(data)
    return json.dumps(data, indent=1) + "\n"


def loads(text: str, name: str = "<artifact>") -> IRDocument:
    """Read an artifact, refusing a corrupt, tampered, version-mismatched or malformed one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{name}: not a compiled TTCL program (invalid JSON at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f'{name}: not a compiled TTCL program (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise ArtifactError(
            f"{name}: compiled for IR version {data.get('version')!r}, but this TTCL "
            f"reads version {VERSION}; compile the program again"
        )
    if data.get("checksum") != checksum(data):
        raise ArtifactError(f"{name}: checksum mismatch: the artifact was modified after it was compiled")
    data.pop("checksum")
    try:
        doc = IRDocument.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ArtifactError(f"{name}: malformed artifact at {where}: {first['msg']}") from None
    _check_shape(doc, name)
    return doc


def _check_shape(doc: IRDocument, name: str) -> None:
    ids = {n.id for n in doc.nodes}
    if len(ids) != len(doc.nodes):
        raise ArtifactError(f"{name}: malformed artifact: duplicate node ids")
    if any(e.source not in ids or e.target not in ids for e in doc.edges):
        raise ArtifactError(f"{name}: malformed artifact: an edge names a missing node")
    if [n.op for n in doc.nodes].count("question") != 1 or [n.op for n in doc.nodes].count("output") != 1:
        raise ArtifactError(f"{name}: malformed artifact: needs exactly one question and one output node")
    if not nx.is_directed_acyclic_graph(nx.DiGraph([(e.source, e.target) for e in doc.edges])):
        raise ArtifactError(f"{name}: malformed artifact: the graph has a cycle")
    tables: dict[str, dict[str, Any]] = {"model": doc.models, "v": doc.verifiers, "prompt": doc.prompts}
    for node in doc.nodes:
        for key, table in tables.items():
            if key in node.params and node.params[key] not in table:
                raise ArtifactError(
                    f"{name}: malformed artifact: node {node.id} names an undeclared "
                    f"{'verifier' if key == 'v' else key} {node.params[key]!r}"
                )
