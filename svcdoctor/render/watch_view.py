"""What `watch` shows: a table per sample (redrawn in place by rich Live on a terminal), or one WatchSample JSON
document per line.

Changed cells are marked the way `watch -d` marks them: reverse video on what moved since the previous sample
(new connections, totals, shares), until the next sample.
"""

from __future__ import annotations

from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from svcdoctor import API_VERSION
from svcdoctor.render.wrap import Hanging
from svcdoctor.model.watch.busiest import busiest
from svcdoctor.model.watch.frame import Frame, Row, SplitCheck
from svcdoctor.model.watch.listing import IPV4
from svcdoctor.model.watch.stats import SIGNIFICANCE, GoodnessOfFit, format_p

COUNTS_CONNECTIONS = "nat counters count new connections (the first packet of each), not packets or requests"
COUNTS_CONNTRACK = ("conntrack: NEW is the connections to a service that conntrack holds and did not hold at the "
                    "previous sample, counted on the node that DNATed them; blackholes (DROP/REJECT) are not seen "
                    "(a dropped connection gets no conntrack entry)")
CHANGED = "reverse"
CHANGE_TEXT = {"appeared": "new", "gone": "gone", "reset": "reset"}
CHANGE_STYLE = {"appeared": "bold green", "gone": "dim", "reset": "bold yellow"}
TOP_RULES = 20  # without a service: how many of the busiest rules to show


def _time(frame: Frame) -> str:
    return frame.time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


def _new(row: Row) -> Text:
    if row.change == "gone":
        return Text("gone", style="dim")
    number = f"+{row.delta_packets}" if row.rate is not None else "·"
    if row.change in ("appeared", "reset"):
        return Text(f"{CHANGE_TEXT[row.change]} {number}", style=CHANGE_STYLE[row.change])
    return Text(number, style=CHANGED if row.delta_packets else "")


def _moved(text: str, row: Row, style: str = "") -> Text:
    return Text(text, style=(f"{style} {CHANGED}".strip() if row.delta_packets and row.change != "gone" else style))


def _pod(row: Row, namespace: str | None) -> str:
    pod = row.reading.pod or ""
    if namespace and pod.startswith(namespace + "/"):
        pod = pod[len(namespace) + 1:]
    return pod or "-"


def render_frame(frame: Frame, plan=None, wide: bool = False, all_nodes: bool = False) -> Group:
    """The whole view of one sample. Nodes where the service's chains counted nothing are one line unless
    `all_nodes` (--all-nodes)."""
    title = (f"svcdoctor watch {frame.service or '(busiest rules)'} · sample {frame.number} · "
             f"{frame.time:%H:%M:%S} UTC · every {frame.interval:g}s")
    parts: list = [Text(title, style="bold"), *(Text(line, style="dim") for line in what_is_counted(frame))]
    if frame.baseline:
        first = ("the counters as they are" if "conntrack" not in frame.sources.values()
                 else "what the counters and conntrack hold now" if "counters" in frame.sources.values()
                 else "the connections conntrack holds now")
        parts.append(Text(f"first sample: {first}; deltas start with the next one.", style="dim"))
    # what needs attention first: a live view is cropped to the terminal's height
    for note in frame_notes(frame):
        parts.append(Text(note, style="yellow"))
    for node, why in sorted(frame.failed.items()):
        parts.append(Text(f"{node}: not read this sample ({why})", style="red"))
    for change in frame.chain_changes:
        style = "green" if change.change == "appeared" else "yellow"
        table = change.table if change.family == IPV4 else f"{change.table} ({change.family})"
        parts.append(Text(f"{change.node}: {table} chain {change.chain} {change.change}", style=style))
    if frame.service:
        parts.extend(_service_blocks(frame, plan, wide, all_nodes))
    else:
        parts.append(_busiest_table(frame, wide))
    blackholes = [r for r in frame.rows if r.reading.kind == "blackhole"] if frame.service else []
    if blackholes:
        parts.append(_blackhole_table(blackholes, wide))
    return Group(*parts)


def what_is_counted(frame: Frame) -> list[str]:
    """The header's lines on what NEW counts: rule counters, conntrack, or each on its own nodes."""
    by_source: dict[str, list[str]] = {}
    for node, source in sorted(frame.sources.items()):
        by_source.setdefault(source, []).append(node)
    lines = []
    if "counters" in by_source or not by_source:
        where = f" (on {', '.join(by_source['counters'])})" if "conntrack" in by_source else ""
        lines.append(COUNTS_CONNECTIONS + where + ".")
    if "conntrack" in by_source:
        nft = [n for n in by_source["conntrack"] if n in frame.nftables_nodes]
        other = [n for n in by_source["conntrack"] if n not in frame.nftables_nodes]
        lines.append(COUNTS_CONNTRACK + ".")
        if nft:
            lines.append(f"counted from conntrack on {', '.join(nft)}: kube-proxy runs in nftables mode there, and "
                         "its nftables rules keep no counters.")
        if other:
            lines.append(f"counted from conntrack on {', '.join(other)} (--source conntrack).")
    return lines


