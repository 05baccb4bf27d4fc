"""The human view of `check`."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from svcdoctor.render.findings_view import render_findings


def render_check(result, console: Console) -> None:
    console.print(Text(f"Checked {result.services} service(s) on {len(result.nodes)} node(s): "
                       + ", ".join(result.nodes), style="bold"))
    for node, why in sorted(result.failed.items()):
        console.print(Text(f"node {node} could not be read: {why}", style="bold red"))
    render_findings(result.findings, console, evidence=False)
    s = result.summary
    console.print(Text(f"{s['error']} error(s), {s['warning']} warning(s), {s['info']} info", style="bold"))
