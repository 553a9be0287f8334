"""The IR as a document: the schema of a compiled program, and its JSON artifact.

`to_document(graph)` turns a lowered graph into a validated pydantic document;
`from_document(data)` checks one (format, version, checksum, schema, shape) and rebuilds the
graph. An app can ship the JSON artifact and run it without the `.ttcl` source; the artifact
carries that source all the same (`sources`), so its parameters can be bound again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, cast

import networkx as nx
from pydantic import BaseModel, ConfigDict, ValidationError

from ttcl.checker import BUDGET_UNITS, PROMPT_HOLES
from ttcl.errors import ArtifactError
from ttcl.lower import MAX_NODES
from ttcl.signatures import (
    ANSWER,
    ANSWERS,
    BUILTIN_VERIFIERS,
    DEFAULT_ANSWER,
    DIFFICULTY,
    MAX_BINS,
    MAX_COUNT,
    MODELS,
    POOL,
    QUESTION,
    REQUIRED,
    STAGES,
    VERIFIERS,
    Param,
    Signature,
    describe,
    step_level,
)
from ttcl.source import NotJSON, Span, parse_json

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
    answer: dict[str, Scalar] = {"kind": "number"}  # how final answers are read and compared
    budgets: dict[str, float]
    generations: int
    nodes: list[IRNode]
    edges: list[IREdge]
    # The texts the program was compiled from, by the names its spans and errors use: its
    # file first, then each file it imports (the stdlib too) in load order, and its `--set`
    # settings last. `Program.bind` compiles them again with other parameters; an artifact
    # written before TTCL kept them has none.
    sources: dict[str, str] = {}


def to_document(graph: nx.DiGraph, params: dict[str, Any], sources: dict[str, str] | None = None) -> IRDocument:
    """The serializable document of a lowered graph (and of the sources it was compiled from)."""
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
        answer=g.get("answer", DEFAULT_ANSWER),
        budgets=g["budgets"],
        generations=g["generations"],
        nodes=nodes,
        edges=edges,
        sources=sources or {},
    )


def to_graph(doc: IRDocument) -> nx.DiGraph:
    """The networkx graph of a document (node attributes as lowering makes them)."""
    graph = nx.DiGraph(
        program=doc.program,
        models=doc.models,
        verifiers=doc.verifiers,
        prompts=doc.prompts,
        answer=doc.answer,
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
    """Read an artifact, refusing a corrupt, tampered, version-mismatched or malformed one.

    The checksum only shows the file is as some writer left it, so everything the rest of
    TTCL relies on is checked again: sizes, the graph's shape, every node's parameters
    against the signatures and every declaration it names (see `validate`)."""
    try:
        data = parse_json(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (NotJSON, _NotJSONNumber) as e:
        raise ArtifactError(f"{name}: not a compiled TTCL program: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f'{name}: not a compiled TTCL program (no "format": "{FORMAT}")')
    if data.get("version") != VERSION:
        raise ArtifactError(
            f"{name}: compiled for IR version {data.get('version')!r}, but this TTCL "
            f"reads version {VERSION}; compile the program again"
        )
    _check_size(data, name)
    try:
        if data.get("checksum") != checksum(data):
            raise ArtifactError(f"{name}: checksum mismatch: the artifact was modified after it was compiled")
        data.pop("checksum")
        doc = IRDocument.model_validate(data)
    except RecursionError:
        raise ArtifactError(f"{name}: malformed artifact: nested too deeply") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ArtifactError(f"{name}: malformed artifact at {where}: {first['msg']}") from None
    validate(doc, name)
    return doc


# ---- validation: what lowering guarantees, checked again for a document from a file -------

MAX_EDGES = 4 * MAX_NODES  # lowering makes about one edge per node, two where arms join
MAX_GENERATIONS = MAX_NODES * MAX_COUNT * 101  # no lowered program can count more


class _NotJSONNumber(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSONNumber(f"the number {text[:20]} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise _NotJSONNumber(f"{text} is not a number TTCL writes")


def _check_size(data: dict, name: str) -> None:
    """Refuse a graph larger than the compiler makes before anything is built from it."""
    nodes, edges = data.get("nodes"), data.get("edges")
    if isinstance(nodes, list) and len(nodes) > MAX_NODES:
        raise ArtifactError(
            f"{name}: the program has {len(nodes)} operations; compiled programs are limited to "
            f"{MAX_NODES}, as the compiler limits them"
        )
    if isinstance(edges, list) and len(edges) > MAX_EDGES:
        raise ArtifactError(f"{name}: malformed artifact: {len(edges)} edges, more than any compiled program has")


def validate(doc: IRDocument, name: str = "<artifact>") -> None:
    """Check a document as thoroughly as lowering made it: raise `ArtifactError` naming the
    first problem, so nothing downstream (drawing, costing, running) meets a value it cannot
    handle."""
    bad = _Problems(name)
    _check_declarations(doc, bad)
    graph = _check_shape(doc, bad)
    for node in doc.nodes:
        _check_node(doc, graph, node, bad)
    for edge in doc.edges:
        _check_edge(graph, edge, bad)


@dataclass
class _Problems:
    name: str

    def __call__(self, message: str) -> NoReturn:
        raise ArtifactError(f"{self.name}: malformed artifact: {message}")


def _check_shape(doc: IRDocument, bad: _Problems) -> nx.DiGraph:
    """The node ids, the edges and the graph they make: a DAG from one question to one output."""
    if not 0 <= doc.generations <= MAX_GENERATIONS:
        bad(f"the program counts {doc.generations} generations")
    ids = {n.id for n in doc.nodes}
    if len(ids) != len(doc.nodes):
        bad("duplicate node ids")
    if any(e.source not in ids or e.target not in ids for e in doc.edges):
        bad("an edge names a missing node")
    ops = [n.op for n in doc.nodes]
    if ops.count("question") != 1 or ops.count("output") != 1:
        bad("needs exactly one question and one output node")
    graph = nx.DiGraph()
    for node in doc.nodes:
        graph.add_node(node.id, node=node)
    for edge in doc.edges:
        if graph.has_edge(edge.source, edge.target):
            bad(f"two edges from node {edge.source} to node {edge.target}")
        graph.add_edge(edge.source, edge.target, edge=edge)
    if not nx.is_directed_acyclic_graph(graph):
        bad("the graph has a cycle")
    question = next(n.id for n in doc.nodes if n.op == "question")
    output = next(n.id for n in doc.nodes if n.op == "output")
    unreached = ids - nx.descendants(graph, question) - {question}
    if unreached:
        bad(f"node {min(unreached)} does not follow from the question")
    dangling = ids - nx.ancestors(graph, output) - {output}
    if dangling:
        bad(f"node {min(dangling)} does not lead to the output")
    for node in doc.nodes:
        slots = sorted(e.slot for _, _, e in graph.in_edges(node.id, data="edge"))
        if slots != list(range(len(slots))):
            bad(f"the inputs of node {node.id} are not in slots 0..{len(slots) - 1}")
    return graph


def _check_declarations(doc: IRDocument, bad: _Problems) -> None:
    """Models, verifiers, prompts and budgets, each against what declares it."""
    for model, decl in doc.models.items():
        kind = decl.get("kind")
        if not isinstance(kind, str) or kind not in MODELS:
            bad(f"model {model!r} is of unknown kind {kind!r}")
        _check_params(MODELS[kind], {k: v for k, v in decl.items() if k != "kind"}, doc, f"model {model!r}", bad)
    for verifier, decl in doc.verifiers.items():
        kind = decl.get("kind")
        where = f"verifier {verifier!r}"
        if kind in ("oracle", "confidence"):  # built in, with nothing to set
            if decl != BUILTIN_VERIFIERS[kind]:
                bad(f"{where} is not the built-in {kind}")
            continue
        if not isinstance(kind, str) or kind not in VERIFIERS:
            bad(f"{where} is of unknown kind {kind!r}")
        _check_params(VERIFIERS[kind], {k: v for k, v in decl.items() if k != "kind"}, doc, where, bad, ("m",))
        if kind == "prm" and doc.models[cast(str, decl["m"])].get("kind") == "openai":
            bad(f"{where} reads hidden states, which the served model {decl['m']!r} cannot give")
    for prompt, template in doc.prompts.items():
        try:
            holes = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError:
            bad(f"prompt {prompt!r} is not a valid template")
        if "question" not in holes or any(h not in PROMPT_HOLES for h in holes):
            bad(f"prompt {prompt!r} has holes {holes}; a prompt has {{question}} and may have {{attempts}}")
    kind = doc.answer.get("kind")
    if not isinstance(kind, str) or kind not in ANSWERS:
        bad(f"the answer is of unknown kind {kind!r}")
    _check_params(ANSWERS[kind], {k: v for k, v in doc.answer.items() if k != "kind"}, doc, "the answer", bad)
    if kind == "regex":
        try:
            if re.compile(str(doc.answer.get("pattern"))).groups > 1:
                bad("the answer's pattern has more than one group")
        except re.error:
            bad("the answer's pattern is not a valid regular expression")
    for unit, amount in doc.budgets.items():
        if unit not in BUDGET_UNITS:
            bad(f"a budget in unknown unit {unit!r}")
        if not 0 < amount < math.inf:
            bad(f"the {unit} budget is {amount}")


_STRUCTURE = {  # op: (parameters it may have, the least and the most inputs)
    "question": ((), 0, 0),
    "output": ((), 1, 1),
    "union": (("repeat",), 1, MAX_NODES),
    "merge": (("bins",), 1, MAX_BINS),
}


def _check_node(doc: IRDocument, graph: nx.DiGraph, node: IRNode, bad: _Problems) -> None:
    """A node's parameters, type, inputs and generation count, as lowering makes them."""
    where = f"node {node.id} ({node.op})"
    preds = [graph.nodes[u]["node"] for u in graph.predecessors(node.id)]
    if node.op in _STRUCTURE:
        allowed, least, most = _STRUCTURE[node.op]
        if set(node.params) - set(allowed):
            bad(f"{where} has unknown parameters {sorted(set(node.params) - set(allowed))}")
        if not least <= len(preds) <= most:
            bad(f"{where} has {len(preds)} inputs")
        if node.generations != 0:
            bad(f"{where} counts {node.generations} generations")
    if node.op == "question":
        expected = QUESTION
    elif node.op == "output":
        expected = ANSWER
        if preds[0].type != ANSWER:
            bad(f"{where} is given {preds[0].type}, not an Answer")
    elif node.op == "union":
        expected = POOL
        repeat = node.params.get("repeat", 1)
        if type(repeat) is not int or not 1 <= repeat <= MAX_NODES:
            bad(f"{where} has repeat={repeat!r}")
        for p in preds:
            probe = graph.edges[p.id, node.id]["edge"].probe
            if p.type not in (POOL, ANSWER) and not (p.op == "difficulty" and probe):
                bad(f"{where} is given a {p.type}")
    elif node.op == "merge":
        bins = node.params.get("bins")
        if type(bins) is not int or not 2 <= bins <= MAX_BINS:
            bad(f"{where} has bins={bins!r}")
        expected = preds[0].type
        if any(p.type != expected or p.type == QUESTION for p in preds):
            bad(f"{where} joins arms that give {', '.join(sorted({p.type for p in preds}))}")
    else:
        sig = DIFFICULTY if node.op == "difficulty" else STAGES[node.op]
        # lowering fills in the policy model of a generator and of difficulty's probes
        needed = ("model",) if sig.kind in ("generator", "difficulty") else ()
        extra = {"model": Param("model", "model")} if sig.kind == "difficulty" else {}
        _check_params(sig, node.params, doc, where, bad, needed, extra, defaults=True)
        if len(preds) != 1:
            bad(f"{where} has {len(preds)} inputs")
        if preds[0].type not in sig.accepts:
            bad(f"{where} is given a {preds[0].type}, but takes {' or '.join(sorted(sig.accepts))}")
        if node.op == "difficulty" and "thresholds" in node.params:
            if node.params["bins"] != len(cast(list, node.params["thresholds"])) + 1:
                bad(
                    f"{where} has {node.params['bins']} bins for {len(cast(list, node.params['thresholds']))} thresholds"
                )
        if node.generations != sig.generations(node.params):
            bad(f"{where} counts {node.generations} generations, not {sig.generations(node.params)}")
        expected = sig.returns
    if node.type != expected:
        bad(f"{where} gives a {node.type}, not a {expected}")


