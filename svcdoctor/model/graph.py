"""The chain graph (networkx): chains are nodes, jumps are edges carrying the rule, its counters and its
branch probability; the effective probability of reaching each chain is computed along the paths."""

from __future__ import annotations

import networkx as nx

from svcdoctor.model.hashes import chain_kind
from svcdoctor.model.rules import NodeRules

NON_CHAIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG", "CONNMARK"}


def build_chain_graph(rules: NodeRules, table: str, roots: list[str] | None = None) -> nx.MultiDiGraph:
    """The graph of one table; with ``roots``, only what is reachable from them (a service's subgraph).

    Each edge has: rule (text), packets, bytes, probability (as written, or None), share (of the traffic
    arriving at the source chain that takes this edge, in rule order). Terminal verdicts (DNAT to …, DROP,
    REJECT) are leaf nodes so the pictures show where traffic ends.
    """
    g = nx.MultiDiGraph()
    t = rules.table(table)
    if t is None:
        return g
    todo = list(roots) if roots else list(t.chains)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        chain = t.chain(name)
        g.add_node(name, kind=chain_kind(name) or ("builtin" if chain and chain.builtin else "chain"),
                   rules=len(chain.rules) if chain else 0, exists=chain is not None)
        if chain is None:
            continue
        remaining = 1.0
        for rule in chain.rules:
            target = rule.target
            if not target:
                continue
            p = rule.probability
            share = remaining * p if p is not None else remaining
            conditional = any(m.option in ("-s", "--src-type", "-i", "--rcheck", "--update") for m in rule.matches)
            if target in NON_CHAIN_TARGETS:
                if target in ("DNAT", "DROP", "REJECT", "MASQUERADE"):
                    leaf = f"{target} {rule.dnat_destination}" if target == "DNAT" else f"{target} ({name})"
                    g.add_node(leaf, kind="verdict", exists=True)
                    g.add_edge(name, leaf, rule=rule.text, packets=rule.packets, bytes=rule.bytes,
                               probability=p, share=share, conditional=conditional)
                continue
            g.add_edge(name, target, rule=rule.text, packets=rule.packets, bytes=rule.bytes,
                       probability=p, share=share, conditional=conditional)
            # kube-proxy's per-service chains end in DNAT (traffic does not come back); KUBE-MARK-MASQ and the
            # like return, so what was sent there goes on to the next rule
            if not conditional and chain_kind(target) is not None:
                remaining -= share
            todo.append(target)
    return g


def effective_shares(g: nx.MultiDiGraph, root: str) -> dict[str, float]:
    """Share of the traffic entering ``root`` that reaches each node, along unconditional edges."""
    shares = {root: 1.0}
    for node in nx.topological_sort(g) if nx.is_directed_acyclic_graph(g) else [root]:
        if node not in shares:
            continue
        for _, target, data in g.out_edges(node, data=True):
            if data.get("conditional"):
                continue
            shares[target] = shares.get(target, 0.0) + shares[node] * data["share"]
    return shares
