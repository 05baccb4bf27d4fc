"""`svcdoctor check`: every service port on every node; findings grouped by severity.

With the API objects, each node's rules are compared with what kube-proxy would program there
(`checks/compare_api.py`); without them, the nodes are compared with each other (`checks/drift.py`). Node-wide
trouble (no kube-proxy rules, rules in the wrong iptables backend) comes from `checks/findings.py`.
"""

from __future__ import annotations

import gc
import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from svcdoctor.checks.compare_api import diff_nodes
from svcdoctor.checks.drift import NodeInput, compare_nodes
from svcdoctor.checks.findings import (
    SEVERITY_RANK,
    Finding,
    check_node_health,
    dedupe_findings,
    sort_findings,
)
from svcdoctor.commands.inputs import LoadedInput
from svcdoctor.exit_codes import UsageError
from svcdoctor.model.proxy_settings import ProxySettings, node_settings


@dataclass(slots=True)
class CheckResult:
    findings: list[Finding]
    services: int
    nodes: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    service_ports: int = 0
    settings: dict[str, str] = field(default_factory=dict)  # node -> where its proxy settings came from
    api: bool = False  # compared with the API objects (else: nodes with each other)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why its services were not checked

    @property
    def summary(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[f.severity] = out.get(f.severity, 0) + 1
        return out


def run_check(
    loaded: LoadedInput,
    namespace: str | None = None,
    selector: str | None = None,
    settings: dict[str, ProxySettings] | None = None,
) -> CheckResult:
    """Check the services of `namespace` (all when None) whose labels match `selector` (kubectl's `-l`), on
    every node that could be read. `settings` overrides the proxy settings of the nodes it names."""
    requirements = parse_selector(selector) if selector else None
    if requirements is not None and loaded.cluster is None:
        raise UsageError("-l/--selector needs the Services from the API (the input has none, or --no-api was given)")
    with _no_cyclic_gc():
        return _run(loaded, namespace, requirements, settings or {})


def _run(loaded: LoadedInput, namespace: str | None, requirements, overrides: dict[str, ProxySettings]
         ) -> CheckResult:
    captures = {n.name: n for n in loaded.snapshot.nodes}
    findings: list[Finding] = []
    for node, rules in loaded.rules.items():
        capture = captures[node]
        findings.extend(check_node_health(node, rules, capture.proxy_mode, loaded.other_backend.get(node),
                                          capture.backend))
    names = sorted(loaded.rules)
    skipped = _skipped_nodes(loaded)
    checked = [n for n in names if n not in skipped]
    cluster = loaded.cluster
    if cluster is None:
        diff, services = compare_nodes(_nodes_without_api(loaded, checked),
                                       lambda service: _in_namespace(service, namespace))
        findings.extend(diff)
        return CheckResult(dedupe_findings(sort_findings(findings)), len(services), names, dict(loaded.failed),
                           service_ports=0, api=False, skipped=skipped)

    api = loaded.snapshot.api
    labels = {_key(item): (item.get("metadata") or {}).get("labels") or {} for item in api.services or []}
    ports = [sp for sp in cluster.service_ports
             if _in_namespace(sp.service_key, namespace)
             and (requirements is None or _matches(requirements, labels.get(sp.service_key, {})))]
    chosen = {sp.service_key for sp in ports}
    inputs = _nodes_with_api(loaded, checked, overrides)
    sources = {n.name: n.settings_source for n in inputs}
    filtered = namespace is not None or requirements is not None

    def report_orphan(service: str | None) -> bool:
        # a left-over chain of a deleted Service has no labels to match; under -n it counts if its comment agrees
        if not filtered:
            return True
        if requirements is not None:
            return service in chosen
        return service is not None and _in_namespace(service, namespace)

    findings.extend(diff_nodes(inputs, cluster, ports if filtered else None, report_orphan))
    return CheckResult(dedupe_findings(sort_findings(findings)), len(chosen), names, dict(loaded.failed),
                       service_ports=len(ports), settings=sources, api=True, skipped=skipped)


def check_service(loaded: LoadedInput, service: str) -> list[Finding]:
    """`check`'s per-service findings for one service ("ns/name"), on the same engine and with the same answers,
    reading only that service's rules: what `explain` shows. Node-wide findings are not included."""
    checked = [n for n in sorted(loaded.rules) if n not in _skipped_nodes(loaded)]
    cluster = loaded.cluster
    if cluster is None:
        found, _ = compare_nodes(_nodes_without_api(loaded, checked), service=service)
    else:
        ports = [sp for sp in cluster.service_ports if sp.service_key == service]
        found = diff_nodes(_nodes_with_api(loaded, checked, {}), cluster, ports,
                           lambda orphan_of: orphan_of == service, service=service)
    return dedupe_findings(sort_findings([f for f in found if f.service == service]))


def _skipped_nodes(loaded: LoadedInput) -> dict[str, str]:
    """Nodes whose services are not checked: ipvs and nftables modes keep (some of) their rules elsewhere, so
    their iptables rules say nothing per service."""
    captures = {n.name: n for n in loaded.snapshot.nodes}
    return {n: f"kube-proxy runs in {captures[n].proxy_mode} mode there" for n in sorted(loaded.rules)
            if (captures[n].proxy_mode or "iptables") != "iptables"}


def _nodes_without_api(loaded: LoadedInput, checked: list[str]) -> list[NodeInput]:
    return [NodeInput(n, loaded.rules[n], None, "") for n in checked]  # no settings needed: nothing planned


def _nodes_with_api(loaded: LoadedInput, checked: list[str], overrides: dict[str, ProxySettings]
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


def failing(result: CheckResult, fail_on: str) -> bool:
    limit = SEVERITY_RANK[fail_on]
    return any(SEVERITY_RANK.get(f.severity, 9) <= limit for f in result.findings)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    # the check makes ~10^5 short-lived objects on a big cluster, none of them in cycles; the cyclic collector
    # would walk the parsed rules of every node again and again meanwhile (a third of the run time, measured)
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def _key(item: dict) -> str:
    meta = item.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def _name(item: dict) -> str:
    return (item.get("metadata") or {}).get("name") or ""


def _in_namespace(service: str | None, namespace: str | None) -> bool:
    return namespace is None or (service or "").split("/", 1)[0] == namespace


# --- label selectors, as kubectl's -l spells them ----------------------------------------------------------

_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*))?\s*$")


def parse_selector(text: str) -> list[tuple[str, str, frozenset[str]]]:
    """kubectl's label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`, comma-joined.
    Returns [(key, operator, values)] with operator one of = != exists !exists in notin."""
    out = []
    for part in _split_selector(text):
        m = _SET.match(part)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append((m.group(1), m.group(2), values))
            continue
        m = _EQ.match(part)
        if not m or (m.group(1) and m.group(3)):
            raise UsageError(f"bad label selector {text!r} near {part.strip()!r}; use e.g. app=web,tier!=db")
        bang, key, op, value = m.groups()
        if op is None:
            out.append((key, "!exists" if bang else "exists", frozenset()))
        else:
            out.append((key, "!=" if op == "!=" else "=", frozenset([value or ""])))
    if not out:
        raise UsageError("empty label selector")
    return out


def _split_selector(text: str) -> list[str]:
    # commas separate requirements, except inside `in (a,b)`
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _matches(requirements, labels: dict[str, str]) -> bool:
    for key, op, values in requirements:
        has = key in labels
        value = labels.get(key)
        if op == "exists" and not has or op == "!exists" and has:
            return False
        if op == "=" and value not in values or op == "in" and value not in values:
            return False
        if op in ("!=", "notin") and has and value in values:
            return False
    return True