def _is_idle(rows: list[Row], frame: Frame) -> bool:
    """Nothing to see on this node's split chain: no connection counted since the watch started (on the first
    sample: no connection counted at all), and no endpoint that came, went or was reset."""
    if any(r.change for r in rows):
        return False
    return all((r.packets if frame.baseline else r.total_packets) == 0 for r in rows)


def _idle_line(idle: list[tuple[str, str, str]], frame: Frame) -> Text:
    """The folded nodes on one line, and how to see them."""
    nodes = list(dict.fromkeys(node for node, _family, _chain in idle))
    since = "yet" if frame.baseline else "since the watch started"
    text = Text(f"no new connections {since} on {', '.join(nodes)}", style="dim")
    text.append(" (--all-nodes shows them)", style="dim italic")
    return text


# the service table's columns after ENDPOINT: name, justify, width (None: takes the room left)
_SERVICE_COLUMNS = (("POD", "left", None), ("NEW", "right", 8), ("RATE/s", "right", 6), ("TOTAL", "right", 7),
                    ("OBSERVED", "right", 8), ("EXPECTED", "right", 8))


def _service_cells(row: Row, namespace: str | None) -> list:
    style = "dim" if row.change == "gone" else ""
    return [Text(row.reading.endpoint or "-", style=style), Text(_pod(row, namespace), style=style),
            _new(row), _moved(_rate(row.rate), row), _moved(str(row.total_packets), row),
            _moved(_pct(row.observed_share), row), Text(_pct(row.reading.expected))]


def _empty_columns(cells: list[list]) -> set[int]:
    """The columns (after ENDPOINT) with nothing but "-" in every row shown: without the API there is no POD to
    name, and a column of dashes only pushes the numbers away."""
    return {i for i in range(1, len(_SERVICE_COLUMNS) + 1)
            if _SERVICE_COLUMNS[i - 1][0] in ("POD", "OBSERVED", "EXPECTED")
            and all(str(row[i]) == "-" for row in cells)}


def _service_blocks(frame: Frame, plan, wide: bool, all_nodes: bool = False) -> list:
    """One block per node and split chain: a title line (node, chain, the entries that lead into it, its split
    test) over its endpoints. Every block's columns have the same widths, so the blocks read as one table."""
    namespace = frame.service.split("/", 1)[0] if frame.service else None
    groups: dict[tuple[str, str, str], list[Row]] = {}  # (node, family, chain) -> its endpoint rows
    for row in frame.rows:
        if row.reading.kind == "endpoint":
            groups.setdefault((row.reading.node, row.reading.family, row.reading.chain), []).append(row)
    if not groups:
        return [Text("no split chain of this service on the nodes read (no endpoints?)", style="yellow")]
    checks = {(s.node, s.family, s.chain): s for s in frame.splits if s.scope == "chain"}
    idle = [] if all_nodes else [key for key, rows in groups.items()
                                 if _is_idle(rows, frame) and not (checks.get(key) and checks[key].departs)]
    shown = {key: rows for key, rows in groups.items() if key not in idle}
    cells = {key: [_service_cells(r, namespace) for r in rows] for key, rows in shown.items()}
    dropped = _empty_columns([row for rows in cells.values() for row in rows])
    endpoint_width = max(len("ENDPOINT"), *(len(r.reading.endpoint or "-") for rows in shown.values() for r in rows),
                         0)
    blocks: list = []
    for i, ((node, family, chain), rows) in enumerate(shown.items()):
        blocks.append(Hanging(_block_title(frame, plan, node, family, chain, rows, checks.get((node, family, chain))),
                              2))
        # the POD column takes the room left; without it the numbers stay next to the endpoints
        expand = 1 not in dropped
        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False, show_header=i == 0,
                      expand=expand, padding=(0, 1))
        table.add_column("ENDPOINT", width=endpoint_width, no_wrap=True)
        for j, (name, justify, width) in enumerate(_SERVICE_COLUMNS, 1):
            if j in dropped:
                continue
            if width is None:
                table.add_column(name, ratio=1, no_wrap=True, overflow="ellipsis")
            else:
                table.add_column(name, justify=justify, width=width, no_wrap=True)
        for row_cells in cells[(node, family, chain)]:
            table.add_row(*(c for j, c in enumerate(row_cells) if j not in dropped))
        blocks.append(Padding(table, (0, 0, 0, 2), expand=expand))
        if wide:
            blocks.extend(_rule_lines((r.reading.endpoint or "-", r) for r in rows))
    if idle:
        blocks.append(Hanging(_idle_line(idle, frame), 2))
    return blocks


