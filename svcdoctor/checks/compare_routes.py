"""Findings from comparing routes (model/routing.py): what kube-proxy should make a node do with a Service port
against what the node's rules do, whatever backend they are written in.

The iptables comparison (checks/compare_api.py) reads the rules line by line and also names wrong chain names and
rules; this one needs only the routes, so any backend whose reader fills in the explain walk's entries is checked
by it (and on iptables nodes it gives the same verdicts: tests/test_routing.py). Each difference maps to the
finding id that `check` uses for it.
"""

from __future__ import annotations

from svcdoctor.checks.findings import Finding, finding
from svcdoctor.checks.port_findings import UNEVEN_TOLERANCE
from svcdoctor.model.routing import PortRoutes, Route


def compare_routes(node: str, service: str, port_name: str, want: PortRoutes, have: PortRoutes,
                   masquerade_known: bool = True) -> list[Finding]:
    """Findings for one service port on one node (`service` "ns/name", `port_name` "ns/name:port").
    `masquerade_known`: whether the settings that decide a cluster IP's masquerading (kube-proxy's pod CIDR or
    interface, masqueradeAll) are known; without them that one comparison is left out."""
    out: list[Finding] = []
    for key in sorted(want.keys() - have.keys()):
        kind, family, destination = key
        if want[key].verdict == "none":
            continue
        out.append(finding("missing-entry", node, service,
                           f"{port_name}: {node} has no rule for {kind} {destination} ({family})"))
    for key in sorted(have.keys() - want.keys()):
        kind, family, destination = key
        out.append(finding("stale-entry", node, service,
                           f"{port_name}: {node} still routes {kind} {destination} ({family}), which the Service "
                           "no longer has"))
    for key in sorted(want.keys() & have.keys()):
        out += _compare_route(node, service, port_name, key, want[key], have[key],
                              masquerade_known or key[0] != "clusterIP")
    return out


def _compare_route(node: str, service: str, port_name: str, key, want: Route, have: Route,
                   masquerade_known: bool = True) -> list[Finding]:
    kind, _, destination = key
    where = f"{port_name} via {kind} {destination}"
    out: list[Finding] = []
    want_eps, have_eps = dict(want.endpoints), dict(have.endpoints)
    for address in sorted(have_eps.keys() - want_eps.keys()):
        out.append(finding("stale-endpoint", node, service,
                           f"{where}: {node} still sends traffic to {address}, which kube-proxy would not "
                           "(no EndpointSlice lists it for this path)"))
    for address in sorted(want_eps.keys() - have_eps.keys()):
        out.append(finding("missing-endpoint", node, service,
                           f"{where}: endpoint {address} is in the EndpointSlices but {node} does not route to it"))
    if want_eps.keys() == have_eps.keys() and have_eps:
        worst = max(have_eps, key=lambda a: abs(have_eps[a] - want_eps[a]))
        if abs(have_eps[worst] - want_eps[worst]) > UNEVEN_TOLERANCE:
            shares = ", ".join(f"{a} {have_eps[a]:.1%}" for a in sorted(have_eps))
            out.append(finding("uneven-split", node, service,
                               f"{where}: endpoints get {shares} instead of {want_eps[worst]:.1%} each"))
    policy = []
    if want.verdict != have.verdict and not (want_eps.keys() ^ have_eps.keys()):
        policy.append(f"{have.verdict} instead of {want.verdict}")
    if masquerade_known and want.verdict == have.verdict == "dnat" and want.masquerade != have.masquerade:
        policy.append(f"masquerade {have.masquerade} instead of {want.masquerade}")
    if want.affinity_seconds != have.affinity_seconds:
        policy.append(f"session affinity {have.affinity_seconds or 'none'} instead of "
                      f"{want.affinity_seconds or 'none'}")
    if policy:
        out.append(finding("policy-mismatch", node, service, f"{where}: {node} does " + "; ".join(policy)))
    return out
