"""Chain graphs as Graphviz DOT, Mermaid, or JSON."""

from __future__ import annotations

import json

import networkx as nx

KIND_COLOUR = {"svc": "lightblue", "svl": "lightcyan", "ext": "khaki", "fw": "orange", "sep": "palegreen",
               "verdict": "white", "builtin": "lightgrey", "chain": "white", "xlb": "pink",
               "map": "plum", "set": "thistle"}  # nftables maps and sets (model/nft/graph.py)


def _edge_label(data: dict) -> str:
    parts = [data["note"]] if data.get("note") else []
    if data.get("probability") is not None:
        parts.append(f"p={data['probability']:.4g}")
    if data.get("share") is not None and data["share"] < 0.999999 and not data.get("conditional"):
        parts.append(f"{data['share'] * 100:.1f}%")
    if data.get("conditional"):
        parts.append("some sources")
    if data.get("packets") is not None:
        parts.append(f"{data['packets']} pkts")
    return ", ".join(parts)


def to_dot(g: nx.MultiDiGraph, title: str) -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="monospace"];']
    for node, data in g.nodes(data=True):
        colour = KIND_COLOUR.get(data.get("kind"), "white")
        style = ', style="rounded,dashed"' if not data.get("exists", True) else ""
        lines.append(f'  "{node}" [fillcolor="{colour}"{style}];')
    for a, b, data in g.edges(data=True):
        label = _edge_label(data)
        lines.append(f'  "{a}" -> "{b}"' + (f' [label="{label}"]' if label else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(g: nx.MultiDiGraph, title: str) -> str:
    ids = {node: f"n{i}" for i, node in enumerate(g.nodes)}
    lines = ["flowchart LR", f"  %% {title}"]
    for node in g.nodes:
        lines.append(f'  {ids[node]}["{node}"]')
    for a, b, data in g.edges(data=True):
        label = _edge_label(data)
        lines.append(f"  {ids[a]} -->" + (f"|{label}|" if label else "") + f" {ids[b]}")
    return "\n".join(lines) + "\n"


def to_json(graphs: dict[str, nx.MultiDiGraph], title: str) -> str:
    doc = {"apiVersion": "svcdoctor/v1", "kind": "Graph", "title": title, "nodes": {}}
    for node, g in graphs.items():
        doc["nodes"][node] = {
            "chains": [{"name": n, **d} for n, d in g.nodes(data=True)],
            "edges": [{"from": a, "to": b, **d} for a, b, d in g.edges(data=True)],
        }
    return json.dumps(doc, indent=2) + "\n"
