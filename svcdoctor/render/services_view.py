"""The human view of `services`: one row per service, as `kubectl get services` prints them (no box, two spaces
between columns, whole lines in a pipe); `wide` adds the nodes' names and the endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from svcdoctor.results import ServicesResult
    from svcdoctor.model.service_list import ServiceSummary


def ports_text(s: ServiceSummary) -> str:
    """kubectl's PORT(S): `80:31437/TCP,443/TCP`."""
    out = []
    for (_, protocol), p in s.ports.items():
        number = "?" if p["port"] is None else str(p["port"])
        out.append(f"{number}:{p['nodePort']}/{protocol}" if p["nodePort"] else f"{number}/{protocol}")
    return ",".join(out) or "-"


def entries_text(s: ServiceSummary) -> str:
    return ",".join(dict.fromkeys(e.destination for e in s.entries)) or "-"


def render_services(result: ServicesResult, console: Console, wide: bool = False) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["NAMESPACE", "NAME", "TYPE", "PORT(S)", "ENTRIES", "ENDPOINTS", "NODES"]
    for col in columns:
        table.add_column(col, no_wrap=col in ("NAMESPACE", "NAME"), overflow="fold")
    if wide:
        table.add_column("ENDPOINT ADDRESSES", overflow="fold")
    total = len(result.nodes)
    for s in result.services:
        nodes = f"{len(s.nodes)}/{total}"
        if wide:
            nodes = ",".join(sorted(s.nodes)) or "-"
        row = [s.namespace, s.name, s.type or "-", ports_text(s), entries_text(s), str(len(s.endpoints)), nodes]
        if wide:
            row.append(",".join(sorted(s.endpoints)) or "-")
        table.add_row(*row)
    if result.services:
        console.print(table)
    else:
        where = "every namespace" if result.namespace is None else f"namespace {result.namespace}"
        console.print(f"No services in {where}.", markup=False, highlight=False)
