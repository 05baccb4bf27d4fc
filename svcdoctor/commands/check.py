"""`svcdoctor check`: every service on every node; findings grouped by severity."""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.checks.findings import SEVERITY_RANK, Finding, check_node_rules, check_service_view, sort_findings
from svcdoctor.commands.inputs import LoadedInput
from svcdoctor.model.explain import build_service_view
from svcdoctor.model.service_rules import index_node_services


@dataclass(slots=True)
class CheckResult:
    findings: list[Finding]
    services: int
    nodes: list[str]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[f.severity] = out.get(f.severity, 0) + 1
        return out


def run_check(loaded: LoadedInput, namespace: str | None = None) -> CheckResult:
    indexes = {node: index_node_services(rules) for node, rules in loaded.rules.items()}
    names: set[str] = set()
    for index in indexes.values():
        names.update(index.service_names())
    if loaded.cluster is not None:
        names.update(sp.service_key for sp in loaded.cluster.service_ports)
    if namespace:
        names = {n for n in names if n.split("/", 1)[0] == namespace}
    findings: list[Finding] = []
    for key in sorted(names):
        ns, name = key.split("/", 1)
        view = build_service_view(ns, name, loaded.rules, loaded.cluster, indexes=indexes)
        findings.extend(check_service_view(view, loaded.cluster))
    for node, rules in loaded.rules.items():
        capture = next(n for n in loaded.snapshot.nodes if n.name == node)
        node_findings = check_node_rules(node, rules, loaded.cluster, capture.proxy_mode,
                                         loaded.other_backend.get(node), capture.backend)
        if namespace:
            node_findings = [f for f in node_findings if f.service is None or f.service.startswith(namespace + "/")]
        findings.extend(node_findings)
    return CheckResult(sort_findings(findings), len(names), sorted(loaded.rules), dict(loaded.failed))


def failing(result: CheckResult, fail_on: str) -> bool:
    limit = SEVERITY_RANK[fail_on]
    return any(SEVERITY_RANK.get(f.severity, 9) <= limit for f in result.findings)
