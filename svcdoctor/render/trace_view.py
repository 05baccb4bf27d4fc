"""The human view of one traced packet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from svcdoctor.render.explain_view import VERDICT_STYLE

if TYPE_CHECKING:
    from svcdoctor.model.trace import TraceResult


def render_traces(results: list[TraceResult], console: Console, wide: bool = False) -> None:
    """One packet on each node traced, one after the other."""
    for result in results:
        render_trace(result, console, wide)


def render_trace(result: TraceResult, console: Console, wide: bool = False) -> None:
    p = result.packet
    head = Text(f"{result.node or 'node'}: ", style="bold")
    head.append(f"{p.protocol} {p.src} → {p.dst}:{p.dport}  ")
    head.append(result.verdict.upper(), style=VERDICT_STYLE.get(result.verdict, ""))
    if result.masquerade:
        head.append("  (masqueraded on some path)", style="magenta")
    console.print(head)
    for ep in result.endpoints:
        line = Text(f"  {ep.probability * 100:5.1f}%  {ep.address}", style="green")
        line.append(f"  {ep.chain}", style="dim")
        line.append("  SNAT" if ep.masquerade else "  no SNAT", style="magenta" if ep.masquerade else "dim")
        if ep.verdict != "dnat":
            line.append(f"  then {ep.verdict.upper()}", style="red")
        console.print(line)
    if result.entered_without_jumps:
        console.print(Text("  (no jumps from the built-in chains in this dump; entered at "
                           + ", ".join(result.entered_without_jumps) + " as kube-proxy's tests do)", style="dim"))
    console.print(Text("  steps (share of new connections that take each):", style="bold"))
    # the random branches repeat the same filter and POSTROUTING steps: show each step once, with its total share
    merged: dict[tuple, float] = {}
    for s in result.steps:
        key = (s.table, s.chain, s.action, s.rule)
        merged[key] = merged.get(key, 0.0) + s.share
    for (table, chain, action, rule), share_total in merged.items():
        if not wide and share_total < 1e-12:
            continue
        share = f"{min(share_total, 1.0) * 100:5.1f}% "
        console.print(Text(f"    {share}{table}/{chain}: {action}" + (f"   {rule}" if rule and wide else "")),
                      overflow="fold")
    for note in result.partial:
        console.print(Text(f"  partial input: {note}", style="yellow"), overflow="fold")
    for u in result.uncertain:
        console.print(Text(f"  ? {u.table}/{u.chain}: {u.rule} ({u.reason})", style="yellow"), overflow="fold")
    console.print()
