"""`svcdoctor graph`: a service's chains as a picture."""

from __future__ import annotations

import networkx as nx

from svcdoctor.inputs import resolve_service
from svcdoctor.inputs import LoadedInput
from svcdoctor.model.explain import build_service_view
from svcdoctor.model.graph import build_service_graph, nat_hooks_graph, service_entry_rules
from svcdoctor.render.graph_format import to_dot, to_json, to_mermaid


def run_graph(loaded: LoadedInput, service: str | None, namespace: str | None, fmt: str) -> str:
    title, graphs = _graphs(loaded, service, namespace)
    if fmt == "json":
        return to_json(graphs, title)
    return _pictures(graphs, title, fmt)


def _graphs(loaded: LoadedInput, service: str | None, namespace: str | None) -> tuple[str, dict[str, nx.MultiDiGraph]]:
    """(title, graph per node): the service's chains, or all that the nat hooks lead to."""
    if not service:
        return "kube-proxy nat chains", {node: nat_hooks_graph(rules) for node, rules in loaded.rules.items()}
    ns, name = resolve_service(service, namespace, loaded)
    view = build_service_view(ns, name, loaded.rules, loaded.cluster)
    graphs = {node: build_service_graph(rules, service_entry_rules(view, node)) for node, rules in loaded.rules.items()}
    return f"{ns}/{name}", graphs


def _pictures(graphs: dict[str, nx.MultiDiGraph], title: str, fmt: str) -> str:
    """One picture per node, or just the first when every node has the same chains; mermaid always draws one."""
    render = to_dot if fmt == "dot" else to_mermaid
    out = []
    for node, g in graphs.items():
        out.append(render(g, f"{title} on {node}"))
        if fmt == "mermaid":
            break
    return "\n".join(out[:1]) if len(graphs) > 1 and _all_same(graphs) else "\n".join(out)


def _all_same(graphs: dict[str, nx.MultiDiGraph]) -> bool:
    return len({tuple(sorted(g.nodes)) for g in graphs.values()}) == 1
