"""`svcdoctor trace`: one packet through one node's rules, with the service and pods it meets named."""

from __future__ import annotations

import ipaddress

from svcdoctor.errors import UsageError
from svcdoctor.inputs import LoadedInput
from svcdoctor.model import rule_text
from svcdoctor.model.cluster import ClusterModel
from svcdoctor.model.mixed_trace import trace_with_iptables
from svcdoctor.model.nft_trace import trace_nft_packet
from svcdoctor.model.service_rules import service_port_of_comment
from svcdoctor.model.trace import TraceResult, trace_packet

# TEST-NET-3 (RFC 5737): an address that is outside every cluster
OUTSIDE_CLIENT = "203.0.113.10"
PROTOCOLS = ("tcp", "udp", "sctp")


def parse_destination(dst: str, proto: str) -> tuple[str, int]:
    if proto.lower() not in PROTOCOLS:
        raise UsageError(f"unknown protocol {proto!r}; use tcp, udp or sctp")
    host, sep, port = dst.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--dst {dst!r} is not IP:PORT")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--dst {dst!r}: {host!r} is not an IP address") from None
    return host, int(port)


def run_trace(loaded: LoadedInput, src: str | None, dst: str, dport: int, protocol: str,
              node_ips: list[str] | None) -> list[TraceResult]:
    if src is not None:
        try:
            ipaddress.ip_address(src)
        except ValueError:
            raise UsageError(f"--src {src!r} is not an IP address") from None
    results = []
    known_ips = loaded.node_ips
    family = "ip6" if ":" in dst else "ip"
    nft_tables = {node: t for node, tables in loaded.nft.items() for t in tables if t.family == family}
    if ":" in dst and not loaded.rules6 and not nft_tables:
        raise UsageError(f"--dst {dst} is IPv6 but no node's ip6tables rules were read (bundle file ip6tables.txt)")
    nodes = list(loaded.rules_for(dst)) + [n for n in nft_tables if n not in loaded.rules_for(dst)]
    for node in nodes:
        ips = list(node_ips or known_ips.get(node) or [])
        iptables = loaded.rules_for(dst).get(node)
        if node in nft_tables and iptables is not None and iptables.rule_count:
            # iptables rules on an nftables node (kube-proxy's leftovers, other owners'): both run, in the
            # kernel's order (model/mixed_trace.py)
            result = trace_with_iptables(iptables, nft_tables[node], src or OUTSIDE_CLIENT, dst, dport, protocol,
                                         ips, node=node)
        elif node in nft_tables:  # nftables mode: kube-proxy's table, hook by hook
            result = trace_nft_packet(nft_tables[node], src or OUTSIDE_CLIENT, dst, dport, protocol, ips, node=node)
        elif node in loaded.nft:
            continue  # an nftables node without a table for this address family
        else:
            result = trace_packet(loaded.rules_for(dst)[node], src or OUTSIDE_CLIENT, dst, dport, protocol, ips,
                                  node=node)
        name_service(result)
        name_pods(result, loaded.cluster)
        results.append(result)
    return results


def name_service(result: TraceResult) -> None:
    """The service port the packet met: the first rule on its way whose comment names one (kube-proxy comments
    every service rule with "ns/name:port …", docs/reference/kube-proxy-layout.md §2.7)."""
    for step in result.steps:
        spn, _ = service_port_of_comment(rule_text.comment(step.rule) if step.rule else None)
        if spn:
            result.service = spn
            return


def name_pods(result: TraceResult, cluster: ClusterModel | None) -> None:
    """Each endpoint's pod and node, from the pods' IPs (a bundle without `cluster/` has none to say)."""
    if cluster is None:
        return
    for ep in result.endpoints:
        ep.pod = cluster.pods_by_ip.get(ep.ip)
        ep.pod_node = cluster.pod_nodes.get(ep.ip)