def _block_title(frame: Frame, plan, node: str, family: str, chain: str, rows: list[Row], check) -> Text:
    """node  chain  ← the entries into it  +new  and what the split test says."""
    port = plan.port_of_chain(chain) if plan is not None else None
    entries = port.entries_into(node, chain, family) if port is not None else []
    delta = sum(r.delta_packets for r in rows if r.change != "gone")
    title = Text.assemble((node, "bold"), "  ", (chain, "bold cyan"))
    if family != IPV4:
        title.append(f" {family}", style="bold cyan")
    if entries:
        title.append("  ← " + ", ".join(entries))
    if not frame.baseline:
        title.append(f"  +{delta}", style=f"bold {CHANGED}" if delta else "dim")
    summary = split_summary(check)
    if summary:
        title.append(f"  {summary}", style="bold yellow" if check.departs else "dim")
    return title


def _rule_lines(labelled) -> list[Text]:
    """-o wide: each row's rule(s) in full, on lines of their own (a column would fold them to shreds)."""
    lines = []
    for label, row in labelled:
        for counted in row.reading.rules:
            role = " (affinity)" if counted.role == "affinity" else ""
            lines.append(Text(f"    {label}{role}: {counted.text}", style="dim"))
    return lines


def split_summary(check) -> str:
    """The split test in words, with the threshold it is held to: "the split fits the rules (p=0.029; a
    departure is called below p<0.001)". A chi-square goodness-of-fit test of the connections since the split last
    changed against the rules' probabilities (docs/reference/watch.md)."""
    if check is None or len(check.shares) < 2:
        return ""
    if check.untested:
        return check.untested
    if check.fit is None:
        return f"too few connections to test the split yet ({check.connections} of the {check.needed} needed)"
    p = format_p(check.fit.p_value)
    if check.departs:
        return f"the split DEPARTS from the rules (p={p}, below the p<{SIGNIFICANCE:g} that calls a departure)"
    return f"the split fits the rules (p={p}; a departure is called below p<{SIGNIFICANCE:g})"


def _blackhole_table(rows: list[Row], wide: bool) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False,
                  title="blackholes: DROP/REJECT rules of this service", title_justify="left", title_style="bold red")
    for name, justify in (("NODE", "left"), ("CHAIN", "left"), ("VERDICT", "left"), ("REASON", "left"),
                          ("NEW", "right"), ("RATE/s", "right"), ("TOTAL", "right"), ("PACKETS", "right")):
        table.add_column(name, justify=justify, no_wrap=name not in ("REASON",))
    for row in rows:
        counting = row.delta_packets > 0
        style = "bold red" if counting else ("red" if row.packets else "")
        cells = [row.reading.node, f"{row.reading.table} {row.reading.chain}{_family_mark(row)}",
                 Text(row.reading.verdict or "", style),
                 _reason(row), _new(row), _moved(_rate(row.rate), row),
                 _moved(str(row.total_packets), row), str(row.packets)]
        table.add_row(*cells)
    if not wide:
        return table
    return Group(table, *_rule_lines((f"{r.reading.node} {r.reading.chain}", r) for r in rows))


def _family_mark(row: Row) -> str:
    """IPv6 rows say so (ip6tables has chains of the same names); IPv4 rows, the usual ones, say nothing."""
    return "" if row.reading.family == IPV4 else f" {row.reading.family}"


def _reason(row: Row) -> str:
    comment = row.reading.comment or "-"
    service = row.reading.service or ""
    return comment[len(service) + 1:] if service and comment.startswith(service + " ") else comment


