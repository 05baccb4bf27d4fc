"""Plain tables: nodes."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def render_nodes(rows: list[dict], console: Console, wide: bool = False) -> None:
    # `wide` is taken as every view takes it (svcdoctor/environment.py, Environment.show); nodes has no more columns
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NODE", "ROLE", "IP", "BACKEND", "MODE", "RULES", "KUBE CHAINS", "PROBLEMS"):
        table.add_column(col)
    for r in rows:
        problems = ", ".join(r["problems"]) or "-"
        table.add_row(r["name"], r["role"] or "-", r["internalIP"] or "-", r["backend"] or "-", r["proxyMode"] or "-",
                      "-" if r["rules"] is None else str(r["rules"]),
                      "-" if r["kubeChains"] is None else str(r["kubeChains"]),
                      f"[red]{problems}[/red]" if r["problems"] else problems)
    console.print(table)
