"""Nodes where another component routes Services instead of kube-proxy: their iptables hold that component's
chains and none of kube-proxy's, so nothing about a Service can be read there, and that is not a fault."""

from __future__ import annotations

from svcdoctor.model.rules import NodeRules

# Chains that name the component routing Services when kube-proxy does not (its own chains, as their code writes
# them: cilium pkg/datapath/iptables, kube-router pkg/controllers/proxy, antrea pkg/agent/route, calico felix).
REPLACEMENT_CHAIN_PREFIXES = (
    ("CILIUM_", "Cilium"),
    ("KUBE-ROUTER-", "kube-router"),
    ("ANTREA-", "Antrea"),
    ("cali-", "Calico (eBPF dataplane)"),
)


def kube_proxy_replacement(rules: NodeRules) -> tuple[str, list[str]] | None:
    """(name, its chains) when a node without kube-proxy rules has another Service router's chains."""
    names = [c for t in rules.tables.values() for c in t.chains]
    for prefix, name in REPLACEMENT_CHAIN_PREFIXES:
        chains = sorted(c for c in names if c.startswith(prefix))
        if chains:
            return name, chains[:5] + (["…"] if len(chains) > 5 else [])
    return None
