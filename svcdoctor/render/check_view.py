"""The human view of `check`: findings grouped by severity, one line each (whole in a pipe, for grep; wrapped at word
boundaries with a hanging indent on a terminal, render/wrap.py), then a summary. `wide` adds each finding's evidence: the rule lines, and what kube-proxy would have written."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from svcdoctor.finding_docs import doc_of, fix_of
from svcdoctor.render.findings_view import SEVERITY_STYLE
from svcdoctor.render.wrap import print_line

if TYPE_CHECKING:
    from svcdoctor.results import CheckResult

GROUPS = (("error", "Errors"), ("warning", "Warnings"), ("info", "Info"))


def render_check(result: CheckResult, console: Console, wide: bool = False, scope: str | None = None) -> None:
    """`scope`: the namespaces checked, in words ("every namespace", "namespace shop"), for the first line."""
    print_line(console, Text(_header(result, scope), style="bold"), indent=2)
    for node, why in sorted(result.failed.items()):
        console.print(Text(f"node {node} could not be read: {why}", style="bold red"), soft_wrap=True)
    for node, why in sorted(result.skipped.items()):
        console.print(Text(f"node {node}: services not checked, {why}", style="yellow"), soft_wrap=True)
    if not result.findings:
        console.print(Text("No problems found.", style="green"))
    id_width = max((len(f.id) for f in result.findings), default=0)
    node_width = max((len(f.node or "-") for f in result.findings), default=0)
    for severity, title in GROUPS:
        group = [f for f in result.findings if f.severity == severity]
        if not group:
            continue
        mark, style = SEVERITY_STYLE[severity]
        console.print(Text(f"{title} ({len(group)})", style=f"bold {style}"))
        for f in group:
            line = Text(f"  {mark} ", style=style)
            line.append(f"{f.id:<{id_width}}", style="bold")
            line.append(f"  {f.node or '-':<{node_width}}  ")
            line.append(f.message)
            _append_fix(line, f.id)
            print_line(console, line, indent=6)
            if wide:
                for ev in f.evidence:
                    console.print(Text(f"      {ev}", style="dim"), soft_wrap=True)
    s = result.summary
    console.print(Text(f"{s['error']} error(s), {s['warning']} warning(s), {s['info']} info", style="bold"))


def _append_fix(line: Text, finding_id: str) -> None:
    """What to do, on the finding's own line (one line per finding, for grep): `→ fix: …  (docs/…#anchor)`."""
    fix = fix_of(finding_id)
    if fix:
        line.append("  → fix: ", style="bold")
        line.append(fix)
    line.append(f"  ({doc_of(finding_id)})", style="dim")


def _header(result: CheckResult, scope: str | None = None) -> str:
    text = f"Checked {result.services} service(s)"
    if result.service_ports:
        text += f" ({result.service_ports} port(s))"
    if scope:
        text += f" in {scope}"
    text += f" on {len(result.nodes)} node(s): {', '.join(result.nodes)}"
    if result.api:
        sources = sorted(set(result.settings.values()))
        text += "; each node against what kube-proxy would program there"
        if sources:
            text += f" (proxy settings {', '.join(sources)})"
    else:
        text += "; no API objects, so the nodes are compared with each other"
    return text
