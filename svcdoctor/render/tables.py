"""Plain tables: nodes."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


NATURAL_WIDTH = 96  # the demo's rows at two spaces between columns


def render_nodes(rows: list[dict], console: Console, wide: bool = False) -> None:
    # `-o wide` adds how each node was read (docker exec, pods/exec, a bundle) and from what, as kubectl's wide
    # output adds columns; names, roles, addresses and modes are never cut: on a narrow terminal the columns close up and the headers
    # wrap (a pipe gets whole lines at the table's natural width)
    table = Table(box=None, pad_edge=False, header_style="bold", collapse_padding=console.width < NATURAL_WIDTH)
    columns = ["NODE", "ROLE", "IP", "BACKEND", "MODE", "RULES", "KUBE CHAINS", "PROBLEMS"]
    if wide:
        columns += ["LAYOUT", "READ VIA", "READ FROM"]
    for col in columns:
        table.add_column(col, no_wrap=col in ("NODE", "ROLE", "IP", "MODE", "LAYOUT", "READ VIA", "READ FROM"))
    for r in rows:
        problems = ", ".join(r["problems"]) or "-"
        cells = [r["name"], r["role"] or "-", r["internalIP"] or "-", r["backend"] or "-", r["proxyMode"] or "-",
                 "-" if r["rules"] is None else str(r["rules"]),
                 "-" if r["kubeChains"] is None else str(r["kubeChains"]),
                 f"[red]{problems}[/red]" if r["problems"] else problems]
        if wide:
            cells += [r.get("nftLayout") or "-", r.get("readVia") or "-", r.get("readFrom") or "-"]
        table.add_row(*cells)
    console.print(table)
