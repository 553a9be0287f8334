"""Drawing the IR: as text, Graphviz DOT, or Mermaid (`ttcl graph --format ...`)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import networkx as nx

from ttcl.errors import UsageError

MAX_TEXT_BYTES = 4_000_000  # `ttcl graph` as text: a screenful per operation is already too much
MAX_DRAWING_BYTES = 64_000_000  # DOT and Mermaid, read by programs: about a compiled artifact's size
MAX_INPUTS_SHOWN = 8  # a union of thousands of inputs lists the first few and a count
MAX_COLUMN = 80  # columns align cells up to this wide; a longer cell runs over instead of padding every line


def label(graph: nx.DiGraph, node: int) -> str:
    """A node as a call: `sample(n=16, model=policy)`, `question`, `union`."""
    attrs = graph.nodes[node]
    args = ", ".join(f"{k}={_value(v)}" for k, v in attrs["params"].items())
    return f"{attrs['op']}({args})" if args else attrs["op"]


def _value(v) -> str:
    """A parameter value as a program would write it: names bare, other strings quoted."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):  # difficulty's thresholds
        return "[" + ", ".join(map(_value, v)) + "]"
    if isinstance(v, str) and not v.isidentifier():
        return json.dumps(v)
    return str(v)


def _edge_label(attrs: dict) -> str:
    parts = []
    if attrs.get("guard"):
        bins = attrs["guard"]
        contiguous = bins == list(range(bins[0], bins[-1] + 1))
        parts.append(
            f"bins {bins[0]}..{bins[-1]}"
            if contiguous and len(bins) > 1
            else f"bin{'s' * (len(bins) > 1)} {','.join(map(str, bins))}"
        )
    if attrs.get("probe"):
        parts.append("probes")
    return ", ".join(parts)


def order(graph: nx.DiGraph) -> list[int]:
    """Nodes in a stable topological order (ties broken by id)."""
    return list(nx.lexicographical_topological_sort(graph))


def to_text(graph: nx.DiGraph, costs: dict[int, str] | None = None) -> str:
    """One line per operation in topological order: id, call, output type, inputs (with arm
    guards), the source position it came from (with the strategy calls it was inlined from)
    and, where given, its estimated cost. Declarations follow."""
    g = graph.graph
    header = f"program {g['program']}: {g['generations']} generations" + "".join(
        f"; budget {v:g} {k}" for k, v in g.get("budgets", {}).items()
    )
    rows = []
    for n in order(graph):
        attrs = graph.nodes[n]
        preds = sorted(graph.predecessors(n), key=lambda u: graph.edges[u, n]["slot"])
        shown = [
            f"n{u}" + (f" [{_edge_label(graph.edges[u, n])}]" if _edge_label(graph.edges[u, n]) else "") for u in preds
        ]
        if len(shown) > MAX_INPUTS_SHOWN:  # the union of a `* 9000`: the first few, the last and a count
            shown = shown[: MAX_INPUTS_SHOWN - 1] + [f"... {shown[-1]} ({len(shown)} inputs)"]
        where = str(attrs["span"]) + (f" (in {' > '.join(attrs['origin'])})" if attrs.get("origin") else "")
        cost = (costs or {}).get(n, "")
        rows.append((f"n{n}", label(graph, n), attrs["type"], f"<- {', '.join(shown)}" if shown else "", cost, where))
    # aligned columns, as wide as their widest cell up to MAX_COLUMN: a long cell must not pad every line
    widths = [max((len(r[i]) for r in rows if len(r[i]) <= MAX_COLUMN), default=0) for i in range(5)]
    table = ("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths + [0])).rstrip() for row in rows)
    declarations = (
        f"  {kind[:-1]} {name}: "
        + (json.dumps(decl) if isinstance(decl, str) else ", ".join(f"{k}={_value(v)}" for k, v in decl.items()))
        for kind in ("models", "verifiers", "prompts")
        for name, decl in g.get(kind, {}).items()
    )
    return _bounded(
        [[header], table, declarations],
        MAX_TEXT_BYTES,
        f"the graph of `{g['program']}` ({len(graph)} operations)",
        "draw it with --format dot (and Graphviz), or see its totals with `ttcl cost`",
    )


def _bounded(parts: Iterable[Iterable[str]], limit: int, what: str, hint: str) -> str:
    """The lines joined, or a `UsageError` as soon as they pass `limit` characters, so a huge
    graph is refused before its drawing is built."""
    out, size = [], 0
    for part in parts:
        for line in part:
            size += len(line) + 1
            if size > limit:
                raise UsageError(
                    f"{what} would be over {limit // 1_000_000} MB of text; it is not drawn",
                    notes=(hint,) if hint else (),
                )
            out.append(line)
    return "\n".join(out) + "\n"


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT; match arms' edges are labelled with their bins."""

    def nodes() -> Iterable[str]:
        for n in order(graph):
            attrs = graph.nodes[n]
            text = f"{label(graph, n)}\\n{attrs['type']} @ {attrs['span'].line}:{attrs['span'].col}"
            shape = ", shape=ellipse" if attrs["op"] in ("question", "output") else ""
            yield f"  n{n} [label={_dot_string(text)}{shape}];"

    def edges() -> Iterable[str]:
        for u, v, attrs in graph.edges(data=True):
            text = _edge_label(attrs)
            yield f"  n{u} -> n{v}" + (f" [label={_dot_string(text)}]" if text else "") + ";"

    head = [f"digraph {json.dumps(graph.graph['program'])} {{", '  node [shape=box, fontname="monospace"];']
    return _bounded([head, nodes(), edges(), ["}"]], MAX_DRAWING_BYTES, _drawing(graph), "")


def _dot_string(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def to_mermaid(graph: nx.DiGraph) -> str:
    """A Mermaid flowchart (renders on GitHub)."""

    def nodes() -> Iterable[str]:
        for n in order(graph):
            yield f'  n{n}["{label(graph, n).replace(chr(34), "#quot;")}"]'

    def edges() -> Iterable[str]:
        for u, v, attrs in graph.edges(data=True):
            text = _edge_label(attrs)
            yield f"  n{u} -->|{text}| n{v}" if text else f"  n{u} --> n{v}"

    return _bounded([["flowchart TD"], nodes(), edges()], MAX_DRAWING_BYTES, _drawing(graph), "")


def _drawing(graph: nx.DiGraph) -> str:
    return f"the drawing of `{graph.graph['program']}` ({len(graph)} operations)"


FORMATS = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid}
