"""The picture graph of a kube-proxy nftables table: chains, the maps and sets the rules look up, and the verdicts
traffic ends in, as the same networkx MultiDiGraph `graph` draws for iptables (svcdoctor/model/graph.py), so one
set of renderers (DOT, Mermaid, SVG, JSON) draws both modes.

Nodes: chains (kind svc / svl / ext / fw / sep for kube-proxy's hashed service and endpoint chains, builtin for base
chains, chain for the rest), maps and sets (kind map / set, named "@name"), and verdict leaves ("DNAT ip:port",
"DROP (chain)", "REJECT (chain)", "MASQUERADE (chain)"). Edges: a rule's jump or goto, a rule's lookup in a named
verdict map (`… vmap @service-ips`), each map element that leads on (labelled with its key), and each branch of
a `numgen random mod N` split (share 1/N). nftables keeps no counters, so edges carry none.

For one service, only the map elements of its ports are followed: the dispatch maps hold every service's elements,
as KUBE-SERVICES holds every service's rules in iptables mode.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from svcdoctor.model.hashes import endpoint_string
from svcdoctor.model.nft.names import parse_name
from svcdoctor.model.nft.ruleset import Dnat, Element, Masquerade, Match, NftRuleset, Rule, Verdict, VMap

# kube-proxy's hashed chains by the kinds the pictures colour (render/graph_format.py KIND_COLOUR)
HASHED_KINDS = {"service": "svc", "local": "svl", "external": "ext", "firewall": "fw", "endpoint": "sep"}
# The chains that hold kube-proxy's lookups of the dispatch maps: a service's picture starts at them.
DISPATCH_CHAINS = ("services", "service-endpoints-check", "nodeport-endpoints-check", "endpoints-check",
                   "firewall-check")
# Verdicts that end the packet's way through the table (return/continue/accept go on elsewhere: not drawn).
TERMINAL_VERDICTS = ("drop", "reject")

ElementFilter = Callable[[str, Element], bool]  # (map name, element) -> follow it?


def _every_element(_map: str, _element: Element) -> bool:
    return True


def table_graph(rs: NftRuleset, roots: list[str] | None = None,
                follow: ElementFilter = _every_element) -> nx.MultiDiGraph:
    """The graph of one table; with ``roots``, only what is reachable from them, following the map elements that
    ``follow`` accepts."""
    g = nx.MultiDiGraph()
    todo = list(roots) if roots is not None else list(rs.chains)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("@"):
            todo.extend(_add_map(g, rs, name, follow))
        else:
            todo.extend(_add_chain(g, rs, name))
    return g


def service_key_graph(rs: NftRuleset, service_key: str) -> nx.MultiDiGraph:
    """`service_graph` of a service named "ns/name": its ports as the table names them (model/nft/view.py)."""
    from svcdoctor.model.nft.view import ports_of_service

    ports = [h for _, h in ports_of_service(rs, service_key)]
    return service_graph(rs, {h.port_base for h in ports}, {h.svc_port_name for h in ports})


def service_graph(rs: NftRuleset, port_bases: set[str], svc_port_names: set[str]) -> nx.MultiDiGraph:
    """One service's part of a table: the dispatch chains, the elements of its ports in their maps (those of the
    no-endpoint maps found by their "ns/name:port" comment), and every chain and verdict they lead to."""

    def mine(_map: str, element: Element) -> bool:
        if element.comment in svc_port_names:
            return True
        target = element.value.target if isinstance(element.value, Verdict) else None
        hashed = parse_name(target or "")
        return hashed is not None and hashed.port_base in port_bases

    g = table_graph(rs, [c for c in DISPATCH_CHAINS if c in rs.chains], mine)
    _prune_other_services(g)
    return g


def _add_chain(g: nx.MultiDiGraph, rs: NftRuleset, name: str) -> list[str]:
    """One chain and its rules' edges; returns what they lead to, to visit next."""
    chain = rs.chain(name)
    g.add_node(name, kind=_chain_kind(name, chain is not None and chain.is_base),
               rules=len(chain.rules) if chain else 0, exists=chain is not None)
    if chain is None:
        return []
    leads_to: list[str] = []
    remaining = 1.0  # of the traffic entering the chain, the part no earlier rule took
    for rule in chain.rules:
        conditional, when = _conditions(rule)
        share = remaining
        for statement in rule.statements:
            if isinstance(statement, VMap):
                leads_to += _add_vmap(g, rs, name, rule, statement, share, conditional, when)
            elif isinstance(statement, Dnat):
                _add_dnat(g, name, rule, statement, share, conditional, when)
            elif isinstance(statement, Masquerade):
                _leaf_edge(g, name, f"MASQUERADE ({name})", rule, share, conditional, when)
            elif isinstance(statement, Verdict):
                if statement.target:
                    _edge(g, name, statement.target, rule, share, conditional, when)
                    leads_to.append(statement.target)
                elif statement.kind in TERMINAL_VERDICTS:
                    _leaf_edge(g, name, f"{statement.kind.upper()} ({name})", rule, share, conditional, when)
        if not conditional and _ends_here(rule, rs):
            remaining = 0.0
    return leads_to


