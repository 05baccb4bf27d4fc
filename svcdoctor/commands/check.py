"""`svcdoctor check`: every service port on every node; findings grouped by severity.

With the API objects, each node's rules are compared with what kube-proxy would program there
(`checks/compare_api.py`); without them, the nodes are compared with each other (`checks/drift.py`). Node-wide
trouble (no kube-proxy rules, rules in the wrong iptables backend) comes from `checks/findings.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from svcdoctor.checks.compare_api import merge_diffs
from svcdoctor.checks.engine import (
    FAMILIES,
    check_deferred_nodes,
    diff_nodes_in_parallel,
    nft_findings,
    nodes_with_api,
    nodes_without_api,
    reads_in_workers,
    skipped_nodes,
)
from svcdoctor.checks.drift import compare_nodes
from svcdoctor.checks.findings import (
    SEVERITY_RANK,
    Finding,
    check_node_health,
    nft_listing_findings,
    proxy_mode_findings,
    dedupe_findings,
    sort_findings,
)
from svcdoctor.inputs import LoadedInput, no_cyclic_gc
from svcdoctor.results import CheckResult
from svcdoctor.errors import UsageError
from svcdoctor.model.cluster import ServicePort
from svcdoctor.model.proxy_settings import ProxySettings


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
    with no_cyclic_gc():
        result = _run(loaded, namespace, requirements, settings or {})
    if namespace is not None and result.services == 0:
        _refuse_unknown_namespace(loaded, namespace)
    return result


def _refuse_unknown_namespace(loaded: LoadedInput, namespace: str) -> None:
    """`-n NS` with no service of NS in the input is most often a typo (or `-n all`): say which namespaces there
    are instead of reporting that nothing is wrong."""
    from svcdoctor.model.explain import known_services

    if loaded.cluster is not None:
        seen = {sp.namespace for sp in loaded.cluster.service_ports}
    else:
        seen = {s.split("/", 1)[0] for s in known_services(loaded.rules, None, loaded.rules6)}
    if namespace not in seen:
        raise UsageError(f"no service in namespace {namespace!r}; namespaces with services: "
                         f"{', '.join(sorted(seen)) or 'none'} (without -n every namespace is checked)")


def _run(loaded: LoadedInput, namespace: str | None, requirements, overrides: dict[str, ProxySettings]
         ) -> CheckResult:
    if loaded.deferred:
        if reads_in_workers(loaded):
            return _run_in_workers(loaded, namespace, requirements, overrides)
        loaded.read_deferred()
    captures = {n.name: n for n in loaded.snapshot.nodes}
    findings: list[Finding] = []
    for node, rules in loaded.rules.items():
        capture = captures[node]
        findings.extend(check_node_health(node, rules, capture.proxy_mode, loaded.other_backend.get(node),
                                          capture.backend, nft_read=node in loaded.nft))
        if node in loaded.nft:
            findings.extend(nft_listing_findings(node, capture.read_via, bool((capture.nftables_json or "").strip()),
                                                 bool((capture.nftables_text or "").strip())))
    names = sorted(loaded.rules)
    findings.extend(proxy_mode_findings(_modes(loaded), _configured_mode(loaded)))
    skipped = skipped_nodes(loaded)
    checked = [n for n in names if n not in skipped and n not in loaded.nft]  # nftables nodes: nft_findings
    cluster = loaded.cluster
    if cluster is None:
        services: set[str] = set()
        for family in FAMILIES:  # kube-proxy keeps the two families apart: so are their nodes compared
            diff, seen = compare_nodes(nodes_without_api(loaded, checked, family),
                                       lambda service: _in_namespace(service, namespace))
            findings.extend(diff)
            services.update(seen)
        if loaded.nft:  # nftables nodes without the API: their names are still checked
            from svcdoctor.model.nft.view import nft_service_names

            findings.extend(nft_findings(loaded, lambda service: _in_namespace(service, namespace)))
            services.update(s for s in nft_service_names(loaded.nft) if _in_namespace(s, namespace))
        return CheckResult(dedupe_findings(sort_findings(findings)), len(services), names, dict(loaded.failed),
                           service_ports=0, api=False, skipped=skipped)

    scope = _Scope.of(loaded, namespace, requirements)
    inputs = nodes_with_api(loaded, checked, overrides)
    sources = {n.name: n.settings_source for n in inputs}
    inputs6 = nodes_with_api(loaded, checked, overrides, "IPv6")
    findings.extend(diff_nodes_in_parallel(inputs, cluster, scope.compared, scope.report_orphan))
    findings.extend(nft_findings(loaded, lambda service: service in scope.chosen))  # nftables nodes: by their routes
    if inputs6:
        findings.extend(diff_nodes_in_parallel(inputs6, cluster, scope.compared, scope.report_orphan))
    return CheckResult(dedupe_findings(sort_findings(findings)), len(scope.chosen), names, dict(loaded.failed),
                       service_ports=len(scope.ports), settings=sources, api=True, skipped=skipped)


def _run_in_workers(loaded: LoadedInput, namespace: str | None, requirements,
                    overrides: dict[str, ProxySettings]) -> CheckResult:
    """`_run` on a big bundle whose nodes load left unread: each is read and checked in a worker of its own
    (checks/engine.py: check_deferred_nodes). The findings are put together in `_run`'s order: every node is an
    iptables node checked against the API objects (inputs.load), so none is skipped and none is nftables'."""
    scope = _Scope.of(loaded, namespace, requirements)
    checks = check_deferred_nodes(loaded, overrides, scope.compared, scope.report_orphan)
    readable = [check for check in checks if check.read.failure is None]  # (the snapshot's order)
    findings = [f for check in readable for f in check.health]
    modes = {check.read.name: "iptables" for check in readable if check.has_kube_proxy_rules}  # as _modes says
    findings.extend(proxy_mode_findings(modes, _configured_mode(loaded)))
    checked = sorted(readable, key=lambda check: check.read.name)
    findings.extend(merge_diffs([check.diff for check in checked]))
    findings.extend(merge_diffs([check.diff6 for check in checked if check.diff6 is not None]))
    return CheckResult(dedupe_findings(sort_findings(findings)), len(scope.chosen),
                       [check.read.name for check in checked], dict(loaded.failed), service_ports=len(scope.ports),
                       settings={check.read.name: check.settings_source for check in checked}, api=True, skipped={})


