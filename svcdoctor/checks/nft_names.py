"""`hash-mismatch` on nftables-mode nodes: kube-proxy names each chain and set it writes for a Service port by a
hash of the rest of the name (kubernetes pkg/proxy/nftables/proxier.go: hashAndTruncate; model/nft/names.py), and
each endpoint chain by the endpoint it DNATs to. A name whose hash is not that, or an endpoint chain that DNATs
somewhere else than its name says, was not written by kube-proxy (or was edited): the same finding as in iptables
mode (checks/drift.py)."""

from __future__ import annotations

from collections.abc import Callable

from svcdoctor.checks.findings import Finding, finding
from svcdoctor.model.expected import canonical_ip
from svcdoctor.model.nft.names import HashedName, hash_and_truncate, parse_name
from svcdoctor.model.nft.ruleset import Dnat, NftRuleset


def nft_name_findings(node: str, rs: NftRuleset, wanted: Callable[[str], bool],
                      service: str | None = None) -> list[Finding]:
    """hash-mismatch for every hashed chain or set of one table whose name is not kube-proxy's, for the services
    ``wanted`` chooses (or just ``service``)."""
    out = []
    for name, what in [(n, "chain") for n in rs.chains] + [(n, "set") for n in rs.sets]:
        hashed = parse_name(name)
        if hashed is None or (service is not None and hashed.service_key != service) or not wanted(hashed.service_key):
            continue
        if hashed.verified is False:
            out.append(_mismatch(node, rs, hashed, name, what))
        elif hashed.kind == "endpoint" and what == "chain":
            out.extend(_endpoint_elsewhere(node, rs, hashed, name))
    return out


def _mismatch(node: str, rs: NftRuleset, hashed: HashedName, name: str, what: str) -> Finding:
    right = f"{hashed.kind}-{hash_and_truncate(hashed.base)}"
    return finding(
        "hash-mismatch", node, hashed.service_key,
        f"{hashed.svc_port_name}: the {what} {name} on {node} ({rs.table}) is not kube-proxy's hash of its name "
        f"(kube-proxy would name it {right}): not written by kube-proxy, or renamed",
        [f"{rs.table} {what} {name}"])


def _endpoint_elsewhere(node: str, rs: NftRuleset, hashed: HashedName, name: str) -> list[Finding]:
    """An endpoint chain (≤1.35 layouts) whose DNAT goes elsewhere than the endpoint its name carries."""
    named = hashed.endpoint_address()
    chain = rs.chain(name)
    if named is None or chain is None:
        return []
    for rule in chain.rules:
        for s in rule.statements:
            if isinstance(s, Dnat) and s.elements is None and (canonical_ip(s.address or ""), s.port) != (
                    canonical_ip(named[0]), named[1]):
                return [finding(
                    "hash-mismatch", node, hashed.service_key,
                    f"{hashed.svc_port_name}: {name} on {node} ({rs.table}) DNATs to "
                    f"{s.address}{'' if s.port is None else f':{s.port}'}, not to the endpoint its name says "
                    f"({named[0]}:{named[1]}): not written by kube-proxy, or edited",
                    [f"{rs.table} {name}: {rule.text}"])]
    return []
