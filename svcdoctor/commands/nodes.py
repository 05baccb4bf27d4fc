"""`svcdoctor nodes`: one row per node."""

from __future__ import annotations

from svcdoctor.checks.findings import check_node_health
from svcdoctor.inputs import LoadedInput


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
                if f.id in ("no-kube-proxy-rules", "backend-mismatch"):
                    problems.append(f.id)
        rows.append({
            "name": capture.name,
            "role": capture.role,
            "internalIP": capture.internal_ip or (loaded.node_ips.get(capture.name) or [None])[0],
            "backend": capture.backend,
            "proxyMode": capture.proxy_mode or ("iptables" if rules is not None and rules.has_kube_proxy_rules()
                                                else None),
            "rules": rules.rule_count if rules is not None else None,
            "kubeChains": rules.kube_chain_count if rules is not None else None,
            "problems": problems,
            "readVia": capture.read_via,  # docker exec | pods/exec | bundle (how the rules were read)
            "readFrom": capture.source,  # the container, pod or file
        })
    return rows
