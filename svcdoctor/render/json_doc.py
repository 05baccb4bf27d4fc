"""Every `-o json` document, built in this one module, in the shapes `docs/reference/json.md` lays out (more fields
are welcome, none missing; `tests/test_contract_json.py` pins them). `watch`'s one-per-line samples are built next
to its view, in `render/watch_view.py`; `graph`'s in `render/graph_format.py`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from svcdoctor import API_VERSION

if TYPE_CHECKING:
    from svcdoctor.inputs import LoadedInput
    from svcdoctor.model.trace import TraceResult
    from svcdoctor.results import CheckResult, CollectResult, ExplainResult


def document(kind: str, **body) -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, **body}


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2)


def _round(p: float | None) -> float | None:
    return None if p is None else round(p, 10)


# --- check -----------------------------------------------------------------------------------------------------
def check_document(result: CheckResult, loaded: LoadedInput, namespace: str | None = None) -> dict:
    """`namespace`: the one namespace checked (-n); null: every namespace."""
    # every node of the input is listed, the unreadable ones with their reason (CheckResult.nodes has the read ones)
    return document(
        "Check",
        nodes=[{"name": n.name, "readable": n.name not in loaded.failed, "reason": loaded.failed.get(n.name)}
               for n in loaded.snapshot.nodes],
        findings=[_finding(f) for f in result.findings],
        summary=result.summary,
        services=result.services,
        namespace=namespace,
    )


def _finding(f) -> dict:
    """A finding as checks/findings.py writes it, plus what to do about it (svcdoctor/finding_docs.py)."""
    from svcdoctor.finding_docs import finding_fields

    return {**f.to_dict(), **finding_fields(f.id)}


# --- nodes -----------------------------------------------------------------------------------------------------
def nodes_document(rows: list[dict]) -> dict:
    return document("Nodes", nodes=rows)


# --- services --------------------------------------------------------------------------------------------------
def services_document(result) -> dict:
    """`services -o json`: kind ServiceList, one item per service (docs/reference/json.md)."""
    from svcdoctor.render.services_view import ports_text

    return document(
        "ServiceList",
        namespace=result.namespace,
        nodes=list(result.nodes),
        items=[{
            "namespace": s.namespace,
            "name": s.name,
            "type": s.type,
            "ports": [{"name": name or None, "protocol": protocol, "port": p["port"], "nodePort": p["nodePort"]}
                      for (name, protocol), p in s.ports.items()],
            "portsText": ports_text(s),
            "entries": [{"kind": e.kind, "destination": e.destination, "port": e.port_name or None,
                         "protocol": e.protocol} for e in s.entries],
            "endpoints": sorted(s.endpoints),
            "nodes": sorted(s.nodes),
        } for s in result.services],
    )


# --- collect ---------------------------------------------------------------------------------------------------
def collect_document(result: CollectResult) -> dict:
    snapshot = result.snapshot
    return document("Collect", path=result.path, nodes=[n.name for n in snapshot.nodes],
                    failedNodes=[{"node": n.name, "reason": n.error} for n in result.failed],
                    api=snapshot.api.status)


# --- trace -----------------------------------------------------------------------------------------------------
def traces_document(results: list[TraceResult]) -> dict:
    """One node traced: its Trace; several: one TraceList, so that stdout still holds exactly one document."""
    if len(results) == 1:
        return trace_document(results[0])
    return document("TraceList", items=[trace_document(r) for r in results])


def trace_document(result: TraceResult) -> dict:
    p = result.packet
    return document(
        "Trace",
        node=result.node,
        packet={"src": p.src, "dst": p.dst, "dport": p.dport, "protocol": p.protocol},
        verdict=result.verdict,
        endpoints=[{"ip": e.ip, "port": e.port, "chain": e.chain, "probability": _share(e.probability),
                    "masquerade": e.masquerade, "verdict": e.verdict, "pod": e.pod, "node": e.pod_node}
                   for e in result.endpoints],
        service=_trace_service(result.service),
        pods=sorted({e.pod for e in result.endpoints if e.pod}),
        stoppedBy=_stopped_by(result),
        masquerade=result.masquerade,
        steps=[{"table": s.table, "chain": s.chain, "rule": s.rule, "action": s.action, "share": _share(s.share)}
               for s in result.steps],
        uncertain=[{"table": u.table, "chain": u.chain, "rule": u.rule, "reason": u.reason}
                   for u in result.uncertain],
        paths=[{"share": _share(t.share), "verdict": t.verdict, "endpoint": t.endpoint, "masquerade": t.masquerade,
                "steps": list(t.steps)} for t in result.paths],
        enteredWithoutJumps=list(result.entered_without_jumps),
        partial=list(result.partial),
        notes=list(result.notes),
    )


def _trace_service(spn: str | None) -> dict | None:
    """The service port the packet met, from the rules' comments: {"namespace", "name", "port", "servicePortName"}."""
    if not spn:
        return None
    namespace, _, rest = spn.partition("/")
    name, _, port = rest.partition(":")
    return {"namespace": namespace, "name": name, "port": port or None, "servicePortName": spn}


