"""Which of kube-proxy's nftables rule layouts ("generations") a table has, from the objects only one layout has
(docs/explanation/kube-proxy-nftables.md, "Generations"; kubernetes pkg/proxy/nftables/proxier.go history):

* v1.29-alpha — a plain `firewall` set checked after DNAT; no `cluster-ips` set.
* v1.30-early — `firewall-ips` verdict map, `cluster-ips`; one `endpoints-check` chain.
* v1.30-1.33 — `endpoints-check` split into `service-endpoints-check` and `nodeport-endpoints-check`; filtering
  before DNAT in `filter-prerouting` (priority -110).
* v1.34-1.35 — `filter-prerouting-pre-dnat` / `filter-output-pre-dnat` (PR #132456).
* v1.36 — no `mark-for-masquerade` chain, DNAT from the service chain through a numgen map, the
  `hairpin-connections` set (PRs #135800, #136499).
* after-v1.36 — v1.36 with a service chain that DNATs without a map (single endpoint, PR #140723).
"""

from __future__ import annotations

from svcdoctor.model.nft.names import parse_name
from svcdoctor.model.nft.ruleset import Dnat, NftRuleset

GENERATIONS = ("v1.29-alpha", "v1.30-early", "v1.30-1.33", "v1.34-1.35", "v1.36", "after-v1.36")
RELEASES = {
    "v1.29-alpha": "Kubernetes 1.29 (alpha)",
    "v1.30-early": "early Kubernetes 1.30 development",
    "v1.30-1.33": "Kubernetes 1.30 to 1.33",
    "v1.34-1.35": "Kubernetes 1.34 to 1.35",
    "v1.36": "Kubernetes 1.36",
    "after-v1.36": "Kubernetes after 1.36",
    "unknown": "a layout svcdoctor does not know",
}


def generation(rs: NftRuleset) -> str:
    chains, sets = rs.chains, rs.sets
    if "firewall" in sets and "firewall-ips" not in sets:
        return "v1.29-alpha"
    if "hairpin-connections" in sets or ("masquerading" in chains and "mark-for-masquerade" not in chains):
        return "after-v1.36" if _direct_service_dnat(rs) else "v1.36"
    if "filter-prerouting-pre-dnat" in chains or "filter-output-pre-dnat" in chains:
        return "v1.34-1.35"
    # the no-endpoint check split in two (service-/nodeport-endpoints-check) after early 1.30; the `nodeport-ips`
    # set is no sign of either: it is there or not by nodePortAddresses
    if "service-endpoints-check" in chains or "nodeport-endpoints-check" in chains:
        return "v1.30-1.33"
    if "endpoints-check" in chains or "cluster-ips" in sets:
        return "v1.30-early"
    return "unknown"


def _direct_service_dnat(rs: NftRuleset) -> bool:
    for name, chain in rs.chains.items():
        hashed = parse_name(name)
        if hashed is None or hashed.kind not in ("service", "local"):
            continue
        for rule in chain.rules:
            if any(isinstance(s, Dnat) and s.elements is None for s in rule.statements):
                return True
    return False


def describe(gen: str) -> str:
    return f"{gen} ({RELEASES.get(gen, gen)})"
