"""Findings in plain words, grouped by severity."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from svcdoctor.finding_docs import doc_of, fix_of
from svcdoctor.render.wrap import Hanging

SEVERITY_STYLE = {"error": ("✖", "bold red"), "warning": ("!", "yellow"), "info": ("i", "blue")}


def render_findings(findings, console: Console, evidence: bool = True) -> None:
    if not findings:
        console.print(Text("No problems found.", style="green"))
        return
    console.print(Text("Findings", style="bold"))
    for f in findings:
        mark, style = SEVERITY_STYLE.get(f.severity, ("?", ""))
        line = Text(f"  {mark} ")
        line.append(f"{f.severity:<7}", style=style)
        line.append(f" {f.id}", style="bold")
        if f.node:
            line.append(f"  {f.node}")
        console.print(line)
        console.print(Hanging(Text(f"      {f.message}"), indent=6))
        fix = fix_of(f.id)
        what = Text("      fix: ", style="bold")
        if fix:
            what.append(fix)
            what.append("  ")
        what.append(f"({doc_of(f.id)})", style="dim")
        console.print(Hanging(what, indent=6))
        if evidence:
            for ev in f.evidence[:4]:
                console.print(Text(f"      {ev}", style="dim"), overflow="fold")
