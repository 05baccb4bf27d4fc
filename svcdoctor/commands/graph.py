"""`svcdoctor graph`: a service's chains as a picture."""

from __future__ import annotations

from svcdoctor.commands.explain import resolve_service
from svcdoctor.commands.inputs import LoadedInput
from svcdoctor.model.explain import build_service_view
from svcdoctor.model.graph import build_chain_graph
from svcdoctor.render.graph_format import to_dot, to_json, to_mermaid


def run_graph(loaded: LoadedInput, service: str | None, namespace: str | None, fmt: str) -> str:
    graphs = {}
    title = "kube-proxy nat chains"
    if service:
        ns, name = resolve_service(service, namespace, loaded)
        title = f"{ns}/{name}"
        view = build_service_view(ns, name, loaded.rules, loaded.cluster)
        for node, rules in loaded.rules.items():
            roots: list[str] = []
            for pv in view.ports:
                for nv in pv.nodes:
                    if nv.node != node:
                        continue
                    for e in nv.entries:
                        if e.entry_rule is not None and e.entry_rule.table == "nat" and e.entry_rule.target:
                            roots.append(e.entry_rule.target)
            g = build_chain_graph(rules, "nat", roots)
            for pv in view.ports:
                for nv in pv.nodes:
                    if nv.node != node:
                        continue
                    for e in nv.entries:
                        rule = e.entry_rule
                        if rule is not None and rule.table == "nat" and rule.target:
                            g.add_edge(rule.chain, rule.target, rule=rule.text, packets=rule.packets,
                                       bytes=rule.bytes, probability=None, share=1.0, conditional=False)
                            if rule.chain == "KUBE-NODEPORTS":
                                g.add_edge("KUBE-SERVICES", "KUBE-NODEPORTS", rule="nodeports", packets=None,
                                           bytes=None, probability=None, share=1.0, conditional=False)
            graphs[node] = g
    else:
        for node, rules in loaded.rules.items():
            graphs[node] = build_chain_graph(rules, "nat", ["PREROUTING", "OUTPUT", "POSTROUTING"])
    if fmt == "json":
        return to_json(graphs, title)
    # pictures: the first node, unless the nodes differ (then one graph per node)
    render = to_dot if fmt == "dot" else to_mermaid
    out = []
    for node, g in graphs.items():
        out.append(render(g, f"{title} on {node}"))
        if fmt == "mermaid":
            break
    return "\n".join(out[:1]) if len(graphs) > 1 and _all_same(graphs) else "\n".join(out)


def _all_same(graphs) -> bool:
    sigs = {tuple(sorted(g.nodes)) for g in graphs.values()}
    return len(sigs) == 1