def _busiest_table(frame: Frame, wide: bool):
    top = frame.top or TOP_RULES
    rows = busiest(frame.rows, top)
    # nodes in nftables mode have endpoints counted from conntrack in place of rules (commands/watch.py)
    conntrack = "conntrack" in frame.sources.values()
    what = " and endpoints counted from conntrack" if conntrack else ""
    so_far = " (so far)" if conntrack else " (by counters so far)"
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False,
                  title=f"the {top} busiest kube-proxy rules{what} of the cluster"
                        f"{so_far if frame.baseline else ' (by new connections)'}",
                  title_justify="left")
    def width(values, header):
        return max([len(header), *(len(v) for v in values)])

    # the chain is a detail for -o wide; SERVICE folds rather than push columns off a narrow terminal
    columns = [("NODE", [r.reading.node for r in rows])]
    if wide:
        columns.append(("CHAIN", [r.reading.chain for r in rows]))
    columns += [("KIND", [(r.reading.verdict or r.reading.kind) + _family_mark(r) for r in rows]), ("SERVICE", None),
                ("ENDPOINT", [r.reading.endpoint or "-" for r in rows])]
    for name, values in columns:
        if values is None:
            table.add_column(name, overflow="fold", min_width=8)
        else:
            table.add_column(name, no_wrap=True, min_width=width(values, name))
    for name in ("NEW", "RATE/s", "TOTAL", "PACKETS"):
        table.add_column(name, justify="right", no_wrap=True, min_width=max(len(name), 5))
    for row in rows:
        kind = (row.reading.verdict if row.reading.kind == "blackhole" else row.reading.kind) + _family_mark(row)
        # the kind says the table: entries and endpoints are nat, DROP/REJECT are filter
        cells = [row.reading.node] + ([row.reading.chain] if wide else []) + [
            Text(kind or "", style="red" if row.reading.kind == "blackhole" else ""),
            row.reading.service or "-", row.reading.endpoint or "-", _new(row), _moved(_rate(row.rate), row),
            _moved(str(row.total_packets), row), str(row.packets)]
        table.add_row(*cells)
    if not rows:
        return Text("no kube-proxy rule counted anything" + ("" if frame.baseline else " in the last interval"),
                    style="dim")
    if not wide:
        return table
    return Group(table, *_rule_lines((f"{r.reading.node}", r) for r in rows))


# --- the notes: what a departure means, in words -------------------------------------------------------------------
def frame_notes(frame: Frame) -> list[str]:
    """The frame's notes, then a note for each split test that departs."""
    return list(frame.notes) + [note for note in map(split_note, frame.splits) if note]


def split_note(check: SplitCheck) -> str | None:
    """What a departing split means, with the numbers; None while it fits (or cannot be tested yet)."""
    if not check.departs:
        return None
    if check.scope == "chain":
        return _chain_note(check)
    return _service_note(check)


def _numbers(fit: GoodnessOfFit) -> str:
    dof = "degree" if fit.degrees_of_freedom == 1 else "degrees"
    return (f"chi-square {fit.statistic:.1f} with {fit.degrees_of_freedom} {dof} of freedom, p = {format_p(fit.p_value)} "
            f"(a departure is called below p<{SIGNIFICANCE:g})")


def _counts(check: SplitCheck, pods: dict[str, str] | None = None) -> str:
    n = check.connections
    parts = []
    for endpoint, observed, share in zip(check.endpoints, check.observed, check.shares):
        name = (pods or {}).get(endpoint) or endpoint
        parts.append(f"{name} {observed} ({observed / n:.0%}, expected {share / sum(check.shares):.0%})")
    return ", ".join(parts)


def _family(check: SplitCheck) -> str:
    return "" if check.family == IPV4 else f" ({check.family})"


def _chain_note(check: SplitCheck) -> str:
    text = (f"On {check.node}, {check.chain}{_family(check)} did not split its {check.connections} new connections "
            f"the way its rules say: {_counts(check)}; {_numbers(check.fit)}. The kernel draws each connection at "
            "random, so this is rarely chance: ")
    if check.source == "conntrack":
        return text + ("connections of some endpoints that started and ended between two samples (refused ones "
                       "live 10 s in conntrack), endpoints or rules changed since the watch started (it does not "
                       "re-read them: restart it), or rules changed by something other than kube-proxy.")
    return text + ("a counter reset that went unseen (kube-proxy rewrote the chain and the new counts passed the old "
                   "ones within one interval), or rules changed by something other than kube-proxy.")


