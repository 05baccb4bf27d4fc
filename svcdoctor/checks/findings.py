"""Findings: stable ids and severities, and the node-wide checks every command shows.

The catalogue here is the one place that lists finding ids; docs/reference/findings.md explains each. Each id is
produced by one function, which `check` and `explain` share: per service port `checks/compare_api.py` (with the
API objects) or `checks/drift.py` (without), with `checks/port_findings.py` for what both report; node-wide
`check_node_health` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.replaced import kube_proxy_replacement
from svcdoctor.model.rules import NodeRules

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
    "proxy-mode-mismatch": ("warning", "the node runs kube-proxy in another mode than the ConfigMap says, or than "
                                       "the other nodes"),
    "stale-iptables-rules": ("error", "kube-proxy runs in nftables mode but its old iptables chains are still on "
                                      "the node"),
    "kube-proxy-replaced": ("info", "another component (Cilium, kube-router, Antrea, Calico eBPF) routes Services on "
                                    "the node instead of kube-proxy: they are not in iptables there"),
    "hash-mismatch": ("warning", "a chain name is not the hash of the service port its comment names"),
    "uneven-split": ("warning", "the probabilities do not split new connections evenly between endpoints"),
    "nft-without-json": ("info", "the node's nft has no JSON output: its kube-proxy tables were read from the text "
                                 "listing"),
    "proxy-mode-not-read": ("info", "kube-proxy runs in ipvs mode on the node (or in nftables mode, and its tables "
                                    "could not be read): svcdoctor shows no routing there"),
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


# Services whose loss breaks the whole cluster, not one application: without endpoints for the cluster's DNS
# (CoreDNS keeps kube-dns's Service name) every name lookup of every pod is rejected.
CLUSTER_CRITICAL = {"no-endpoints": frozenset({"kube-system/kube-dns"})}


def finding(fid: str, node: str | None, service: str | None, message: str, evidence=(), severity=None) -> Finding:
    """A finding of id `fid`: its severity is the catalogue's unless given, and an error whatever the catalogue
    says for a cluster-critical service (severity follows impact)."""
    sev = severity or CATALOGUE[fid][0]
    if service in CLUSTER_CRITICAL.get(fid, ()):
        sev = "error"
        message += " (the cluster's DNS: every lookup fails)"
    return Finding(fid, sev, node, service, message, [str(e) for e in evidence])


def no_endpoints_finding(service: str, spn: str, where: str, evidence=()) -> Finding:
    """`no-endpoints` for one service port ("ns/name:port"), `where` its first destination in words: worded alike by
    the iptables and the nftables comparisons, so that a cluster with nodes in both modes shows it once."""
    return finding("no-endpoints", None, service,
                   f"{spn} has no usable endpoint (no ready or serving pod in its EndpointSlices): kube-proxy rejects "
                   f"connections to {where}", evidence)


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


# how a node was read when svcdoctor itself ran nft there (live, or recorded in a bundle's node.json)
COLLECTED_VIA = ("docker exec", "pods/exec")


def nft_listing_findings(node: str, read_via: str | None, json_listing: bool, text_listing: bool) -> list[Finding]:
    """`nft-without-json` (info): svcdoctor asked the node's `nft` for JSON (`nft -j list table …`) and it had none
    (nft built without libjansson), so the text listing was read. Said only where svcdoctor ran nft (a pasted
    text dump or a hand-made bundle says nothing about the node's nft)."""
    via = (read_via or "").removeprefix("bundle (").removesuffix(")")
    if json_listing or not text_listing or via not in COLLECTED_VIA:
        return []
    return [finding("nft-without-json", node, None,
                    f"{node}'s nft has no JSON output (`nft -j` is not supported by that build); kube-proxy's tables "
                    "were read from the text of `nft list table`, which svcdoctor reads the same way",
                    [f"read via {via}"])]


def proxy_mode_findings(modes: dict[str, str], configured: str | None) -> list[Finding]:
    """Nodes whose kube-proxy mode (read from what is on them: iptables chains, the nftables table, ipvs) is not
    the ConfigMap's `mode:` (empty means iptables), or, without the ConfigMap, not the other nodes' (the most
    common mode is taken as meant)."""
    if not modes:
        return []
    if configured is not None:
        meant, why = (configured or "iptables"), "the kube-proxy ConfigMap says"
    else:
        counts: dict[str, int] = {}
        for mode in modes.values():
            counts[mode] = counts.get(mode, 0) + 1
        meant = max(sorted(counts), key=counts.get)
        if counts[meant] * 2 <= len(modes):
            return []  # no majority to tell the odd node by
        why = "the other nodes run"
    return [finding("proxy-mode-mismatch", node, None,
                    f"kube-proxy runs in {mode} mode on {node}, but {why} {meant}: Services may be routed "
                    "differently there", [f"{node}: {mode}; {why} {meant}"])
            for node, mode in sorted(modes.items()) if mode != meant]


def check_node_health(node: str, rules: NodeRules, proxy_mode: str | None = None,
                      other_backend: NodeRules | None = None, backend: str | None = None,
                      nft_read: bool = False) -> list[Finding]:
    """The cheap node-wide findings every command shows: no kube-proxy rules, rules in the wrong backend.
    ``nft_read``: kube-proxy's nftables tables were read on the node (its Services are shown from them)."""
    out: list[Finding] = []
    if nft_read:
        if rules.has_kube_proxy_rules():
            # Both hook nat at priority -100, and the kernel runs hooks of equal priority newest first
            # (net/netfilter/core.c, nf_hook_entries_grow): kube-proxy's table, made after the iptables mode's
            # chains, usually takes a new connection first, and what it does not DNAT (a Service deleted since)
            # goes on to the left-over KUBE-SERVICES, which DNATs it with whatever endpoints it had; their filter
            # rules apply whatever the order (model/mixed_trace.py; tests/lab/test_nft_lab.py shows the nat part)
            nat = rules.table("nat")
            chains = sorted(c for c in (nat.chains if nat else {})
                            if c.startswith("KUBE-") and c not in KUBELET_MARK_CHAINS)
            out.append(finding(
                "stale-iptables-rules", node, None,
                f"kube-proxy runs in nftables mode on {node}, but its iptables still holds kube-proxy's chains "
                f"({len(chains)} KUBE-* chains): left from iptables mode, they still DNAT what kube-proxy's table does "
                "not (a Service deleted since still reaches its old endpoints) and still filter packets",
                [f"nat chains: {', '.join(chains[:5])}{', …' if len(chains) > 5 else ''}"]))
        return out
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
            (f"kube-proxy runs in nftables mode on {node}, but its nftables tables could not be read there (see "
             f"the node's warnings), so this node's Service routing is not shown" if proxy_mode == "nftables" else
             f"kube-proxy runs in {proxy_mode} mode on {node}; svcdoctor reads the iptables and nftables modes' "
             f"rules, so this node's Service routing is not shown"),
            [f"kube-proxy ConfigMap: mode: {proxy_mode}"]))
    replacement = kube_proxy_replacement(rules) if not has_rules and not other_has else None
    if replacement is not None:
        name, chains = replacement
        out.append(finding(
            "kube-proxy-replaced", node, None,
            f"{node} has no kube-proxy rules and {name}'s chains: {name} routes Services there instead of kube-proxy, "
            f"so no Service is programmed in iptables on {node}",
            [f"nat chains: {', '.join(chains)}"]))
    elif not has_rules and proxy_mode in (None, "", "iptables") and not other_has:
        out.append(finding(
            "no-kube-proxy-rules", node, None,
            f"{node} has no kube-proxy rules (no KUBE-SERVICES rules): is kube-proxy running there?",
            [f"nat chains: {', '.join(sorted(nat.chains)) if nat else 'no nat table'}"]))
    return out


KUBELET_MARK_CHAINS = ("KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def _kubelet_marks(rules: NodeRules) -> set[str]:
    """kubelet's canary and hint chains: they say which backend the node's kubelet (and kind) uses."""
    return {name for t in rules.tables.values() for name in t.chains if name in KUBELET_MARK_CHAINS}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITY_RANK.get(f.severity, 9), f.id, f.node or "", f.service or ""))
