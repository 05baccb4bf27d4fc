"""`node-drift` between nftables-mode nodes, without the API objects: nothing says what kube-proxy should have
written, so each service port's table on one node is compared with the same port on the others, as
checks/drift.py compares iptables nodes. What must agree whatever the traffic policies: the destinations the
node handles (DNAT or drop), the cluster-wide endpoints (the `service-…` chain's; `local-…` chains and drops for
"no local endpoints" differ by design), and whether the port is rejected as having no endpoints."""

from __future__ import annotations

from collections.abc import Callable

from svcdoctor.checks.drift import Signature, node_drift
from svcdoctor.checks.findings import Finding
from svcdoctor.model.nft.explain import explain_nft_entries
from svcdoctor.model.nft.names import parse_name
from svcdoctor.model.nft.ruleset import Dnat, NftRuleset, VMap
from svcdoctor.model.nft.view import service_ports
from svcdoctor.model.rule_text import host_port, split_host_port


def nft_drift_findings(nft: dict[str, list[NftRuleset]], wanted: Callable[[str], bool],
                       service: str | None = None) -> list[Finding]:
    """node-drift for every service port the nftables nodes' tables name (one family's tables with each other)."""
    out: list[Finding] = []
    for family in ("ip", "ip6"):
        tables = {node: rs for node, ts in sorted(nft.items()) for rs in ts if rs.family == family}
        if len(tables) < 2:
            continue
        per_port: dict[str, dict[str, Signature]] = {}
        for node, rs in tables.items():
            for base, hashed in service_ports(rs).items():
                if (service is not None and hashed.service_key != service) or not wanted(hashed.service_key):
                    continue
                per_port.setdefault(hashed.svc_port_name, {})[node] = _signature(rs, base, node)
        for spn, per_node in sorted(per_port.items()):
            out.extend(node_drift(spn, per_node, list(tables)))
    return out


def _signature(rs: NftRuleset, base: str, node: str) -> Signature:
    entries = explain_nft_entries(rs, base, node)
    handled = frozenset(_dest(e) for e in entries if e.verdict in ("dnat", "drop"))
    rejects = frozenset(_dest(e) for e in entries if e.verdict == "reject")
    cluster_chain = next((name for name in rs.chains if (h := parse_name(name)) is not None
                          and h.kind == "service" and h.port_base == base), None)
    endpoints = frozenset(_endpoints(rs, cluster_chain)) if cluster_chain else frozenset()
    proof = [f"{rs.table} {cluster_chain}: {r.text}" for r in rs.chains[cluster_chain].rules][-2:] \
        if cluster_chain else []
    return (handled, endpoints, rejects), proof


def _dest(entry) -> tuple[str, str, str]:
    ip, port = split_host_port(entry.destination)
    return entry.kind, ip, port


def _endpoints(rs: NftRuleset, chain_name: str) -> list[str]:
    """Where a service chain sends new connections: its numgen split's endpoint chains' DNATs (≤1.35), or its
    own DNAT, through a numgen map or to one endpoint (1.36 on)."""
    out = []
    chain = rs.chain(chain_name)
    for rule in chain.rules if chain else ():
        for s in rule.statements:
            if isinstance(s, Dnat):
                out += [host_port(ip, port) if port is not None else ip for ip, port in s.destinations()]
            elif isinstance(s, VMap) and s.map is None:
                for _, verdict in s.elements or ():
                    if verdict.target and verdict.target != chain_name:
                        out += _endpoints(rs, verdict.target)
    return out