def _stopped_by(result: TraceResult) -> list[dict]:
    """The rules that drop or reject the packet, with their comments (one entry per rule, its shares summed)."""
    from svcdoctor.model import rule_text

    out: dict[tuple, dict] = {}
    for s in result.steps:
        verdict = s.action.split(" ", 1)[0]
        if verdict not in ("drop", "reject"):
            continue
        key = (s.table, s.chain, s.rule)
        found = out.setdefault(key, {"table": s.table, "chain": s.chain, "rule": s.rule, "verdict": verdict,
                                     "comment": rule_text.comment(s.rule) if s.rule else None, "share": 0.0})
        found["share"] = _share(found["share"] + s.share)
    return list(out.values())


def _share(x: float) -> float:
    # 0.33333333349 stays readable; float noise from 1 - p products does not leak into JSON (12 places, as trace
    # always printed them; explain's shares use 10, `_round`)
    return round(x, 12)


# --- explain ---------------------------------------------------------------------------------------------------
def explain_document(result: ExplainResult) -> dict:
    view = result.view
    api = view.api_ports[0] if view.api_ports else None
    service = {
        "namespace": view.namespace,
        "name": view.name,
        "type": api.type if api else None,
        "clusterIP": api.cluster_ip if api else _cluster_ip_from_rules(view),
        "externalTrafficPolicy": api.external_traffic_policy if api else None,
        "internalTrafficPolicy": api.internal_traffic_policy if api else None,
        "sessionAffinity": api.session_affinity if api else None,
        "sessionAffinityTimeoutSeconds": api.session_affinity_timeout if api else None,
    }
    ports = []
    for pv in view.ports:
        ports.append({
            "name": pv.name or None,
            "protocol": pv.protocol,
            "port": pv.port,
            "nodePort": pv.node_port,
            "targetPort": pv.target_port,
            "servicePortName": pv.svc_port_name,
            "chains": dict(pv.chains),
            "nodes": [
                {
                    "node": nv.node,
                    "chains": dict(nv.chains),
                    "entries": [_entry(e) for e in nv.entries],
                }
                for nv in pv.nodes
            ],
        })
    return document(
        "Explain",
        service=service,
        ports=ports,
        findings=[_finding(f) for f in result.findings],
        failedNodes=[{"node": n, "reason": r} for n, r in sorted(result.loaded.failed.items())],
        source=result.loaded.snapshot.source,
    )


def _cluster_ip_from_rules(view) -> str | None:
    for pv in view.ports:
        for nv in pv.nodes:
            for e in nv.entries:
                if e.kind == "clusterIP" and e.family == "IPv4":
                    return e.destination.rsplit(":", 1)[0].strip("[]")
    return None


def _entry(e) -> dict:
    return {
        "kind": e.kind,
        "destination": e.destination,
        "family": e.family,
        "verdict": e.verdict,
        "path": list(e.path),
        "masquerade": e.masquerade,
        "masqueradeWhen": list(e.masquerade_when),
        "packets": e.packets,
        "bytes": e.bytes,
        "sessionAffinityTimeoutSeconds": e.session_affinity_seconds,
        "unmatchedShare": _round(e.unmatched_share),
        "rule": e.entry_rule.text if e.entry_rule is not None else None,
        "blackholeRule": e.blackhole_rule.text if e.blackhole_rule is not None else None,
        "notes": list(e.notes),
        # the endpoint counters live on the jumps in countersChain; entries that share them name each other
        # (docs/reference/json.md, "Counting each connection once")
        "countersChain": e.counters_chain,
        "countersSharedWith": list(e.counters_shared_with),
        "clients": [
            {"clients": c.clients, "condition": c.condition, "target": c.target, "masquerade": c.masquerade}
            for c in e.clients
        ],
        "affinityClients": [{"client": client, "endpoint": endpoint, "expiresSeconds": left}
                            for client, endpoint, left in e.pinned],
        "endpoints": [
            {
                "ip": ep.ip,
                "port": ep.port,
                "chain": ep.chain,
                "probability": _round(ep.probability),
                "ruleProbability": ep.rule_probability,
                "packets": ep.packets,
                "bytes": ep.bytes,
                "node": ep.node,
                "pod": ep.pod,
                "local": ep.local,
                "masquerade": ep.masquerade,
                "countersSharedWith": list(ep.counters_shared_with),
                "countersCountedHere": ep.counters_counted_here,
            }
            for ep in e.endpoints
        ],
    }
