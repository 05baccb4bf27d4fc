"""The chain graphs of one node's table, and the questions they answer (networkx).

Two graphs, for two kinds of question:

- the **jump graph** (`jump_graph`): one node per chain, one edge per "some rule jumps or goes to that chain".
  It answers the structural questions: which chains the built-in hooks reach (`reachable_chains`), which are
  referenced but absent from the input, i.e. a partial dump (`missing_chains`), which kube-proxy chains are defined
  but nothing reaches, i.e. left over (`unreachable_kube_chains`), and whether rules loop (`rule_loops`);
- the **picture graph** (`build_chain_graph`, `build_service_graph`): chains and verdicts (DNAT to …, DROP, REJECT,
  MASQUERADE) as nodes, one edge per rule, carrying its counters, probability and share of the traffic. `graph`
  draws it and `entry_paths` lists the ways from a service's entry chain to its endpoint chains with their shares.

Chains and targets are read only through the parsed model (`Rule.target`, `Rule.goto`, `Rule.probability`,
`Rule.matches`), never by searching rule text. Section numbers (§) refer to docs/reference/kube-proxy-layout.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx

from svcdoctor.model.hashes import chain_kind, endpoint_string
from svcdoctor.model.rules import BUILTIN_CHAINS, NodeRules, Rule, Table

if TYPE_CHECKING:
    from svcdoctor.model.explain import ServiceView

# Targets the picture graph does not follow as chains; the verdicts among them become leaf nodes.
NON_CHAIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG", "CONNMARK"}
VERDICT_TARGETS = ("DNAT", "DROP", "REJECT", "MASQUERADE")

# Every target that is not a chain: the standard verdicts and the extension targets of iptables-extensions(8).
# A `-j NAME` naming none of these (and no chain of the input) refers to a chain the input lacks.
EXTENSION_TARGETS = frozenset({
    "ACCEPT", "DROP", "RETURN", "QUEUE",
    "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DNAT", "DNPT", "DSCP", "ECN",
    "HL", "HMARK", "IDLETIMER", "LED", "LOG", "MARK", "MASQUERADE", "MIRROR", "NETMAP", "NFLOG", "NFQUEUE",
    "NOTRACK", "RATEEST", "REDIRECT", "REJECT", "SECMARK", "SET", "SNAT", "SNPT", "SYNPROXY", "TCPMSS",
    "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG",
})

# The chains kube-proxy hooks into the built-in ones (§2.1). A dump without built-in rules (kube-proxy's restore
# input, or the tables as a kernel shows them after restoring it) is read as if these were hooked, as kube-proxy's
# own tests do.
KUBE_PROXY_HOOKED_CHAINS = {
    "nat": ("KUBE-SERVICES", "KUBE-POSTROUTING"),
    "filter": ("KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL",
               "KUBE-FIREWALL"),
}

# KUBE-* chains that may have no jump to them and still be in use: kube-proxy's and kubelet's canaries and kubelet's
# backend hint, which nothing jumps to by design (§2.1), and KUBE-MARK-MASQ, which kube-proxy declares on every sync
# (§2.2) even when no service masquerades.
UNREFERENCED_BY_DESIGN = frozenset({"KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-MARK-MASQ"})

# Matches that make a jump apply to some packets of a flow only (sources, interfaces, affinity state), so the
# rest of the traffic still goes on to the next rule.
_CONDITIONAL_OPTIONS = ("-s", "--src-type", "-i", "--rcheck", "--update")


# --------------------------------------------------------------------------------------------- the jump graph
def jump_graph(rules: NodeRules, table: str) -> nx.DiGraph:
    """One table's chains and the jumps between them.

    Nodes are chain names, with ``present`` (the input holds the chain) and ``builtin``. An edge A → B means some
    rule of A jumps (`-j`) or goes (`-g`) to B; its ``rules`` are those rules, in order. A chain that is referenced
    but absent from the input is a node with ``present=False``.
    """
    g = nx.DiGraph()
    t = rules.table(table)
    if t is None:
        return g
    for name, chain in t.chains.items():
        g.add_node(name, present=True, builtin=chain.builtin)
    for name, chain in t.chains.items():
        for rule in chain.rules:
            if not _refers_to_chain(rule.target, t):
                continue
            if rule.target not in g:
                g.add_node(rule.target, present=False, builtin=False)
            if g.has_edge(name, rule.target):
                g.edges[name, rule.target]["rules"].append(rule)
            else:
                g.add_edge(name, rule.target, rules=[rule])
    return g


def _refers_to_chain(target: str | None, table: Table) -> bool:
    return target is not None and (target in table.chains or target not in EXTENSION_TARGETS)


def hook_chains(rules: NodeRules, table: str) -> tuple[str, ...]:
    """Where packets enter the table: its built-in chains, or kube-proxy's hooked chains (§2.1) when no built-in
    chain of the input has a rule (kube-proxy's restore input, or a kernel's dump of only that). The same rule
    decides where `trace` enters."""
    t = rules.table(table)
    if t is None:
        return ()
    if any(chain.builtin and chain.rule_count for chain in t.chains.values()):
        return tuple(name for name in BUILTIN_CHAINS.get(table, ()) if name in t.chains)
    return KUBE_PROXY_HOOKED_CHAINS.get(table, ())


def reachable_chains(rules: NodeRules, table: str, graph: nx.DiGraph | None = None) -> set[str]:
    """The chains a packet entering the table (`hook_chains`) can be sent to, the entry chains included.

    Chains absent from the input are included when a reachable rule names them (see `missing_chains`). Pass the
    table's `jump_graph` as ``graph`` when asking several questions about one table.
    """
    g = graph if graph is not None else jump_graph(rules, table)
    roots = [name for name in hook_chains(rules, table) if name in g]
    reached = set(roots)
    for root in roots:
        reached |= nx.descendants(g, root)
    return reached


def missing_chains(rules: NodeRules, table: str, graph: nx.DiGraph | None = None) -> dict[str, list[Rule]]:
    """Chains that rules jump or go to but the input does not hold (a partial dump, e.g. one chain's
    `iptables -S KUBE-SVC-…`), each with the rules that refer to it; sorted by name."""
    g = graph if graph is not None else jump_graph(rules, table)
    missing = {}
    for name, present in sorted(g.nodes(data="present")):
        if not present:
            missing[name] = [rule for source, _ in g.in_edges(name) for rule in g.edges[source, name]["rules"]]
    return missing


def unreachable_kube_chains(rules: NodeRules, table: str, graph: nx.DiGraph | None = None) -> list[str]:
    """kube-proxy's chains (KUBE-*) that the input holds but no packet entering the table can reach: left over
    from a service or endpoint that is gone, or cut off because a jump is missing. Chains that may go unreferenced
    by design (`UNREFERENCED_BY_DESIGN`) are not listed. Sorted by name.

    On a partial dump everything looks cut off from the hooks: ask `missing_chains` first.
    """
    g = graph if graph is not None else jump_graph(rules, table)
    reached = reachable_chains(rules, table, g)
    return sorted(name for name, present in g.nodes(data="present")
                  if present and name.startswith("KUBE-") and name not in reached and name not in UNREFERENCED_BY_DESIGN)


def rule_loops(rules: NodeRules, table: str, graph: nx.DiGraph | None = None) -> list[list[str]]:
    """Chains that jump back into themselves, one loop per tangle: ``["A", "B"]`` means A → B → A.

    The kernel refuses a loop that a built-in chain reaches (iptables-restore: "Too many links"), but keeps one
    that nothing hooks, so a real dump can hold loops among left-over chains; text that never went through a kernel
    can hold any loop. One cycle per strongly connected component names every tangle;
    listing all simple cycles could take exponential time on a hostile input. Each loop starts at its smallest
    chain name; the list is sorted.
    """
    g = graph if graph is not None else jump_graph(rules, table)
    loops = []
    for component in nx.strongly_connected_components(g):
        first = min(component)
        if len(component) == 1 and not g.has_edge(first, first):
            continue
        cycle = [source for source, _ in nx.find_cycle(g.subgraph(component), source=first)]
        start = cycle.index(min(cycle))
        loops.append(cycle[start:] + cycle[:start])
    return sorted(loops)


# ------------------------------------------------------------------------------------------ the picture graph
def build_chain_graph(rules: NodeRules, table: str, roots: list[str] | None = None) -> nx.MultiDiGraph:
    """The graph of one table; with ``roots``, only what is reachable from them (a service's subgraph).

    Each edge has: rule (text), packets, bytes, probability (as written, or None), share (of the traffic
    arriving at the source chain that takes this edge, in rule order), conditional (the rule matches only some
    sources or connections). Terminal verdicts (DNAT to …, DROP, REJECT, MASQUERADE) are leaf nodes so the
    pictures show where traffic ends.
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
        if chain is not None:
            todo.extend(_add_rule_edges(g, name, chain.rules))
    return g


def _add_rule_edges(g: nx.MultiDiGraph, name: str, rules: list[Rule]) -> list[str]:
    """Add one chain's rules as edges; returns the chains they jump to, to visit next."""
    jumped_to = []
    remaining = 1.0  # of the traffic entering the chain, the part no earlier rule took
    for rule in rules:
        target = rule.target
        if not target:
            continue
        p = rule.probability
        share = remaining * p if p is not None else remaining
        when = [_condition(m) for m in rule.matches if m.option in _CONDITIONAL_OPTIONS]
        conditional = bool(when)
        if target in NON_CHAIN_TARGETS:
            if target in VERDICT_TARGETS:
                leaf = f"{target} {rule.dnat_destination}" if target == "DNAT" else f"{target} ({name})"
                g.add_node(leaf, kind="verdict", exists=True)
                _add_rule_edge(g, name, leaf, rule, p, share, conditional, when)
            continue
        _add_rule_edge(g, name, target, rule, p, share, conditional, when)
        # kube-proxy's per-service chains end in DNAT (traffic does not come back); KUBE-MARK-MASQ and the
        # like return, so what was sent there goes on to the next rule
        if not conditional and chain_kind(target) is not None:
            remaining -= share
        jumped_to.append(target)
    return jumped_to


def _condition(match) -> str:
    # the recent module's check is session affinity: a client seen before goes back to its endpoint
    return "affinity" if match.option in ("--rcheck", "--update") else match.text()


def _add_rule_edge(g: nx.MultiDiGraph, source: str, target: str, rule: Rule, probability: float | None,
                   share: float, conditional: bool, when: list[str] = ()) -> None:
    # `when`: the conditions that make the jump apply to some packets only, as written (the pictures show them)
    g.add_edge(source, target, rule=rule.text, packets=rule.packets, bytes=rule.bytes,
               probability=probability, share=share, conditional=conditional, when=" ".join(when) or None)


def nat_hooks_graph(rules: NodeRules) -> nx.MultiDiGraph:
    """Everything the nat table's hooks lead to: `graph` without a service."""
    return build_chain_graph(rules, "nat", ["PREROUTING", "OUTPUT", "POSTROUTING"])


def service_entry_rules(view: ServiceView, node: str) -> list[Rule]:
    """The nat rules by which a service's traffic enters its chains on one node (cluster IP, node port, external
    and load-balancer IPs), in the view's order."""
    return [e.entry_rule for pv in view.ports for nv in pv.nodes if nv.node == node for e in nv.entries
            if e.entry_rule is not None and e.entry_rule.table == "nat" and e.entry_rule.target]


def service_blackholes(view: ServiceView, node: str) -> list[tuple[str | None, Rule, float]]:
    """The filter rules that DROP or REJECT a service's traffic on one node (no endpoints, no local endpoints,
    source ranges), each with the nat chain where that traffic was left un-DNATed (None when no nat rule took it
    there) and the share of the entry's traffic that reaches it. The packet is not DNATed in nat, so it goes on to
    filter, where kube-proxy's rule ends it (docs/reference/kube-proxy-layout.md §2.2)."""
    out = []
    for pv in view.ports:
        for nv in pv.nodes:
            if nv.node != node:
                continue
            for e in nv.entries:
                rule = e.blackhole_rule
                if rule is None or rule.table == "nat":  # a nat DROP is already a leaf of the chain it is in
                    continue
                from_nat = e.entry_rule is not None and e.entry_rule.table == "nat" and bool(e.path)
                out.append((e.path[-1] if from_nat else None, rule, e.unmatched_share if from_nat else 1.0))
    return out


def build_service_graph(rules: NodeRules, entry_rules: list[Rule],
                        blackholes: Iterable[tuple[str | None, Rule, float]] = ()) -> nx.MultiDiGraph:
    """A service's chains on one node: what its entry rules lead to, plus the entry rules themselves, plus the
    filter rules that end what nat did not DNAT (`service_blackholes`), so a path that is dropped ends in DROP.

    KUBE-SERVICES and KUBE-NODEPORTS hold every service's entry rules, so they are not walked (the picture would be
    every service); the entry rules are drawn as edges from them instead.
    """
    g = build_chain_graph(rules, "nat", [rule.target for rule in entry_rules])
    for rule in entry_rules:
        g.add_edge(rule.chain, rule.target, rule=rule.text, packets=rule.packets, bytes=rule.bytes,
                   probability=None, share=1.0, conditional=False)
        if rule.chain == "KUBE-NODEPORTS":
            # node-port traffic gets there by KUBE-SERVICES' last rule (§2.2); drawn without its text
            g.add_edge("KUBE-SERVICES", "KUBE-NODEPORTS", rule="nodeports", packets=None, bytes=None,
                       probability=None, share=1.0, conditional=False)
    seen = set()
    for left_in, rule, share in blackholes:
        if (left_in, rule.text) in seen:
            continue
        seen.add((left_in, rule.text))
        chain = f"{rule.table} {rule.chain}"  # not a nat chain: KUBE-SERVICES is in both tables
        g.add_node(chain, kind="filter", exists=True)
        if left_in is not None and left_in in g:
            g.add_edge(left_in, chain, rule="not DNATed: on to the filter table", packets=None, bytes=None,
                       probability=None, share=share, conditional=False, note="not DNATed")
        leaf = f"{rule.target} ({chain})"
        g.add_node(leaf, kind="verdict", exists=True)
        _add_rule_edge(g, chain, leaf, rule, None, 1.0, False)
    return g


def annotate_endpoints(g: nx.MultiDiGraph, view: ServiceView, node: str) -> None:
    """Name the pod and node behind each DNAT leaf (from the API, when the input has it), for the pictures."""
    for pv in view.ports:
        for nv in pv.nodes:
            if nv.node != node:
                continue
            for e in nv.entries:
                for ep in e.endpoints:
                    leaf = f"DNAT {endpoint_string(ep.ip, ep.port)}" if ep.port is not None else None
                    if leaf in g:
                        g.nodes[leaf].update(pod=ep.pod, node=ep.node)


def traffic(g: nx.MultiDiGraph) -> int:
    """The packets counted on a graph's rules: how busy a node is for what the graph shows."""
    return sum(p for _, _, p in g.edges(data="packets") if p)


def busiest(graphs: dict[str, nx.MultiDiGraph]) -> str:
    """The node whose graph counted the most traffic; the first one on a tie (no counters, nothing sent)."""
    return max(graphs, key=lambda node: traffic(graphs[node]))


# ------------------------------------------------------------------------------------------------ entry paths
@dataclass(frozen=True, slots=True)
class EntryPath:
    """One way from an entry chain to a target chain through the picture graph."""

    chains: tuple[str, ...]  # entry first, target last
    rules: tuple[str, ...]  # the text of the rule taken at each hop (one fewer than chains)
    share: float  # of the traffic entering the entry chain, the part that takes this path (product of the hops)
    conditional: bool  # a hop matches only some sources or connections; `share` is then what it takes when it does


def entry_paths(graph: nx.MultiDiGraph, entry: str, targets: Iterable[str]) -> list[EntryPath]:
    """Every loop-free path from ``entry`` (e.g. a KUBE-SVC/KUBE-EXT chain) to each of ``targets`` (e.g. the
    KUBE-SEP chains) in a `build_chain_graph`/`build_service_graph` graph, with the share of the entering traffic
    that takes it. Two rules between the same chains (an affinity rule and a random one) are two paths. Targets
    not in the graph have no path. Sorted by target; the paths to one target in rule order."""
    wanted = [t for t in targets if t in graph and t != entry]
    if entry not in graph or not wanted:
        return []
    paths = []
    for hops in nx.all_simple_edge_paths(graph, entry, wanted):
        data = [graph.edges[hop] for hop in hops]
        paths.append(EntryPath(
            chains=(entry, *(target for _, target, _ in hops)),
            rules=tuple(d["rule"] for d in data),
            share=math.prod(d["share"] for d in data),
            conditional=any(d["conditional"] for d in data),
        ))
    # networkx walks the edges in the order they were added, which is rule order; the sort is stable
    return sorted(paths, key=lambda p: p.chains[-1])


def endpoint_chains(graph: nx.MultiDiGraph) -> list[str]:
    """The KUBE-SEP chains in a picture graph, sorted."""
    return sorted(name for name, kind in graph.nodes(data="kind") if kind == "sep")
