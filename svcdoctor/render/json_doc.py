"""JSON documents exactly as CONTRACT.md's "JSON shapes" lays them out (more fields are welcome, none missing)."""

from __future__ import annotations

import json

from svcdoctor import API_VERSION


def document(kind: str, **body) -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, **body}


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2)


def _round(p: float | None) -> float | None:
    return None if p is None else round(p, 10)


def explain_document(result) -> dict:
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
        findings=[f.to_dict() for f in result.findings],
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
            }
            for ep in e.endpoints
        ],
    }
