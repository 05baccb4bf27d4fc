"""The human view of `explain`: a tree per node that reads like the seed's runbook."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.padding import Padding
from rich.text import Text
from rich.tree import Tree

from svcdoctor.render.findings_view import render_findings
from svcdoctor.render.wrap import Hanging, print_line

if TYPE_CHECKING:
    from svcdoctor.results import ExplainResult

VERDICT_STYLE = {"dnat": "green", "drop": "bold red", "reject": "red", "none": "yellow", "accept": "green"}
MASQ_TEXT = {
    "always": "SNAT to the node (client IP hidden)",
    "never": "no SNAT (client IP kept)",
    "conditional": "SNAT only for some sources",
}


def _pct(p: float) -> str:
    return f"{p * 100:5.1f}%"


def _counter(packets, label="pkts") -> str:
    return "" if packets is None else f"{packets} {label}"


def _node_signature(nv) -> tuple:
    return tuple(
        (e.kind, e.destination, e.verdict, e.masquerade, tuple(e.path), tuple(e.counters_shared_with),
         tuple((ep.ip, ep.port, ep.chain, round(ep.probability, 6)) for ep in e.endpoints),
         # nftables' affinity sets are each node's own live state: a node with pinned clients is shown apart
         tuple((client, endpoint) for client, endpoint, _ in e.pinned))
        for e in nv.entries
    )


def fold_nodes(nodes) -> list[list]:
    """Group nodes whose rules for this port are the same (counters aside), keeping first-seen order."""
    groups: dict[tuple, list] = {}
    for nv in nodes:
        groups.setdefault(_node_signature(nv), []).append(nv)
    return list(groups.values())


def _sum(values):
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _humane_condition(text: str) -> str:
    """`! -s 10.10.0.0/16` -> "the source is not in 10.10.0.0/16" (the when of a KUBE-MARK-MASQ rule)."""
    chain, _, cond = text.partition(": ")
    words = cond.split()
    out, neg, i = [], False, 0
    while i < len(words):
        w = words[i]
        if w == "!":
            neg = True
        elif w == "-s" and i + 1 < len(words):
            out.append(f"the source is {'not ' if neg else ''}in {words[i + 1]}")
            neg, i = False, i + 1
        elif w == "--src-type" and i + 1 < len(words):
            local = words[i + 1].upper() == "LOCAL"
            out.append("the source is " + ("not " if neg else "") + ("the node itself" if local else words[i + 1]))
            neg, i = False, i + 1
        else:
            out.append(w)
        i += 1
    return f"{' and '.join(out)} ({chain})"


def _written_share(ep) -> str:
    """What the rules say of an endpoint's share: iptables' `--probability` as written, nftables' numgen branch
    (`numgen random mod N`: exactly 1/N; kube-proxy's nftables chains are not KUBE-…)."""
    if not ep.chain.startswith("KUBE-"):
        return f"numgen 1/{round(1 / ep.rule_probability)}"
    return f"p={ep.rule_probability:.11f}"


def _counted(nodes) -> bool:
    """Whether the nodes' rules have counters (iptables mode); kube-proxy's nftables rules have none."""
    return any(e.entry_rule is not None and e.entry_rule.packets is not None for nv in nodes for e in nv.entries)


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs or not
                                                                                     (hours or minutes) else "")


def _by_node(values: list, names: list[str]) -> str:
    """" (myk8s-worker 20, myk8s-worker2 15)": which folded nodes counted what."""
    if len(names) < 2:
        return ""
    parts = [(n, v) for n, v in zip(names, values) if v]
    if len(parts) == 1:
        return f" on {parts[0][0]}"
    return f" ({', '.join(f'{n} {v}' for n, v in parts)})" if parts else ""


def _shared_counters_line(e, peers) -> Text | None:
    """Said before the endpoints, so that their counters are not read as this entry's alone: the per-endpoint
    counters are the jumps in KUBE-SVC/SVL, which the ClusterIP rule and KUBE-EXT share
    (docs/reference/kube-proxy-layout.md §2.4). Nothing to say without counters (a dump without -c)."""
    if not e.counters_shared_with or all(ep.packets is None for p in peers for ep in p.endpoints):
        return None
    return Text(f"endpoint counters below are {e.counters_chain}'s, shared with {', '.join(e.counters_shared_with)} "
                "(the same connections: count them once)", style="dim italic")


