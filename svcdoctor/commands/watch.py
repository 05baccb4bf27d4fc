"""`svcdoctor watch`: sample the service's counters on every node and show what moved (live clusters only)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from svcdoctor.commands.inputs import InputOptions, load
from svcdoctor.exit_codes import ExitStatus, UsageError
from svcdoctor.model.explain import build_service_view


def _rows(loaded, ns: str, name: str) -> list[dict]:
    view = build_service_view(ns, name, loaded.rules, loaded.cluster)
    rows = []
    for pv in view.ports:
        for nv in pv.nodes:
            for e in nv.entries:
                for ep in e.endpoints:
                    rule = ep.jump_rules[0] if ep.jump_rules else ep.dnat_rule
                    rows.append({
                        "node": nv.node, "chain": rule.chain if rule else ep.chain,
                        "rule": rule.text if rule else "", "service": pv.svc_port_name,
                        "entry": f"{e.kind} {e.destination}", "endpoint": f"{ep.ip}:{ep.port}",
                        "packets": ep.packets, "bytes": ep.bytes, "expected": ep.probability,
                    })
                if e.blackhole_rule is not None:
                    r = e.blackhole_rule
                    rows.append({"node": nv.node, "chain": r.chain, "rule": r.text, "service": pv.svc_port_name,
                                 "entry": f"{e.kind} {e.destination}", "endpoint": None, "packets": r.packets,
                                 "bytes": r.bytes, "expected": None, "blackhole": True})
    # the same endpoint is reached from several entries through the same jump rule: keep one row per rule
    seen, out = set(), []
    for r in rows:
        key = (r["node"], r["rule"], r["endpoint"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def run_watch(opts: InputOptions, service, namespace, interval, count, output, out, err) -> int:
    if opts.bundle or opts.demo:
        raise UsageError("watch samples live counters; it needs a live cluster, not --bundle/--demo")
    if not service:
        raise UsageError("watch needs a SERVICE for now")
    ns, name = (service.split("/", 1) if "/" in service else (namespace or "default", service))
    opts.service = f"{ns}/{name}"
    previous: dict[tuple, dict] = {}
    totals: dict[tuple, int] = {}
    n = 0
    try:
        while count is None or n < count:
            started = time.monotonic()
            loaded = load(opts)
            rows = _rows(loaded, ns, name)
            for r in rows:
                key = (r["node"], r["rule"], r["endpoint"])
                prev = previous.get(key)
                reset = prev is not None and (r["packets"] or 0) < (prev["packets"] or 0)
                if prev is None or reset:
                    r["deltaPackets"], r["deltaBytes"] = (0, 0) if prev is None else (r["packets"], r["bytes"])
                else:
                    r["deltaPackets"] = (r["packets"] or 0) - (prev["packets"] or 0)
                    r["deltaBytes"] = (r["bytes"] or 0) - (prev["bytes"] or 0)
                r["reset"] = reset
                totals[key] = totals.get(key, 0) + r["deltaPackets"]
                previous[key] = r
            sample = {"apiVersion": "svcdoctor/v1", "kind": "WatchSample",
                      "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                      "interval": interval, "rows": rows}
            if output == "json":
                print(json.dumps(sample), flush=True)
            else:
                _print_table(out, sample, totals)
            n += 1
            if count is not None and n >= count:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    return ExitStatus.PARTIAL if loaded.failed else ExitStatus.OK


def _print_table(console, sample, totals) -> None:
    from rich.table import Table

    table = Table(title=f"{sample['time']}  (nat counters count connections)", box=None)
    for col in ("NODE", "ENTRY", "ENDPOINT", "NEW", "TOTAL", "EXPECTED"):
        table.add_column(col)
    for r in sample["rows"]:
        key = (r["node"], r["rule"], r["endpoint"])
        style = "bold yellow" if r["deltaPackets"] else None
        endpoint = r["endpoint"] or "[red]blackhole (DROP/REJECT)[/red]"
        expected = f"{r['expected'] * 100:.1f}%" if r.get("expected") is not None else "-"
        table.add_row(r["node"], r["entry"], endpoint, ("reset" if r["reset"] else str(r["deltaPackets"])),
                      str(totals.get(key, 0)), expected, style=style)
    console.print(table)
