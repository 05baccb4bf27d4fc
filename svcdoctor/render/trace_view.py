"""The human view of a traced packet: nodes whose rules take it the same way are one block (as `explain` folds
nodes with the same rules), the service and pods it reaches are named, and a rule that drops it is quoted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from svcdoctor.model import rule_text
from svcdoctor.render.explain_view import VERDICT_STYLE
from svcdoctor.render.wrap import print_line

if TYPE_CHECKING:
    from svcdoctor.model.trace import TraceResult

STOPPING = ("drop", "reject")


def render_traces(results: list[TraceResult], console: Console, wide: bool = False) -> None:
    """One block per way the packet goes: nodes that take it the same way share theirs."""
    for group in fold_traces(results):
        render_trace(group[0], console, wide, nodes=[r.node or "node" for r in group])


def _trace_signature(result: TraceResult) -> tuple:
    """Everything the view shows but the node's name."""
    return (
        result.verdict, result.masquerade, result.service,
        tuple((e.ip, e.port, e.chain, round(e.probability, 9), e.masquerade, e.verdict, e.pod, e.pod_node)
              for e in result.endpoints),
        tuple((s.table, s.chain, s.rule, s.action, round(s.share, 9)) for s in result.steps),
        tuple((u.table, u.chain, u.rule, u.reason) for u in result.uncertain),
        tuple(result.partial), tuple(result.entered_without_jumps), tuple(result.notes),
    )


def fold_traces(results: list[TraceResult]) -> list[list[TraceResult]]:
    """Group the nodes whose trace is the same (first-seen order), as `fold_nodes` does for `explain`."""
    groups: dict[tuple, list[TraceResult]] = {}
    for result in results:
        groups.setdefault(_trace_signature(result), []).append(result)
    return list(groups.values())


def masquerade_words(result: TraceResult) -> str | None:
    """How many of the ways that deliver the packet SNAT it: "every path is masqueraded", "masqueraded on 2 of 3
    paths", "no path is masqueraded"; None when nothing is delivered (a dropped packet is not masqueraded)."""
    delivered = [p for p in result.paths if p.verdict not in STOPPING]
    if not delivered:
        return "masqueraded" if result.masquerade and not result.paths else None
    masqueraded = sum(1 for p in delivered if p.masquerade)
    if len(delivered) == 1:
        return "masqueraded" if masqueraded else "not masqueraded"
    if masqueraded == len(delivered):
        return "every path is masqueraded"
    if masqueraded == 0:
        return "no path is masqueraded"
    return f"masqueraded on {masqueraded} of {len(delivered)} paths"


def stopping_rules(result: TraceResult) -> list[Text]:
    """The rules that drop or reject the packet, each with its comment, as `explain` quotes them:
    "filter KUBE-EXTERNAL-SERVICES: default/svc-local:http has no local endpoints → DROP"."""
    seen: dict[tuple, float] = {}
    for s in result.steps:
        if s.action.split(" ", 1)[0] in STOPPING:
            key = (s.table, s.chain, s.rule, s.action)
            seen[key] = seen.get(key, 0.0) + s.share
    lines = []
    for (table, chain, rule, action), share in seen.items():
        verdict = action.split(" ", 1)[0].upper()
        said = rule_text.comment(rule) if rule else None
        line = Text(f"{table} {chain}: ", style="red")
        line.append(f"{said} → {verdict}" if said else f"{rule or action} → {verdict}")
        if share < 1 - 1e-9:
            line.append(f"  ({share * 100:.1f}% of new connections)", style="dim")
        lines.append(line)
    return lines


def _service_line(result: TraceResult) -> Text | None:
    if not result.service:
        return None
    namespace_name, _, port = result.service.partition(":")
    line = Text("  service ")
    line.append(namespace_name, style="bold")
    if port:
        line.append(f", port {port}")
    return line