def _add_vmap(g, rs: NftRuleset, chain: str, rule: Rule, vmap: VMap, share: float, conditional: bool,
              when: str | None) -> list[str]:
    if vmap.map is not None:
        node = f"@{vmap.map}"
        _edge(g, chain, node, rule, share, conditional, when)
        return [node]
    # an anonymous verdict map: kube-proxy's `numgen random mod N vmap { i : goto endpoint-… }` split (≤ 1.35)
    branches = vmap.elements or []
    targets = []
    for key, verdict in branches:
        if verdict.target:
            g.add_edge(chain, verdict.target, rule=f"{' . '.join(vmap.key)} {key}", packets=None, bytes=None,
                       probability=None, share=share / len(branches), conditional=conditional, when=when)
            targets.append(verdict.target)
    return targets


def _add_dnat(g, chain: str, rule: Rule, dnat: Dnat, share: float, conditional: bool, when: str | None) -> None:
    destinations = dnat.destinations()
    for address, port in destinations:
        leaf = f"DNAT {endpoint_string(address, port)}" if port is not None else f"DNAT {address}"
        _leaf_edge(g, chain, leaf, rule, share / len(destinations), conditional, when)


def _add_map(g: nx.MultiDiGraph, rs: NftRuleset, node: str, follow: ElementFilter) -> list[str]:
    """A named map and the elements of it that are followed, each an edge labelled with its key."""
    nmap = rs.set(node)
    g.add_node(node, kind="map" if nmap is None or nmap.is_map else "set", exists=nmap is not None,
               rules=len(nmap.elements) if nmap else 0)
    leads_to = []
    for element in nmap.elements if nmap is not None else ():
        if not isinstance(element.value, Verdict) or not follow(node[1:], element):
            continue
        key = Element(element.key).text()
        verdict = element.value
        if verdict.target:
            g.add_edge(node, verdict.target, rule=key, note=key, packets=None, bytes=None, probability=None, share=1.0,
                       conditional=False, when=None)
            leads_to.append(verdict.target)
        elif verdict.kind in TERMINAL_VERDICTS:
            leaf = f"{verdict.kind.upper()} ({node})"
            g.add_node(leaf, kind="verdict", exists=True)
            g.add_edge(node, leaf, rule=key, note=key, packets=None, bytes=None, probability=None, share=1.0,
                       conditional=False, when=None)
    return leads_to


def _chain_kind(name: str, base: bool) -> str:
    if base:
        return "builtin"
    hashed = parse_name(name)
    return HASHED_KINDS.get(hashed.kind, "chain") if hashed is not None else "chain"


def _conditions(rule: Rule) -> tuple[bool, str | None]:
    """Whether a rule applies to some packets only (a source match, an affinity set), and those conditions as
    written. Destination matches (`ip daddr 10.96.0.10`) select the traffic the edge is about: not conditions."""
    when = []
    for s in rule.statements:
        if not isinstance(s, Match) or not any("saddr" in k or k == "fib saddr type" for k in s.key):
            continue
        when.append("affinity" if isinstance(s.value, str) and s.value.startswith("@affinity-") else s.text())
    return bool(when), " ".join(when) or None


def _ends_here(rule: Rule, rs: NftRuleset) -> bool:
    """Whether the traffic a rule takes does not come back to the next rule: a goto, a terminal verdict, DNAT, a
    verdict map lookup that sends it on (kube-proxy's dispatch maps and splits end in goto), a jump into a hashed
    service chain (which DNATs). A jump to mark-for-masquerade returns."""
    for s in rule.statements:
        if isinstance(s, Verdict):
            if s.kind == "goto" or s.kind in TERMINAL_VERDICTS:
                return True
            if s.kind == "jump" and parse_name(s.target or "") is not None:
                return True
        if isinstance(s, Dnat) or (isinstance(s, VMap) and s.map is None):
            return True
    return False


def _edge(g, source: str, target: str, rule: Rule, share: float, conditional: bool, when: str | None) -> None:
    g.add_edge(source, target, rule=rule.text, packets=None, bytes=None, probability=None, share=share,
               conditional=conditional, when=when)


def _leaf_edge(g, source: str, leaf: str, rule: Rule, share: float, conditional: bool, when: str | None) -> None:
    g.add_node(leaf, kind="verdict", exists=True)
    _edge(g, source, leaf, rule, share, conditional, when)


def _prune_other_services(g: nx.MultiDiGraph) -> None:
    """Keep what the service's map elements lead to and the way there; drop the dispatch chains and maps that
    lead to none of it (e.g. `firewall-check` for a service without source ranges)."""
    reached = {b for a, b in g.edges() if g.nodes[a].get("kind") in ("map", "set")}
    keep = set(reached)
    for node in reached:
        keep |= nx.descendants(g, node) | nx.ancestors(g, node)
    g.remove_nodes_from([n for n in list(g) if n not in keep])