@dataclass(slots=True)
class _Scope:
    """The service ports checked (-n, -l), and which left-over chains are reported."""

    ports: list[ServicePort]
    chosen: set[str]  # their services, "ns/name"
    filtered: bool
    namespace: str | None
    requirements: list | None

    @classmethod
    def of(cls, loaded: LoadedInput, namespace: str | None, requirements) -> _Scope:
        labels = {_key(item): (item.get("metadata") or {}).get("labels") or {}
                  for item in loaded.snapshot.api.services or []}
        ports = [sp for sp in loaded.cluster.service_ports
                 if _in_namespace(sp.service_key, namespace)
                 and (requirements is None or _matches(requirements, labels.get(sp.service_key, {})))]
        return cls(ports, {sp.service_key for sp in ports}, namespace is not None or requirements is not None,
                   namespace, requirements)

    @property
    def compared(self) -> list[ServicePort] | None:
        return self.ports if self.filtered else None

    def report_orphan(self, service: str | None) -> bool:
        # a left-over chain of a deleted Service has no labels to match; under -n it counts if its comment agrees
        if not self.filtered:
            return True
        if self.requirements is not None:
            return service in self.chosen
        return service is not None and _in_namespace(service, self.namespace)


def _modes(loaded: LoadedInput) -> dict[str, str]:
    """Each node's kube-proxy mode as its rules show it (nodes with no kube-proxy rules at all say nothing)."""
    captures = {n.name: n for n in loaded.snapshot.nodes}
    modes = {}
    for node, rules in loaded.rules.items():
        if node in loaded.nft:
            modes[node] = "nftables"
        elif (captures[node].proxy_mode or "iptables") != "iptables":
            modes[node] = captures[node].proxy_mode
        elif rules.has_kube_proxy_rules():
            modes[node] = "iptables"
    return modes


def _configured_mode(loaded: LoadedInput) -> str | None:
    config = loaded.snapshot.api.kube_proxy_config
    if not isinstance(config, dict):
        return None
    mode = config.get("mode")
    return mode if isinstance(mode, str) else ""


def failing(result: CheckResult, fail_on: str) -> bool:
    limit = SEVERITY_RANK[fail_on]
    return any(SEVERITY_RANK.get(f.severity, 9) <= limit for f in result.findings)


def _key(item: dict) -> str:
    meta = item.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


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
