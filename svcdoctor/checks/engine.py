"""`check`'s engine over a loaded input: which nodes are checked and with which proxy settings, and the findings for
one service (what `explain` shows, from the same functions that `check` runs over every service)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from svcdoctor.checks.compare_api import diff_nodes
from svcdoctor.checks.drift import NodeInput, compare_nodes
from svcdoctor.checks.findings import Finding, dedupe_findings, sort_findings
from svcdoctor.model.proxy_settings import ProxySettings, node_settings

if TYPE_CHECKING:
    from svcdoctor.inputs import LoadedInput


def check_service(loaded: LoadedInput, service: str) -> list[Finding]:
    """`check`'s per-service findings for one service ("ns/name"), on the same engine and with the same answers,
    reading only that service's rules: what `explain` shows. Node-wide findings are not included."""
    checked = [n for n in sorted(loaded.rules) if n not in skipped_nodes(loaded)]
    cluster = loaded.cluster
    if cluster is None:
        found, _ = compare_nodes(nodes_without_api(loaded, checked), service=service)
    else:
        ports = [sp for sp in cluster.service_ports if sp.service_key == service]
        found = diff_nodes(nodes_with_api(loaded, checked, {}), cluster, ports,
                           lambda orphan_of: orphan_of == service, service=service)
    return dedupe_findings(sort_findings([f for f in found if f.service == service]))


def skipped_nodes(loaded: LoadedInput) -> dict[str, str]:
    """Nodes whose services are not checked: ipvs and nftables modes keep (some of) their rules elsewhere, so
    their iptables rules say nothing per service."""
    captures = {n.name: n for n in loaded.snapshot.nodes}
    return {n: f"kube-proxy runs in {captures[n].proxy_mode} mode there" for n in sorted(loaded.rules)
            if (captures[n].proxy_mode or "iptables") != "iptables"}


def nodes_without_api(loaded: LoadedInput, checked: list[str]) -> list[NodeInput]:
    return [NodeInput(n, loaded.rules[n], None, "") for n in checked]  # no settings needed: nothing planned


def nodes_with_api(loaded: LoadedInput, checked: list[str], overrides: dict[str, ProxySettings]
                    ) -> list[NodeInput]:
    """Each node with its proxy settings: given, else from kube-proxy's ConfigMap, else read from its rules."""
    api = loaded.snapshot.api
    pod_cidrs = {_name(item): list((item.get("spec") or {}).get("podCIDRs") or []) for item in api.nodes or []}
    inputs: list[NodeInput] = []
    for node in checked:
        if node in overrides:
            inputs.append(NodeInput(node, loaded.rules[node], overrides[node], "given"))
        else:
            s, source = node_settings(node, loaded.rules[node], _addresses(loaded.node_ips.get(node, [])),
                                      api.kube_proxy_config, pod_cidrs.get(node))
            inputs.append(NodeInput(node, loaded.rules[node], s, source))
    return inputs


def _addresses(ips: list[str]) -> list[str]:
    # node.json and the Node objects are untrusted input: an address that is not one is left out, not fatal
    out = []
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except (ValueError, TypeError):
            continue
        out.append(ip)
    return out


def _name(item: dict) -> str:
    return (item.get("metadata") or {}).get("name") or ""
