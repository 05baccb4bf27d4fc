"""`svcdoctor graph`: a service's chains (or all of a node's nat chains) as a picture or as data.

A picture is of one node: the one given with --node (several --node: one picture each), else the node whose rules
counted the most traffic for what is drawn, named on stderr. JSON holds every node read.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from svcdoctor.inputs import LoadedInput, resolve_service
from svcdoctor.model.explain import build_service_view
from svcdoctor.model.graph import (
    annotate_endpoints,
    build_service_graph,
    busiest,
    nat_hooks_graph,
    service_blackholes,
    service_entry_rules,
    traffic,
)
from svcdoctor.model.nft.graph import service_key_graph
from svcdoctor.model.nft.graph import table_graph as nft_table_graph
from svcdoctor.model.nft.ruleset import NftRuleset
from svcdoctor.model.nft.view import add_nft_nodes
from svcdoctor.render.graph_format import to_dot, to_json, to_mermaid
from svcdoctor.render.graph_svg import to_svg_document


@dataclass(slots=True)
class GraphOutput:
    text: str
    chosen: str | None = None  # the node drawn when none was asked for (stderr says which)
    because: str = ""  # why that one


def run_graph(loaded: LoadedInput, service: str | None, namespace: str | None, fmt: str,
              nodes_given: bool = False) -> GraphOutput:
    title, graphs = _graphs(loaded, service, namespace)
    if fmt == "json":
        return GraphOutput(to_json(graphs, title))
    if not graphs:
        return GraphOutput("")
    chosen, because = None, "the node with the most traffic for it"
    if not nodes_given and len(graphs) > 1:
        chosen = busiest(graphs)
        if not traffic(graphs[chosen]):
            because = "the first node (no counters to choose by: none counted, or nftables mode, which keeps none)"
        graphs = {chosen: graphs[chosen]}
    return GraphOutput(_pictures(graphs, title, fmt), chosen, because)


def service_graphs(loaded: LoadedInput, ns: str, name: str) -> dict[str, nx.MultiDiGraph]:
    """The service's chain graph on every node read, its drops and its endpoints' pods included; a node in
    nftables mode draws its table's chains, maps and sets instead (model/nft/graph.py)."""
    view = build_service_view(ns, name, loaded.rules, loaded.cluster)
    graphs = {}
    for node, rules in loaded.rules.items():
        if node in loaded.nft:
            continue
        g = build_service_graph(rules, service_entry_rules(view, node), service_blackholes(view, node))
        annotate_endpoints(g, view, node)
        graphs[node] = g
    if loaded.nft:
        add_nft_nodes(view, loaded.nft, loaded.cluster)  # the nftables nodes' entries, to name their endpoints' pods
        for node, tables in loaded.nft.items():
            for key, rs in _keyed_tables(node, tables):
                g = service_key_graph(rs, f"{ns}/{name}")
                annotate_endpoints(g, view, node)
                graphs[key] = g
    return dict(sorted(graphs.items()))


def _keyed_tables(node: str, tables: list[NftRuleset]) -> list[tuple[str, NftRuleset]]:
    """A node's kube-proxy tables by the name its picture goes under: the node, and "<node> ip6" for the IPv6
    table of a dual-stack node."""
    return [(node if i == 0 else f"{node} {rs.family}", rs) for i, rs in enumerate(tables)]


def _graphs(loaded: LoadedInput, service: str | None, namespace: str | None) -> tuple[str, dict[str, nx.MultiDiGraph]]:
    """(title, graph per node): the service's chains, or all that the nat hooks lead to."""
    if not service:
        graphs = {node: nat_hooks_graph(rules) for node, rules in loaded.rules.items() if node not in loaded.nft}
        for node, tables in loaded.nft.items():
            graphs.update((key, nft_table_graph(rs)) for key, rs in _keyed_tables(node, tables))
        return "kube-proxy nat chains", dict(sorted(graphs.items()))
    ns, name = resolve_service(service, namespace, loaded)
    return f"{ns}/{name}", service_graphs(loaded, ns, name)


def _pictures(graphs: dict[str, nx.MultiDiGraph], title: str, fmt: str) -> str:
    """One picture per node: DOT digraphs one after the other, one SVG document holding them all one under the
    other; mermaid (one diagram per file) draws the first."""
    pictures = [(g, f"{title} on {node}") for node, g in graphs.items()]
    if fmt == "svg":
        return to_svg_document(pictures)
    if fmt == "mermaid":
        return to_mermaid(*pictures[0])
    return "".join(to_dot(g, t) for g, t in pictures)
