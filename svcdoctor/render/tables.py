"""Plain tables: nodes."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


NATURAL_WIDTH = 96  # the demo's rows at two spaces between columns


def render_nodes(rows: list[dict], console: Console, wide: bool = False) -> None:
    # `wide` is taken as every view takes it (svcdoctor/environment.py, Environment.show); nodes has no more columns
    # names, roles, addresses and modes are never cut: on a narrow terminal the columns close up and the headers
    # wrap (a pipe gets whole lines at the table's natural width)
    table = Table(box=None, pad_edge=False, header_style="bold", collapse_padding=console.width < NATURAL_WIDTH)
    for col in ("NODE", "ROLE", "IP", "BACKEND", "MODE", "RULES", "KUBE CHAINS", "PROBLEMS"):
        table.add_column(col, no_wrap=col in ("NODE", "ROLE", "IP", "MODE"))
    for r in rows:
        problems = ", ".join(r["problems"]) or "-"
        table.add_row(r["name"], r["role"] or "-", r["internalIP"] or "-", r["backend"] or "-", r["proxyMode"] or "-",
                      "-" if r["rules"] is None else str(r["rules"]),
                      "-" if r["kubeChains"] is None else str(r["kubeChains"]),
                      f"[red]{problems}[/red]" if r["problems"] else problems)
    console.print(table)
