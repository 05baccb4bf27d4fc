"""How each generation of kube-proxy's nftables layout differs, as data for the generator (expected.py).

One `Layout` per generation, named as layout.py names the generation it recognises in a listing. The base-chain
and jump tables are upstream's `nftablesBaseChains` / `nftablesJumpChains` (kubernetes
pkg/proxy/nftables/proxier.go) of that generation, in upstream's order: the order of the jump rules in each base
chain is the order of that table. The flags name the rest of what changed, each with the change that made it
where it is known (docs/explanation/kube-proxy-nftables.md, "Generations").

Pure data: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# chain names (proxier.go constants)
FILTER_PREROUTING = "filter-prerouting"
FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_OUTPUT_POST_DNAT = "filter-output-post-dnat"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
SERVICES = "services"
MASQUERADING = "masquerading"
MARK_MASQ = "mark-for-masquerade"
FORWARD = "forward"
ENDPOINTS_CHECK = "endpoints-check"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_CHECK = "firewall-check"
REJECT_CHAIN = "reject-chain"


@dataclass(frozen=True, slots=True)
class BaseChain:
    name: str
    type: str  # filter | nat
    hook: str
    priority: int  # knftables writes DNATPriority(-100)/SNATPriority(100)/FilterPriority(0) plus an offset


@dataclass(frozen=True, slots=True)
class Jump:
    source: str  # the base chain
    target: str
    match: str = "ct state new"


_NAT_CHAINS = (
    BaseChain(NAT_PREROUTING, "nat", "prerouting", -100),
    BaseChain(NAT_OUTPUT, "nat", "output", -100),
    BaseChain(NAT_POSTROUTING, "nat", "postrouting", 100),
)
_NAT_JUMPS = (Jump(NAT_OUTPUT, SERVICES, ""), Jump(NAT_PREROUTING, SERVICES, ""),
              Jump(NAT_POSTROUTING, MASQUERADING, ""))


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    base_chains: tuple[BaseChain, ...]
    jumps: tuple[Jump, ...]
    # one `endpoints-check` chain for services and node ports, or `service-endpoints-check` and
    # `nodeport-endpoints-check` (the latter only on input, so it needs no `fib daddr type local`)
    split_endpoints_check: bool
    # the `cluster-ips` set and `cluster-ips-check` (reject other ports of a cluster IP, drop unallocated ones)
    cluster_ips_check: bool
    # LoadBalancerSourceRanges: a plain `firewall` set dropped in the filter chains after DNAT (v1.29), or the
    # `firewall-ips` verdict map checked before DNAT
    firewall_map: bool
    firewall_element_comment: bool  # `firewall-ips` elements carry "ns/name:port"
    forward_invalid_drop: bool  # a `forward` chain with `ct state invalid drop` (nf_conntrack_tcp_be_liberal unset)
    cluster_ip_masq_port: bool  # the cluster-IP masquerade rule also matches `<proto> dport <port>`
    # DNAT from the service chain through an anonymous numgen map, endpoint chains only for session affinity,
    # the 0x4000 mark set inline (no `mark-for-masquerade`), hairpin traffic masqueraded by the
    # `hairpin-connections` set, the cluster-IP masquerade one rule in `services`
    service_chain_dnat: bool


_V130_BASE = (
    BaseChain(FILTER_PREROUTING, "filter", "prerouting", -110),
    BaseChain(FILTER_INPUT, "filter", "input", -110),
    BaseChain(FILTER_FORWARD, "filter", "forward", -110),
    BaseChain(FILTER_OUTPUT, "filter", "output", -110),
    BaseChain(FILTER_OUTPUT_POST_DNAT, "filter", "output", -90),
) + _NAT_CHAINS

_V134_BASE = (
    BaseChain(FILTER_PREROUTING_PRE_DNAT, "filter", "prerouting", -110),
    BaseChain(FILTER_OUTPUT_PRE_DNAT, "filter", "output", -110),
    BaseChain(FILTER_INPUT, "filter", "input", 0),
    BaseChain(FILTER_FORWARD, "filter", "forward", 0),
    BaseChain(FILTER_OUTPUT, "filter", "output", 0),
) + _NAT_CHAINS

_V134_JUMPS = (
    Jump(FILTER_INPUT, NODEPORT_ENDPOINTS_CHECK),
    Jump(FILTER_INPUT, SERVICE_ENDPOINTS_CHECK),
    Jump(FILTER_FORWARD, SERVICE_ENDPOINTS_CHECK),
    Jump(FILTER_OUTPUT, SERVICE_ENDPOINTS_CHECK),
    Jump(FILTER_PREROUTING_PRE_DNAT, FIREWALL_CHECK),
    Jump(FILTER_OUTPUT_PRE_DNAT, FIREWALL_CHECK),
) + _NAT_JUMPS + (
    Jump(FILTER_FORWARD, CLUSTER_IPS_CHECK),
    Jump(FILTER_OUTPUT, CLUSTER_IPS_CHECK),
)

# Each layout as what changed from the one before it (dataclasses.replace), so the history reads in order.
_V129_ALPHA = Layout(
    # The first alpha (Kubernetes 1.29): filter chains at DNAT-1 on input/forward/output only, so the firewall
    # check sees post-DNAT addresses; fixed by PR #122614 (Jan 2024).
    name="v1.29-alpha",
    base_chains=(
        BaseChain(FILTER_INPUT, "filter", "input", -101),
        BaseChain(FILTER_FORWARD, "filter", "forward", -101),
        BaseChain(FILTER_OUTPUT, "filter", "output", -101),
    ) + _NAT_CHAINS,
    jumps=(
        Jump(FILTER_INPUT, ENDPOINTS_CHECK),
        Jump(FILTER_FORWARD, ENDPOINTS_CHECK),
        Jump(FILTER_OUTPUT, ENDPOINTS_CHECK),
        Jump(FILTER_FORWARD, FORWARD, ""),
        Jump(FILTER_INPUT, FIREWALL_CHECK),
        Jump(FILTER_OUTPUT, FIREWALL_CHECK),
        Jump(FILTER_FORWARD, FIREWALL_CHECK),
    ) + _NAT_JUMPS,
    split_endpoints_check=False,
    cluster_ips_check=False,
    firewall_map=False,
    firewall_element_comment=True,
    forward_invalid_drop=True,
    cluster_ip_masq_port=True,
    service_chain_dnat=False,
)
# After PR #122614: pre-DNAT filtering at -110 (filter-prerouting), `firewall-ips`, `cluster-ips`; seen only in a
# fork's development file (openshift/kubernetes), not tied to a release tag.
_V130_EARLY = replace(
    _V129_ALPHA,
    name="v1.30-early",
    base_chains=_V130_BASE,
    jumps=(
        Jump(FILTER_INPUT, ENDPOINTS_CHECK),
        Jump(FILTER_FORWARD, ENDPOINTS_CHECK),
        Jump(FILTER_OUTPUT, ENDPOINTS_CHECK),
        Jump(FILTER_PREROUTING, FIREWALL_CHECK),
        Jump(FILTER_OUTPUT, FIREWALL_CHECK),
    ) + _NAT_JUMPS + (
        Jump(FILTER_FORWARD, CLUSTER_IPS_CHECK),
        Jump(FILTER_OUTPUT_POST_DNAT, CLUSTER_IPS_CHECK),
    ),
    cluster_ips_check=True,
    firewall_map=True,
    forward_invalid_drop=False,
)
# Kubernetes 1.30 to 1.33: `endpoints-check` split in two. The firewall-ips element comment: kube-proxy's
# TestOverallNFTablesRules of this layout has none (upstream v1.30.3's proxier.go wrote one); modelled as the test.
_V130_133 = replace(
    _V130_EARLY,
    name="v1.30-1.33",
    jumps=(
        Jump(FILTER_INPUT, NODEPORT_ENDPOINTS_CHECK),
        Jump(FILTER_INPUT, SERVICE_ENDPOINTS_CHECK),
        Jump(FILTER_FORWARD, SERVICE_ENDPOINTS_CHECK),
        Jump(FILTER_OUTPUT, SERVICE_ENDPOINTS_CHECK),
        Jump(FILTER_PREROUTING, FIREWALL_CHECK),
        Jump(FILTER_OUTPUT, FIREWALL_CHECK),
    ) + _NAT_JUMPS + (
        Jump(FILTER_FORWARD, CLUSTER_IPS_CHECK),
        Jump(FILTER_OUTPUT_POST_DNAT, CLUSTER_IPS_CHECK),
    ),
    split_endpoints_check=True,
    firewall_element_comment=False,
)
# Kubernetes 1.34 to 1.35, PR #132456: only the firewall check before DNAT (-110), the rest at filter priority 0;
# `filter-output-post-dnat` folded into `filter-output`; the cluster-IP masquerade rule loses the port.
_V134_135 = replace(_V130_133, name="v1.34-1.35", base_chains=_V134_BASE, jumps=_V134_JUMPS,
                    cluster_ip_masq_port=False)
# Kubernetes 1.36, PRs #135800 and #136499: base chains as 1.34; DNAT from the service chain, hairpin by set.
_V136 = replace(_V134_135, name="v1.36", service_chain_dnat=True)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (_V129_ALPHA, _V130_EARLY, _V130_133, _V134_135,
                                                                  _V136)}

DEFAULT_GENERATION = "v1.34-1.35"
