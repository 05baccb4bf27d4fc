"""`svcdoctor explain SERVICE`: how one Service's traffic is routed, node by node."""

from __future__ import annotations

from svcdoctor.checks.findings import (
    chain_hash_findings,
    check_node_health,
    check_service_view,
    sort_findings,
)
from svcdoctor.errors import UnknownServiceError
from svcdoctor.inputs import LoadedInput, build_view, resolve_service
from svcdoctor.inputs import service_indexes  # noqa: F401  (commands/watch.py, commands/graph.py, tests/test_watch.py)
from svcdoctor.results import ExplainResult


def explain(loaded: LoadedInput, service: str, namespace: str | None = None, port: str | None = None) -> ExplainResult:
    ns, name = resolve_service(service, namespace, loaded)
    view = build_view(loaded, ns, name, port)
    if port and not view.ports:
        raise UnknownServiceError(f"service {ns}/{name} has no port named or numbered {port}")
    findings = check_service_view(view, loaded.cluster)
    for node, rules in loaded.rules.items():
        # node-wide problems matter to every service on that node; keep those that explain a broken path
        findings.extend(check_node_health(node, rules, _proxy_mode(loaded, node), loaded.other_backend.get(node),
                                          _backend(loaded, node)))
        nat = rules.table("nat")
        names = {c for pv in view.ports for nv in pv.nodes if nv.node == node for c in nv.chains.values() if c}
        names |= {ep.chain for pv in view.ports for nv in pv.nodes if nv.node == node
                  for e in nv.entries for ep in e.endpoints}
        for name in sorted(names):
            chain = nat.chain(name) if nat else None
            if chain is not None:
                findings.extend(chain_hash_findings(node, chain))
    return ExplainResult(view, sort_findings(findings), loaded)


# explain()'s body still asks for these two by name; new code asks `loaded.capture(node)` (svcdoctor/inputs.py)
def _proxy_mode(loaded: LoadedInput, node: str) -> str | None:
    capture = loaded.capture(node)
    return capture.proxy_mode if capture else None


def _backend(loaded: LoadedInput, node: str) -> str | None:
    capture = loaded.capture(node)
    return capture.backend if capture else None
