"""`svcdoctor explain SERVICE`: how one Service's traffic is routed, node by node."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from svcdoctor.checks.findings import Finding, check_node_health, sort_findings
from svcdoctor.commands.check import check_service
from svcdoctor.commands.inputs import LoadedInput
from svcdoctor.exit_codes import UnknownServiceError
from svcdoctor.model.explain import ServiceView, build_service_view, known_services, merge_family
from svcdoctor.model.hashes import service_hash
from svcdoctor.model.service_rules import NodeServiceIndex, index_node_services


@dataclass(slots=True)
class ExplainResult:
    view: ServiceView
    findings: list[Finding]
    loaded: LoadedInput


def resolve_service(service: str, namespace: str | None, loaded: LoadedInput) -> tuple[str, str]:
    """Accepts NAME with -n, or NAMESPACE/NAME. Unknown names exit 2 with the closest matches."""
    if "/" in service and namespace is None:
        namespace, service = service.split("/", 1)
    ns = namespace or "default"
    key = f"{ns}/{service}"
    if service_indexes(loaded, ns, service) is not None:
        return ns, service
    # every service on every node: only to suggest names
    names = known_services(loaded.rules, loaded.cluster, loaded.rules6)
    elsewhere = sorted(n for n in names if n.split("/", 1)[1] == service)
    hint = ""
    if elsewhere:
        hint = "; it exists in " + ", ".join(f"-n {n.split('/')[0]}" for n in elsewhere)
    else:
        close = difflib.get_close_matches(key, sorted(names), n=3, cutoff=0.5)
        close += [n for n in difflib.get_close_matches(service, sorted(n.split("/", 1)[1] for n in names), n=3)
                  if n not in close]
        if close:
            hint = "; did you mean " + ", ".join(close) + "?"
    raise UnknownServiceError(f"no service {key} on any node{' or in the API' if loaded.cluster else ''}{hint}")


def service_indexes(loaded: LoadedInput, ns: str, name: str) -> dict[str, NodeServiceIndex] | None:
    """Each node's rules for this one service (found by name or by its ports' hashes); None if it is nowhere."""
    key = (ns, name)
    if key not in loaded.index_cache:
        loaded.index_cache[key] = _service_indexes(loaded, ns, name)
    return loaded.index_cache[key]


def _service_indexes(loaded: LoadedInput, ns: str, name: str) -> dict[str, NodeServiceIndex] | None:
    api_ports = [sp for sp in (loaded.cluster.service_ports if loaded.cluster else [])
                 if sp.namespace == ns and sp.name == name]
    suffixes = frozenset(service_hash(sp.svc_port_name, sp.protocol) for sp in api_ports)
    indexes = {n: index_node_services(r, f"{ns}/{name}", suffixes) for n, r in loaded.rules.items()}
    if api_ports or any(ix.by_suffix for ix in indexes.values()):
        return indexes
    if any(index_node_services(r, f"{ns}/{name}", suffixes).by_suffix for r in loaded.rules6.values()):
        return indexes  # an IPv6-only service: its rules are all in ip6tables
    return None


def build_view(loaded: LoadedInput, ns: str, name: str, port: str | None = None) -> ServiceView:
    """The service on every node, both address families: iptables, and ip6tables where the nodes have it."""
    view = build_service_view(ns, name, loaded.rules, loaded.cluster, port_filter=port,
                              indexes=service_indexes(loaded, ns, name))
    if loaded.rules6:
        view6 = build_service_view(ns, name, loaded.rules6, loaded.cluster, port_filter=port)
        merge_family(view, view6, "IPv6")
    return view


def explain(loaded: LoadedInput, service: str, namespace: str | None = None, port: str | None = None) -> ExplainResult:
    ns, name = resolve_service(service, namespace, loaded)
    view = build_view(loaded, ns, name, port)
    if port and not view.ports:
        raise UnknownServiceError(f"service {ns}/{name} has no port named or numbered {port}")
    # the service's findings are `check`'s, from the same engine run on this one service (commands/check.py)
    findings = check_service(loaded, f"{ns}/{name}")
    if port:
        # per-port findings start with the port's name ("ns/name:port: …", "ns/name:port has …")
        names = tuple(pv.svc_port_name for pv in view.ports)
        findings = [f for f in findings if f.message.startswith(tuple(n + c for n in names for c in (":", " ")))]
    for node, rules in loaded.rules.items():
        # node-wide problems matter to every service on that node; keep those that explain a broken path
        findings.extend(check_node_health(node, rules, _proxy_mode(loaded, node), loaded.other_backend.get(node),
                                          _backend(loaded, node)))
    return ExplainResult(view, sort_findings(findings), loaded)


def _proxy_mode(loaded: LoadedInput, node: str) -> str | None:
    for n in loaded.snapshot.nodes:
        if n.name == node:
            return n.proxy_mode
    return None


def _backend(loaded: LoadedInput, node: str) -> str | None:
    for n in loaded.snapshot.nodes:
        if n.name == node:
            return n.backend
    return None
