"""Findings: stable ids, severities, and the checks that need one node's rules plus the API objects.

The catalogue here is the one place that lists finding ids; docs/reference/findings.md explains each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.explain import ServiceView
from svcdoctor.model.hashes import chain_kind, chain_suffix, endpoint_hash, service_hash
from svcdoctor.model.rules import NodeRules
from svcdoctor.model.service_rules import service_port_of_comment

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}

# id -> (default severity, one-line meaning)
CATALOGUE: dict[str, tuple[str, str]] = {
    "no-endpoints": ("warning", "the service port has no usable endpoint: kube-proxy REJECTs its traffic"),
    "etp-local-no-local-endpoints": (
        "warning",
        "externalTrafficPolicy: Local and no local pod on this node: external traffic here is dropped",
    ),
    "itp-local-no-local-endpoints": (
        "warning",
        "internalTrafficPolicy: Local and no local pod on this node: cluster traffic from here is dropped",
    ),
    "stale-endpoint": ("error", "the node routes to an endpoint the EndpointSlices no longer list"),
    "missing-endpoint": ("error", "an endpoint the EndpointSlices list has no rule on the node"),
    "missing-service-rules": ("error", "a service with usable endpoints has no rules on the node"),
    "orphan-chain": ("warning", "a kube-proxy chain nothing jumps to, or that belongs to no known service"),
    "node-drift": ("warning", "nodes disagree about the same service port"),
    "backend-mismatch": ("error", "kube-proxy's rules are in the iptables backend the node does not use, or in both"),
    "no-kube-proxy-rules": ("error", "the node has no kube-proxy rules at all"),
    "hash-mismatch": ("warning", "a chain name is not the hash of the service port its comment names"),
    "uneven-split": ("warning", "the probabilities do not split new connections evenly between endpoints"),
    "proxy-mode-not-read": ("info", "kube-proxy runs in ipvs or nftables mode on the node: svcdoctor reads iptables mode"),
    "policy-mismatch": (
        "error",
        "the node applies a traffic policy, session affinity or source ranges other than the Service's",
    ),
    "missing-entry": ("error", "a destination of the service (cluster IP, node port, external or LB IP) has no rule "
                               "on the node"),
    "stale-entry": ("warning", "the node still routes a destination the Service no longer has (old IP or port)"),
}


@dataclass(slots=True)
class Finding:
    id: str
    severity: str
    node: str | None
    service: str | None
    message: str
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "severity": self.severity,
            "node": self.node,
            "service": self.service,
            "message": self.message,
            "evidence": list(self.evidence),
        }


def finding(fid: str, node: str | None, service: str | None, message: str, evidence=(), severity=None) -> Finding:
    sev = severity or CATALOGUE[fid][0]
    return Finding(fid, sev, node, service, message, [str(e) for e in evidence])


def _rule_evidence(rule) -> str:
    counters = f"[{rule.packets}:{rule.bytes}] " if rule.packets is not None else ""
    return f"{rule.table}: {counters}{rule.text}"


def usable_endpoints(sp: ServicePort) -> list:
    """Endpoints kube-proxy would use cluster-wide: ready ones, else serving+terminating ones (layout §2.3)."""
    ready = [e for e in sp.endpoints if e.ready]
    return ready or [e for e in sp.endpoints if e.serving and e.terminating]


def check_service_view(view: ServiceView, cluster: ClusterModel | None) -> list[Finding]:
    """Findings about one service on every node, from what `explain` worked out."""
    out: list[Finding] = []
    for pv in view.ports:
        spn = pv.svc_port_name
        svc_label = f"{view.namespace}/{view.name}"
        api = pv.api
        for nv in pv.nodes:
            for entry in nv.entries:
                rule = entry.blackhole_rule
                if rule is not None:
                    _, what = service_port_of_comment(rule.comment)
                    counted = (rule.packets or 0) > 0
                    if what == "no-endpoints" and entry.kind == "clusterIP":
                        out.append(finding(
                            "no-endpoints", nv.node, svc_label,
                            f"{spn} has no endpoints: connections to {entry.destination} are rejected",
                            [_rule_evidence(rule)]))
                    elif what == "no-local-endpoints" and entry.kind == "clusterIP":
                        out.append(finding(
                            "itp-local-no-local-endpoints", nv.node, svc_label,
                            f"{spn} has internalTrafficPolicy Local and no pod on {nv.node}: connections from this "
                            f"node to {entry.destination} are dropped"
                            + (f" ({rule.packets} packets dropped so far)" if counted else ""),
                            [_rule_evidence(rule)], "error" if counted else None))
                    elif what == "no-local-endpoints" and entry.kind == "nodePort":
                        out.append(finding(
                            "etp-local-no-local-endpoints", nv.node, svc_label,
                            f"{spn} has externalTrafficPolicy Local and no pod on {nv.node}: NodePort "
                            f"{entry.destination} on this node drops external clients"
                            + (f" ({rule.packets} packets dropped so far)" if counted else ""),
                            [_rule_evidence(rule)] + ([_rule_evidence(entry.entry_rule)]
                                                      if entry.entry_rule is not rule else []),
                            "error" if counted else None))
                    elif what == "no-local-endpoints" and counted:
                        out.append(finding(
                            "etp-local-no-local-endpoints", nv.node, svc_label,
                            f"{spn}: {entry.kind} {entry.destination} on {nv.node} drops external clients "
                            f"({rule.packets} packets so far): no local pod",
                            [_rule_evidence(rule)], "error"))
                _check_split(out, nv.node, svc_label, spn, entry)
            if api is not None and cluster is not None:
                _check_endpoints_against_api(out, nv, api, svc_label)
        # endpoints the API does not know, seen with no API: nothing to compare; node drift instead
        if api is None and len(pv.nodes) > 1:
            _check_drift(out, pv, svc_label)
    # a service with no endpoints is reported once per node; keep only distinct messages per node
    return dedupe_findings(out)


def _check_split(out: list[Finding], node: str, svc: str, spn: str, entry) -> None:
    eps = entry.endpoints
    if len(eps) < 2 or entry.verdict != "dnat":
        return
    total = sum(e.probability for e in eps)
    if total <= 0:
        return
    even = 1.0 / len(eps)
    worst = max(eps, key=lambda e: abs(e.probability / total - even))
    if abs(worst.probability / total - even) > 0.01:
        shares = ", ".join(f"{e.ip}:{e.port} {e.probability / total:.1%}" for e in eps)
        out.append(finding(
            "uneven-split", node, svc,
            f"{spn} via {entry.kind} {entry.destination}: endpoints get {shares} instead of {even:.1%} each",
            [_rule_evidence(r) for e in eps for r in e.jump_rules]))


def _check_endpoints_against_api(out: list[Finding], nv, api: ServicePort, svc: str) -> None:
    # only the address families whose rules were read: ip6tables not collected says nothing of IPv6 endpoints
    families = getattr(nv, "families", {"IPv4"})
    expected = {e.address for e in usable_endpoints(api) if ("IPv6" if ":" in e.ip else "IPv4") in families}
    seen: dict[str, object] = {}
    for entry in nv.entries:
        for ep in entry.endpoints:
            addr = f"[{ep.ip}]:{ep.port}" if ":" in ep.ip else f"{ep.ip}:{ep.port}"
            seen.setdefault(addr, ep)
    for addr, ep in sorted(seen.items()):
        if addr not in expected:
            out.append(finding(
                "stale-endpoint", nv.node, svc,
                f"{api.svc_port_name}: {nv.node} still sends traffic to {addr}, which no EndpointSlice lists "
                f"(an old pod?)",
                [_rule_evidence(ep.dnat_rule)] if ep.dnat_rule else []))
    if not nv.entries and expected:
        out.append(finding(
            "missing-service-rules", nv.node, svc,
            f"{api.svc_port_name} has {len(expected)} usable endpoint(s) but no rules on {nv.node}",
            [f"expected chain KUBE-SVC-{service_hash(api.svc_port_name, api.protocol)}"]))
        return
    cluster_entry = next((e for e in nv.entries if e.kind == "clusterIP" and e.verdict == "dnat"), None)
    if cluster_entry is not None and not api.itp_local:
        for addr in sorted(expected - set(seen)):
            out.append(finding(
                "missing-endpoint", nv.node, svc,
                f"{api.svc_port_name}: endpoint {addr} is in the EndpointSlices but {nv.node} has no rule for it",
                [f"expected chain KUBE-SEP-{endpoint_hash(api.svc_port_name, api.protocol, addr)}"]))


def _endpoint_set(nv) -> frozenset[str]:
    return frozenset(f"{ep.ip}:{ep.port}" for e in nv.entries if e.kind == "clusterIP" for ep in e.endpoints)


def _check_drift(out: list[Finding], pv, svc: str) -> None:
    sets = {nv.node: _endpoint_set(nv) for nv in pv.nodes}
    distinct = set(sets.values())
    if len(distinct) <= 1:
        return
    # the majority view is taken as the reference; the others drift from it
    counts: dict[frozenset, int] = {}
    for s in sets.values():
        counts[s] = counts.get(s, 0) + 1
    reference = max(counts, key=counts.get)
    for node, s in sets.items():
        if s == reference:
            continue
        extra, missing = sorted(s - reference), sorted(reference - s)
        detail = "; ".join(filter(None, [
            f"only here: {', '.join(extra)}" if extra else "",
            f"missing here: {', '.join(missing)}" if missing else "",
        ]))
        out.append(finding(
            "node-drift", node, svc,
            f"{pv.svc_port_name}: {node} disagrees with the other nodes about its endpoints ({detail})",
            [f"{n}: {', '.join(sorted(v)) or 'no endpoints'}" for n, v in sets.items()]))


def dedupe_findings(findings: list[Finding]) -> list[Finding]:
    """The same finding reported twice (one per entry of a port, say) is shown once."""
    seen = set()
    out = []
    for f in findings:
        key = (f.id, f.node, f.service, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def check_node_health(node: str, rules: NodeRules, proxy_mode: str | None = None,
                      other_backend: NodeRules | None = None, backend: str | None = None) -> list[Finding]:
    """The cheap node-wide findings every command shows: no kube-proxy rules, rules in the wrong backend."""
    out: list[Finding] = []
    nat = rules.table("nat")
    has_rules = rules.has_kube_proxy_rules()
    other_has = other_backend is not None and other_backend.has_kube_proxy_rules()
    if other_has:
        other = "legacy" if backend == "nft" else "nft" if backend == "legacy" else "other"
        where = "in both backends" if has_rules else f"only in the {other} backend"
        out.append(finding(
            "backend-mismatch", node, None,
            f"kube-proxy's rules on {node} are {where}; the node uses {backend or 'the other'} "
            f"(services may work on some nodes only)",
            rules.backend_warnings + [f"{other} backend: {other_backend.kube_chain_count} KUBE-* chains"]))
    elif has_rules and other_backend is not None and _kubelet_marks(other_backend) and not _kubelet_marks(rules):
        # kubelet (and kind's iptables choice) went one way, kube-proxy the other: both backends' hooks run, in
        # an order nobody chose (kubernetes/kubernetes#82361, iptables-wrappers#2)
        other = "legacy" if backend == "nft" else "nft" if backend == "legacy" else "other"
        out.append(finding(
            "backend-mismatch", node, None,
            f"kube-proxy's rules on {node} are in the {backend or 'one'} backend but kubelet's chains are in the "
            f"{other} backend: the node's iptables users disagree",
            rules.backend_warnings + [f"{other} backend: {', '.join(sorted(_kubelet_marks(other_backend)))}"]))
    elif rules.backend_warnings and not has_rules:
        out.append(finding(
            "backend-mismatch", node, None,
            f"{node} has no kube-proxy rules in the backend read, and iptables says the other backend has tables",
            rules.backend_warnings))
    if proxy_mode not in (None, "", "iptables"):
        out.append(finding(
            "proxy-mode-not-read", node, None,
            f"kube-proxy runs in {proxy_mode} mode on {node}; svcdoctor reads the iptables mode's rules, so this "
            f"node's Service routing is not shown",
            [f"kube-proxy ConfigMap: mode: {proxy_mode}"]))
    if not has_rules and proxy_mode in (None, "", "iptables") and not other_has:
        out.append(finding(
            "no-kube-proxy-rules", node, None,
            f"{node} has no kube-proxy rules (no KUBE-SERVICES rules): is kube-proxy running there?",
            [f"nat chains: {', '.join(sorted(nat.chains)) if nat else 'no nat table'}"]))
    return out


KUBELET_MARK_CHAINS = ("KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def _kubelet_marks(rules: NodeRules) -> set[str]:
    """kubelet's canary and hint chains: they say which backend the node's kubelet (and kind) uses."""
    return {name for t in rules.tables.values() for name in t.chains if name in KUBELET_MARK_CHAINS}


def chain_hash_findings(node: str, chain) -> list[Finding]:
    """Cross-check a hashed chain's name with the service port (and endpoint) its comments name (layout §1.2)."""
    kind = chain_kind(chain.name)
    if kind is None:
        return []
    suffix = chain_suffix(chain.name)
    for rule in chain.rules[:4]:
        spn, what = service_port_of_comment(rule.comment)
        if not spn:
            continue
        proto = (rule.value("-p") or "").lower()
        if kind == "sep":
            if rule.target != "DNAT" or not proto:
                continue
            dest = rule.dnat_destination or ""
            if endpoint_hash(spn, proto, dest) == suffix:
                return []
            return [finding(
                "hash-mismatch", node, spn.split(":")[0],
                f"{chain.name} is not the hash of {spn} {proto} {dest}: not written by kube-proxy, or renamed",
                [_rule_evidence(rule)])]
        if what in ("clusterIP", "endpoint", "ext", "loadBalancer"):
            # rules that jump to endpoints carry no -p: any of kube-proxy's protocols will do
            protocols = [proto] if proto else ["tcp", "udp", "sctp"]
            if any(service_hash(spn, p) == suffix for p in protocols):
                return []
            return [finding(
                "hash-mismatch", node, spn.split(":")[0],
                f"{chain.name} is not the hash of {spn} {'/'.join(protocols)}: not written by kube-proxy, or renamed",
                [_rule_evidence(rule)])]
    return []


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_RANK.get(f.severity, 9), f.id, f.node or "", f.service or ""))
