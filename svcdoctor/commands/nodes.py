"""`svcdoctor nodes`: one row per node."""

from __future__ import annotations

from svcdoctor.checks.findings import check_node_health
from svcdoctor.inputs import LoadedInput
from svcdoctor.model.nft.layout import generation


def node_rows(loaded: LoadedInput) -> list[dict]:
    rows = []
    for capture in loaded.snapshot.nodes:
        rules = loaded.rules.get(capture.name)
        problems: list[str] = []
        if capture.name in loaded.failed:
            problems.append(f"unreadable: {loaded.failed[capture.name]}")
        if rules is not None:
            for f in check_node_health(capture.name, rules, capture.proxy_mode,
                                       loaded.other_backend.get(capture.name), capture.backend,
                                       nft_read=capture.name in loaded.nft):
                if f.id in ("no-kube-proxy-rules", "backend-mismatch", "stale-iptables-rules"):
                    problems.append(f.id)
        tables = loaded.nft.get(capture.name) or []
        rows.append({
            "name": capture.name,
            "role": capture.role,
            "internalIP": capture.internal_ip or (loaded.node_ips.get(capture.name) or [None])[0],
            "backend": capture.backend,
            "proxyMode": capture.proxy_mode or ("iptables" if rules is not None and rules.has_kube_proxy_rules()
                                                else None),
            "rules": _nft_rule_count(tables) if tables else rules.rule_count if rules is not None else None,
            "kubeChains": sum(len(t.chains) for t in tables) if tables
            else rules.kube_chain_count if rules is not None else None,
            # nftables mode: which of kube-proxy's rule layouts the node has (model/nft/layout.py)
            "nftLayout": generation(tables[0]) if tables else None,
            "problems": problems,
            "readVia": capture.read_via,  # docker exec | pods/exec | bundle (how the rules were read)
            "readFrom": capture.source,  # the container, pod or file
        })
    return rows


def _nft_rule_count(tables) -> int:
    """Rules in a node's kube-proxy tables plus the elements of their maps and sets, which do the work rules do in
    iptables mode (one element per service entry)."""
    return sum(len(c.rules) for t in tables for c in t.chains.values()) + \
        sum(len(s.elements) for t in tables for s in t.sets.values())