def _endpoint_line(ep, namespace: str) -> Text:
    line = Text(f"  {ep.probability * 100:5.1f}%  ")
    line.append(ep.address, style="green")
    if ep.pod:
        # the pod's namespace is the service's in all but odd cases: say it only then
        line.append("  " + (ep.pod.split("/", 1)[1] if ep.pod.startswith(namespace + "/") else ep.pod))
    if ep.pod_node:
        line.append(f" @ {ep.pod_node}")
    line.append(f"  {ep.chain}", style="dim")
    line.append("  SNAT" if ep.masquerade else "  no SNAT", style="magenta" if ep.masquerade else "dim")
    if ep.verdict != "dnat":
        line.append(f"  then {ep.verdict.upper()}", style="red")
    return line


def _head(result: TraceResult, nodes: list[str], console: Console) -> str:
    """The packet and its verdict; several nodes get a line of their own first. Returns the indent below it."""
    p = result.packet
    packet = Text(f"{p.protocol} {p.src} → {p.dst}:{p.dport}  ")
    packet.append(result.verdict.upper(), style=VERDICT_STYLE.get(result.verdict, ""))
    masquerade = masquerade_words(result)
    if masquerade:
        packet.append(f"  ({masquerade})", style="magenta" if "not" not in masquerade else "dim")
    if len(nodes) == 1:
        print_line(console, Text(f"{nodes[0]}: ", style="bold") + packet, indent=2)
        return ""
    label = Text(", ".join(nodes), style="bold")
    label.append(": same path", style="dim")
    print_line(console, label, indent=2)
    print_line(console, Text("  ") + packet, indent=4)
    return "  "


def render_trace(result: TraceResult, console: Console, wide: bool = False, nodes: list[str] | None = None) -> None:
    pad = _head(result, nodes or [result.node or "node"], console)
    service = _service_line(result)
    if service is not None:
        print_line(console, Text(pad) + service, indent=len(pad) + 4)
    namespace = (result.service or "").split("/", 1)[0]
    for ep in result.endpoints:
        print_line(console, Text(pad) + _endpoint_line(ep, namespace), indent=len(pad) + 10)
    if result.verdict == "none" and not result.endpoints:
        print_line(console, Text(pad + "  no kube-proxy rule DNATs or stops this packet here", style="dim"),
                   indent=len(pad) + 4)
    for line in stopping_rules(result):
        print_line(console, Text(pad + "  ") + line, indent=len(pad) + 4)
    if result.entered_without_jumps:
        print_line(console, Text(pad + "  (no jumps from the built-in chains in this dump; entered at "
                                 + ", ".join(result.entered_without_jumps) + " as kube-proxy's tests do)",
                                 style="dim"), indent=len(pad) + 4)
    console.print(Text(pad + "  steps (share of new connections that take each):", style="bold"))
    # the random branches repeat the same filter and POSTROUTING steps: show each step once, with its total share
    merged: dict[tuple, float] = {}
    for s in result.steps:
        key = (s.table, s.chain, s.action, s.rule)
        merged[key] = merged.get(key, 0.0) + s.share
    for (table, chain, action, rule), share_total in merged.items():
        if not wide and share_total < 1e-12:
            continue
        share = f"{min(share_total, 1.0) * 100:5.1f}% "
        print_line(console, Text(f"{pad}    {share}{table}/{chain}: {action}" + (f"   {rule}" if rule and wide else "")),
                   indent=len(pad) + 11)
    for note in result.partial:
        print_line(console, Text(f"{pad}  partial input: {note}", style="yellow"), indent=len(pad) + 4)
    for note in result.notes:
        print_line(console, Text(f"{pad}  ! {note}", style="yellow"), indent=len(pad) + 4)
    for u in result.uncertain:
        print_line(console, Text(f"{pad}  ? {u.table}/{u.chain}: {u.rule} ({u.reason})", style="yellow"),
                   indent=len(pad) + 4)
    console.print()