def _entry_tree(entries_by_node: list, wide: bool, names: list[str], namespace: str = "") -> list[Tree]:
    """Trees for one folded group; counters are summed over the group's nodes, with who counted what."""
    first = entries_by_node[0]
    trees = []
    for i, e in enumerate(first):
        peers = [entries[i] for entries in entries_by_node]
        packets = _sum(p.packets for p in peers)
        head = Text()
        head.append(f"{e.kind} ", style="bold")
        head.append(e.destination, style="cyan")
        if e.family != "IPv4":
            head.append(f" ({e.family})", style="cyan")
        if packets is not None:
            head.append(f"  [{packets} pkts{_by_node([p.packets for p in peers], names)}]", style="dim")
        head.append("  → ")
        head.append(e.verdict.upper(), style=VERDICT_STYLE.get(e.verdict, ""))
        if e.verdict == "dnat":
            head.append(f"   masquerade: {e.masquerade}", style="magenta" if e.masquerade == "always" else "")
        tree = Tree(Hanging(head, 2))
        tree.add(Hanging(Text(" → ".join(e.path), style="dim"), 2))
        for client in e.clients:
            # clients the entry treats apart from outside ones (a Local policy still serves pods and the node)
            line = Text(f"{client.clients} → {client.target}", style="blue")
            line.append(", masqueraded" if client.masquerade else ", not masqueraded", style="dim")
            tree.add(Hanging(line, 2))
        if e.masquerade_when and e.verdict == "dnat":
            tree.add(Hanging(Text("SNAT when " + "; or when ".join(_humane_condition(w) for w in e.masquerade_when),
                          style="magenta"), 2))
        if e.session_affinity_seconds:
            tree.add(Text(f"session affinity: ClientIP, {e.session_affinity_seconds}s "
                          "(a returning client skips the split)", style="blue"))
        for client, endpoint, left in e.pinned:
            # nftables keeps affinity in sets: who is pinned where right now, and for how long
            more = f" for {_duration(left)} more" if left is not None else ""
            tree.add(Hanging(Text(f"client {client} pinned to {endpoint}{more}", style="blue"), 2))
        shared = _shared_counters_line(e, peers)
        if shared is not None:
            tree.add(Hanging(shared, 2))
        n = len(e.endpoints)
        for j, ep in enumerate(e.endpoints):
            per_node = [p.endpoints[j].packets if j < len(p.endpoints) else None for p in peers]
            ep_packets = _sum(per_node)
            line = Text()
            line.append(_pct(ep.probability), style="bold")
            written = (_written_share(ep) if ep.rule_probability is not None
                       else ("rest" if n > 1 else "only"))
            line.append(f"  ({written})  ", style="dim")
            line.append(f"{ep.ip}:{ep.port}", style="green")
            if ep.pod:
                # the pod's namespace is the service's in all but odd cases: say it only then
                pod = ep.pod.split("/", 1)[1] if ep.pod.startswith(namespace + "/") else ep.pod
                line.append(f"  {pod}")
            if ep.node:
                line.append(f" @ {ep.node}")
                if ep.local:
                    line.append(" (local)", style="bold")
            if ep_packets is not None:
                line.append(f"  [{ep_packets} pkts{_by_node(per_node, names)}]", style="yellow")
            if wide:
                line.append(f"  {ep.chain}", style="dim")
            tree.add(Hanging(line, 8))
        if e.blackhole_rule is not None:
            bh = e.blackhole_rule
            bh_packets = _sum(p.blackhole_rule.packets for p in peers if p.blackhole_rule is not None)
            t = Text(f"{bh.table} {bh.chain}: ", style="red")
            t.append(f"{bh.comment or ''} → {bh.target}")
            if bh_packets is not None:
                t.append(f"  [{bh_packets} pkts]", style="bold red" if bh_packets else "dim")
            tree.add(t)
        for note in e.notes:
            if e.blackhole_rule is not None and note.startswith(("traffic not DNATed", "filter ")):
                continue
            if e.clients and ": traffic matching '" in note:
                continue  # said above, per client class
            tree.add(Text(note, style="italic dim"))
        if wide and e.entry_rule is not None:
            tree.add(Text(e.entry_rule.text, style="dim"))
        trees.append(tree)
    return trees


def render_explain(result: ExplainResult, console: Console, wide: bool = False) -> None:
    view = result.view
    api = view.api_ports[0] if view.api_ports else None
    title = Text(f"{view.namespace}/{view.name}", style="bold")
    if api is not None:
        title.append(f"  {api.type}")
        if api.cluster_ip:
            title.append(f" {api.cluster_ip}")
        if api.external_traffic_policy:
            title.append(f"  externalTrafficPolicy={api.external_traffic_policy}")
        if api.internal_traffic_policy != "Cluster":
            title.append(f"  internalTrafficPolicy={api.internal_traffic_policy}")
        if api.session_affinity != "None":
            title.append(f"  sessionAffinity={api.session_affinity}")
    else:
        title.append("  (no API objects: from the rules alone)", style="dim")
    print_line(console, title, indent=2)
    if not view.ports:
        console.print("  no rules for this service on any node")
    for pv in view.ports:
        head = Text(f"port {pv.name or '(unnamed)'} {pv.port if pv.port is not None else '?'}/{pv.protocol}")
        if pv.target_port is not None:
            head.append(f" → {pv.target_port}")
        if pv.node_port:
            head.append(f"  nodePort {pv.node_port}")
        chains = [c for c in pv.chains.values() if c]
        if chains:
            head.append("   " + " ".join(chains), style="dim")
        print_line(console, head, indent=2)
        for group in fold_nodes(pv.nodes):
            names = ", ".join(nv.node for nv in group)
            label = Text("  ")
            label.append(names, style="bold underline")
            if len(group) > 1:
                label.append(": same rules", style="dim")
                if _counted(group):  # nftables mode keeps no counters: nothing to sum
                    label.append(" (counters summed)", style="dim")
            print_line(console, label, indent=4)
            if not group[0].entries:
                console.print(Text("    no rules for this port on this node", style="yellow"))
                continue
            for tree in _entry_tree([nv.entries for nv in group], wide, [nv.node for nv in group], view.namespace):
                console.print(Padding(tree, (0, 0, 0, 4), expand=False))
    if result.loaded.failed:
        console.print()
        for node, why in sorted(result.loaded.failed.items()):
            console.print(Text(f"node {node} could not be read: {why}", style="bold red"))
    console.print()
    render_findings(result.findings, console)
    if any(_counted(pv.nodes) for pv in view.ports):
        console.print(Text("nat counters count connections (the first packet of each), not every packet.",
                           style="dim"))