def _check_edge(graph: nx.DiGraph, edge: IREdge, bad: _Problems) -> None:
    """Guards only on match arms (from a difficulty node, or into a merge), within its bins;
    probe pools only from a difficulty node into a union."""
    source, target = graph.nodes[edge.source]["node"], graph.nodes[edge.target]["node"]
    where = f"the edge from node {edge.source} to node {edge.target}"
    if edge.probe and (source.op != "difficulty" or target.op != "union"):
        bad(f"{where} is marked as a probe pool")
    arm = source.op == "difficulty" or target.op == "merge"
    if arm != (edge.guard is not None):
        bad(f"{where} {'lacks' if arm else 'has'} a guard")
    if edge.guard is not None:
        bins = (source if source.op == "difficulty" else target).params["bins"]
        if not edge.guard or any(not 1 <= b <= cast(int, bins) for b in edge.guard):
            bad(f"{where} is guarded by bins {edge.guard} outside 1..{bins}")


def _check_params(
    sig: Signature,
    values: dict[str, Any],
    doc: IRDocument,
    where: str,
    bad: _Problems,
    needed: tuple[str, ...] = (),
    extra: dict[str, Param] | None = None,
    defaults: bool = False,
) -> None:
    """Values against a signature: known names, the required ones and those lowering fills in
    (`needed`, and with `defaults` every one with a default, as lowering writes a node's), the
    types and the limits."""
    params = {p.name: p for p in sig.params} | (extra or {})
    unknown = set(values) - set(params)
    if unknown:
        bad(f"{where} has unknown parameters {sorted(unknown)}")
    for p in params.values():
        if p.name not in values:
            if p.default is REQUIRED or p.name in needed or (defaults and p.default is not None):
                bad(f"{where} lacks {p.name}")
            continue
        value = values[p.name]
        if not _has_type(value, p.type):
            bad(f"{where} has {p.name}={value!r}, not {describe(p.type)}")
        if p.type in ("model", "verifier", "prompt"):
            tables: dict[str, dict[str, Any]] = {"model": doc.models, "verifier": doc.verifiers, "prompt": doc.prompts}
            if value not in tables[p.type]:
                bad(f"{where} names an undeclared {p.type} {value!r}")
            if p.step_level and not step_level(doc.verifiers[value]):
                bad(f"{where} needs a step-level verifier, but {value!r} scores only whole answers")
            continue
        for item in value if isinstance(value, list) else [value]:
            if (p.minimum is not None and item < p.minimum) or (p.maximum is not None and item > p.maximum):
                bad(f"{where} has {p.name}={value!r}, outside {p.minimum}..{p.maximum}")
            if p.choices is not None and item not in p.choices:
                bad(f"{where} has {p.name}={value!r}, not one of {', '.join(p.choices)}")
        if p.ascending and any(b <= a for a, b in zip(value, value[1:])):
            bad(f"{where} has {p.name}={value!r}, not strictly ascending")
    if sig.rule(values):
        bad(f"{where}: {sig.rule(values)}")


def _has_type(value: Any, type_: str) -> bool:
    if type_.startswith("list["):
        return isinstance(value, list) and all(_has_type(v, type_[5:-1]) for v in value)
    if type_ == "int":
        return type(value) is int
    if type_ == "float":
        return type(value) in (int, float)
    if type_ == "bool":
        return type(value) is bool
    return isinstance(value, str)  # str, and the names of declarations
