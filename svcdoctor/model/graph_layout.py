"""Where each chain of a picture graph goes: columns from networkx's `topological_generations` (entries on the
left, a chain one column right of the furthest chain that jumps to it), endpoints and verdicts in the last column,
and an order within each column that keeps jumps short (the barycentre heuristic of layered graph drawing,
Sugiyama et al. 1981). Pure: the SVG writer (`render/graph_svg.py`) turns it into coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True, slots=True)
class Layout:
    columns: list[list[str]]  # chain and verdict names, left to right, each column top to bottom

    def place(self) -> dict[str, tuple[int, int]]:
        """name -> (column, row)."""
        return {name: (c, r) for c, column in enumerate(self.columns) for r, name in enumerate(column)}


def layered_layout(g: nx.MultiDiGraph, sweeps: int = 2) -> Layout:
    if g.number_of_nodes() == 0:
        return Layout([])
    try:
        level = {name: depth for depth, layer in enumerate(nx.topological_generations(g)) for name in layer}
    except nx.NetworkXUnfeasible:
        level = _levels_of_components(g)
    last = max(level.values())
    for name, kind in g.nodes(data="kind"):
        if kind == "verdict" and g.out_degree(name) == 0:
            level[name] = max(last, 1)  # where traffic ends: the right-hand edge of the picture
    columns: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for name in g.nodes:  # insertion order is rule order: a stable start for the sweeps
        columns[level[name]].append(name)
    columns = [c for c in columns if c]
    for _ in range(sweeps):
        rows = {name: r for column in columns for r, name in enumerate(column)}
        for column in columns[1:]:
            column.sort(key=lambda name: _barycentre(g, name, rows))
            rows.update({name: r for r, name in enumerate(column)})
    return Layout(columns)


def _levels_of_components(g: nx.MultiDiGraph) -> dict[str, int]:
    # a loop of jumps (only hand-made or left-over chains have one, `rule_loops`) is one layer, not an error
    simple = nx.DiGraph(g)
    simple.remove_edges_from(nx.selfloop_edges(simple))
    dag = nx.condensation(simple)
    level_of = {comp: depth for depth, layer in enumerate(nx.topological_generations(dag)) for comp in layer}
    return {name: level_of[comp] for name, comp in dag.graph["mapping"].items()}


def _barycentre(g: nx.MultiDiGraph, name: str, rows: dict[str, int]) -> float:
    above = [rows[p] for p in g.predecessors(name) if p in rows]
    return sum(above) / len(above) if above else rows.get(name, 0)
