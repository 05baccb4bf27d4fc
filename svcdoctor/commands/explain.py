"""`svcdoctor explain SERVICE`: how one Service's traffic is routed, node by node."""

from __future__ import annotations

from svcdoctor.checks.findings import check_node_health, sort_findings
from svcdoctor.checks.engine import check_service
from svcdoctor.errors import UnknownServiceError
from svcdoctor.inputs import LoadedInput, build_view, resolve_service
from svcdoctor.results import ExplainResult


def explain(loaded: LoadedInput, service: str, namespace: str | None = None, port: str | None = None) -> ExplainResult:
    ns, name = resolve_service(service, namespace, loaded)
    view = build_view(loaded, ns, name, port)
    if port and not view.ports:
        raise UnknownServiceError(f"service {ns}/{name} has no port named or numbered {port}")
    # the service's findings are `check`'s, from the same engine run on this one service (checks/engine.py)
    findings = check_service(loaded, f"{ns}/{name}")
    if port:
        # per-port findings start with the port's name ("ns/name:port: …", "ns/name:port has …")
        names = tuple(pv.svc_port_name for pv in view.ports)
        findings = [f for f in findings if f.message.startswith(tuple(n + c for n in names for c in (":", " ")))]
    for node, rules in loaded.rules.items():
        # node-wide problems matter to every service on that node; keep those that explain a broken path
        capture = loaded.capture(node)
        findings.extend(check_node_health(node, rules, capture.proxy_mode if capture else None,
                                          loaded.other_backend.get(node), capture.backend if capture else None,
                                          nft_read=node in loaded.nft))
    return ExplainResult(view, sort_findings(findings), loaded)
