"""The human view of one traced packet."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from svcdoctor.render.explain_view import VERDICT_STYLE


def render_trace(result, console: Console, wide: bool = False) -> None:
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
    console.print(Text("  steps:", style="bold"))
    for s in result.steps:
        if not wide and s.share < 1e-12:
            continue
        share = f"{s.share * 100:5.1f}% " if s.share < 0.999999 else "       "
        console.print(Text(f"    {share}{s.table}/{s.chain}: {s.action}"
                           + (f"   {s.rule}" if s.rule and wide else ""), style=None), overflow="fold")
    for u in result.uncertain:
        console.print(Text(f"  ? {u.table}/{u.chain}: {u.rule} ({u.reason})", style="yellow"), overflow="fold")
    console.print()