def _service_note(check: SplitCheck) -> str:
    evidence = check.evidence
    pods = evidence.pods if evidence else {}
    text = (f"{check.service}{_family(check)}: its endpoints did not get even shares of the {check.connections} new "
            f"connections counted since {check.since:%H:%M:%S}: {_counts(check, pods)}; {_numbers(check.fit)}. "
            "That is beyond chance. Usual causes:")
    causes = []
    if evidence is not None and evidence.local:
        where = ", ".join(f"{node} {n}" for node, n in evidence.local)
        causes.append(f"a node taking all external traffic: with traffic policy Local, a node sends what it "
                      f"receives through {evidence.svl_chain} to its own endpoints only (connections there: {where})")
    if evidence is not None and evidence.endpoints_per_node:
        sizes = ", ".join(f"{node} {n}" for node, n in evidence.endpoints_per_node.items())
        causes.append(f"the nodes disagree about the endpoints: their {evidence.svc_chain} chains balance over "
                      f"different sets (endpoints per node: {sizes})")
    affinity_seconds = evidence.affinity_seconds if evidence else None
    if check.affinity_connections or affinity_seconds:
        held = f"{check.affinity_connections} of the {check.connections} connections were returning clients held to " \
               "their endpoint" if check.affinity_connections else "returning clients are held to their endpoint"
        seconds = f" for {affinity_seconds}s" if affinity_seconds else ""
        causes.append(f"session affinity: {held} (sessionAffinity ClientIP{seconds}), so a few clients make a few "
                      "independent draws")
    causes.append("keep-alive: a connection is counted once however many requests it carries, and a client that "
                  "reuses connections (HTTP keep-alive, HTTP/2, gRPC, pools) keeps its requests on the endpoint its "
                  "connection drew")
    if not (evidence and evidence.local) and len(causes) == 1:
        svc_chain = evidence.svc_chain if evidence else "KUBE-SVC"
        causes.insert(0, "traffic that enters at some nodes only is not a cause by itself (each node's "
                         f"{svc_chain} splits evenly); look at where the connections came in")
    return text + " " + "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1)) + "."


# --- JSON Lines ---------------------------------------------------------------------------------------------------
def _row_document(row: Row) -> dict:
    r = row.reading
    doc = {
        "node": r.node, "chain": r.chain, "rule": r.rule, "service": r.service, "endpoint": r.endpoint,
        "packets": row.packets, "bytes": row.bytes, "deltaPackets": row.delta_packets, "deltaBytes": row.delta_bytes,
        "reset": row.reset,
        "kind": r.kind, "table": r.table, "change": row.change, "blackhole": r.kind == "blackhole",
        "ratePerSecond": None if row.rate is None else round(row.rate, 3),
        "totalPackets": row.total_packets, "totalBytes": row.total_bytes, "family": r.family,
    }
    doc["source"] = r.source
    if r.kind in ("endpoint", "entry"):
        doc["deltaConnections"] = row.delta_packets  # nat counters and conntrack both count connections
    if r.source == "conntrack":
        # conntrack counts no bytes (unless nf_conntrack_acct, which kind does not turn on)
        doc.update({"bytes": None, "deltaBytes": None, "totalBytes": None, "tracked": r.tracked})
    if r.kind == "endpoint":
        doc.update({"pod": r.pod, "endpointNode": r.endpoint_node,
                    "expected": None if r.expected is None else round(r.expected, 10),
                    "ruleProbability": r.rule_probability,
                    "observedShare": None if row.observed_share is None else round(row.observed_share, 6),
                    "affinityDeltaPackets": row.affinity_delta})
    if r.kind == "blackhole":
        doc.update({"verdict": r.verdict, "reason": r.comment})
    return doc


def _split_document(check) -> dict:
    fit = check.fit
    return {
        "scope": check.scope, "service": check.service, "node": check.node, "chain": check.chain,
        "endpoints": list(check.endpoints), "observed": list(check.observed),
        "expected": [round(s, 10) for s in check.shares], "connections": check.connections,
        "connectionsNeeded": check.needed, "since": check.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "statistic": None if fit is None else round(fit.statistic, 6),
        "degreesOfFreedom": None if fit is None else fit.degrees_of_freedom,
        "pValue": None if fit is None else fit.p_value,
        "departs": check.departs, "affinityConnections": check.affinity_connections, "note": split_note(check),
        "family": check.family, "untested": check.untested,
    }


def sample_document(frame: Frame, top: int | None = None) -> dict:
    """One WatchSample (docs/reference/watch.md): the fields every WatchSample has first, then what this sample
    adds."""
    rows = frame.rows if top is None else busiest(frame.rows, top)
    return {
        "apiVersion": API_VERSION, "kind": "WatchSample", "time": _time(frame), "interval": frame.interval,
        "rows": [_row_document(r) for r in rows],
        "sample": frame.number, "service": frame.service, "counts": "connections",
        "source": frame.source, "sources": dict(sorted(frame.sources.items())),
        "elapsedSeconds": {n: round(s, 3) for n, s in sorted(frame.elapsed.items())},
        "chainChanges": [{"node": c.node, "table": c.table, "chain": c.chain, "change": c.change,
                          "family": c.family} for c in frame.chain_changes],
        "splits": [_split_document(s) for s in frame.splits],
        "notes": frame_notes(frame),
        "failedNodes": [{"node": n, "reason": r} for n, r in sorted(frame.failed.items())],
    }
