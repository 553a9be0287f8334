"""Drawing the IR: as text, Graphviz DOT, or Mermaid (`ttcl graph --format ...`)."""

from __future__ import annotations

import json

import networkx as nx


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
    lines = [
        f"program {g['program']}: {g['generations']} generations"
        + "".join(f"; budget {v:g} {k}" for k, v in g.get("budgets", {}).items())
    ]
    rows = []
    for n in order(graph):
        attrs = graph.nodes[n]
        preds = sorted(graph.predecessors(n), key=lambda u: graph.edges[u, n]["slot"])
        inputs = ", ".join(
            f"n{u}" + (f" [{_edge_label(graph.edges[u, n])}]" if _edge_label(graph.edges[u, n]) else "") for u in preds
        )
        where = str(attrs["span"]) + (f" (in {' > '.join(attrs['origin'])})" if attrs.get("origin") else "")
        cost = (costs or {}).get(n, "")
        rows.append((f"n{n}", label(graph, n), attrs["type"], f"<- {inputs}" if inputs else "", cost, where))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths + [0])).rstrip())
    for kind in ("models", "verifiers", "prompts"):
        for name, decl in g.get(kind, {}).items():
            shown = (
                json.dumps(decl) if isinstance(decl, str) else ", ".join(f"{k}={_value(v)}" for k, v in decl.items())
            )
            lines.append(f"  {kind[:-1]} {name}: {shown}")
    return "\n".join(lines) + "\n"


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT; match arms' edges are labelled with their bins."""
    out = [f"digraph {json.dumps(graph.graph['program'])} {{", '  node [shape=box, fontname="monospace"];']
    for n in order(graph):
        attrs = graph.nodes[n]
        text = f"{label(graph, n)}\\n{attrs['type']} @ {attrs['span'].line}:{attrs['span'].col}"
        shape = ", shape=ellipse" if attrs["op"] in ("question", "output") else ""
        out.append(f"  n{n} [label={_dot_string(text)}{shape}];")
    for u, v, attrs in graph.edges(data=True):
        text = _edge_label(attrs)
        out.append(f"  n{u} -> n{v}" + (f" [label={_dot_string(text)}]" if text else "") + ";")
    return "\n".join(out) + "\n}\n"


def _dot_string(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def to_mermaid(graph: nx.DiGraph) -> str:
    """A Mermaid flowchart (renders on GitHub)."""
    out = ["flowchart TD"]
    for n in order(graph):
        text = label(graph, n).replace('"', "#quot;")
        out.append(f'  n{n}["{text}"]')
    for u, v, attrs in graph.edges(data=True):
        text = _edge_label(attrs)
        out.append(f"  n{u} -->|{text}| n{v}" if text else f"  n{u} --> n{v}")
    return "\n".join(out) + "\n"


FORMATS = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid}
