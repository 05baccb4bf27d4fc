"""What a node does with a Service port, whatever the backend wrote it in: the routing model two sides fill in.

For each entry of the port (its cluster IP, node port, external and load-balancer IPs, per address family) a
`Route`: the verdict for new connections of the entry's clients (any client for a cluster IP, a client outside the
cluster for the others), the endpoints with their effective shares, whether they are masqueraded (always, never,
or depending on the source) and the session affinity.

- **From the rules** (`routes_from_view`): the explain walk's answer for a node (model/explain.py, the iptables
  reader; another backend's reader fills in the same `Entry` objects).
- **From the API objects and kube-proxy's settings** (`expected_routes`): kube-proxy's decisions for the port
  (model/expected.py: `_decide`, upstream's syncProxyRules up to the first rule it writes), with no rule text.

Equal routes mean the node does what kube-proxy should have made it do; `route_differences` says how they differ.
tests/test_routing.py holds the two sides equal on every one of kube-proxy's own test cases.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from svcdoctor.model.rule_text import host_port

SHARE_TOLERANCE = 1e-3  # iptables writes 1/3 as 0.33333333349; nftables' numgen splits exactly
DEFAULT_AFFINITY_SECONDS = 10800  # the API's default sessionAffinityConfig.clientIP.timeoutSeconds


@dataclass(frozen=True, slots=True)
class Route:
    verdict: str  # dnat | drop | reject | none
    endpoints: tuple[tuple[str, float], ...]  # ("ip:port", effective share), sorted by address
    masquerade: str  # always | never | conditional (for these clients, on the way to the endpoints)
    affinity_seconds: int | None = None  # ClientIP session affinity

    def same_as(self, other: Route) -> bool:
        return not route_differences(self, other)


EntryKey = tuple[str, str, str]  # (kind, family, destination): ("nodePort", "IPv4", ":30080")
PortRoutes = dict[EntryKey, Route]


def route_differences(want: Route, have: Route) -> list[str]:
    """What differs between kube-proxy's route and the node's, in words (empty when they agree)."""
    out = []
    if want.verdict != have.verdict:
        out.append(f"verdict {have.verdict} instead of {want.verdict}")
    want_eps, have_eps = dict(want.endpoints), dict(have.endpoints)
    if set(want_eps) != set(have_eps):
        if set(have_eps) - set(want_eps):
            out.append("endpoints not expected: " + ", ".join(sorted(set(have_eps) - set(want_eps))))
        if set(want_eps) - set(have_eps):
            out.append("endpoints missing: " + ", ".join(sorted(set(want_eps) - set(have_eps))))
    elif any(abs(want_eps[a] - have_eps[a]) > SHARE_TOLERANCE for a in want_eps):
        out.append("shares " + ", ".join(f"{a} {have_eps[a]:.1%}" for a in sorted(have_eps))
                   + " instead of " + ", ".join(f"{want_eps[a]:.1%}" for a in sorted(want_eps)))
    if want.verdict == "dnat" and have.verdict == "dnat" and want.masquerade != have.masquerade:
        out.append(f"masquerade {have.masquerade} instead of {want.masquerade}")
    if want.affinity_seconds != have.affinity_seconds:
        out.append(f"session affinity {have.affinity_seconds or 'none'} instead of {want.affinity_seconds or 'none'}")
    return out


# --- from the rules -----------------------------------------------------------------------------------------------

def routes_from_view(entries: Iterable) -> PortRoutes:
    """One node's routes for one port, from the explain walk's entries (model/explain.py `Entry`)."""
    out: PortRoutes = {}
    for e in entries:
        if e.kind not in ("clusterIP", "nodePort", "externalIP", "loadBalancer"):
            continue  # a partial input's entry whose address is not in it
        destination = _node_port_key(e.destination) if e.kind == "nodePort" else e.destination
        key = (e.kind, e.family, destination)
        if key in out:
            continue  # the same node port on several node addresses (nodePortAddresses): one route
        endpoints = tuple(sorted((host_port(ep.ip, ep.port), ep.probability) for ep in e.endpoints))
        out[key] = Route(e.verdict, endpoints, e.masquerade if e.verdict == "dnat" else "never",
                         e.session_affinity_seconds)
    return out


def _node_port_key(destination: str) -> str:
    # ":30080" on every node address, or "10.0.0.1:30080" with nodePortAddresses: the route is the port's
    return ":" + destination.rsplit(":", 1)[1]


# --- from the API objects and kube-proxy's settings ---------------------------------------------------------------

def expected_routes(plan, settings) -> PortRoutes:
    """kube-proxy's routes for one port on one node, from its decisions (`ExpectedServicePort` of
    model/expected.py: endpoints per chain, filter verdicts, policies), not from the rules it would write."""
    sp = plan.service_port
    family = "IPv6" if settings.ipv6 else "IPv4"
    affinity = None
    if sp.session_affinity == "ClientIP":
        affinity = sp.session_affinity_timeout or DEFAULT_AFFINITY_SECONDS
    internal = _route(plan.has_internal_endpoints, plan.internal_filter,
                      plan.local_endpoints if plan.internal_chain == plan.svl_chain else plan.cluster_endpoints,
                      _cluster_ip_masquerade(settings), affinity)
    out: PortRoutes = {("clusterIP", family, host_port(plan.cluster_ip, sp.port)): internal}
    if not (sp.node_port or plan.external_ips or plan.load_balancer_ips):
        return out  # reachable from inside only
    external = _route(plan.has_external_endpoints, plan.external_filter,
                      plan.local_endpoints if plan.external_policy_local else plan.cluster_endpoints,
                      "never" if plan.external_policy_local else "always", affinity)
    if sp.node_port:
        out[("nodePort", family, f":{sp.node_port}")] = external
    for ip in plan.external_ips:
        out[("externalIP", family, host_port(ip, sp.port))] = external
    for ip in plan.load_balancer_ips:
        out[("loadBalancer", family, host_port(ip, sp.port))] = external
    return out


def _route(has_endpoints: bool, blackhole: str | None, endpoints: list, masquerade: str,
           affinity: int | None) -> Route:
    if not has_endpoints:
        return Route((blackhole or "none").lower(), (), "never", None)
    share = 1.0 / len(endpoints)
    return Route("dnat", tuple(sorted((e.endpoint.address, share) for e in endpoints)), masquerade, affinity)


def _cluster_ip_masquerade(settings) -> str:
    """masqueradeAll marks every ClusterIP connection; a local-traffic detector (pod CIDR, interface) marks those
    from outside the pods; without one kube-proxy marks none (syncProxyRules, the KUBE-SVC masquerade rule)."""
    if settings.masquerade_all:
        return "always"
    if settings.cluster_cidr or settings.local_interface:
        return "conditional"
    return "never"
