"""`svcdoctor watch [SERVICE]`: sample rule counters on every node at an interval and show what moved.

Live clusters only: a bundle's counters are one moment, and watch is about the difference between two.

With a service, the first read is the full one every command makes (both iptables backends of every node, their
ip6tables, kube-proxy's nftables tables, and the service's API objects); it finds the service's chains and names
its endpoints. From then on a sample reads only that service's chains and kube-proxy's DROP/REJECT chains, in both
address families on a dual-stack node, one exec per node (svcdoctor.collect.sampler). Nodes in nftables mode have
no counters to read: there, and everywhere with `--source conntrack`, a sample lists the node's conntrack table
for the service's ports instead (collect/conntrack_reads.py, model/watch/flows.py). Without a service, every
sample is a full dump of each iptables node, and the view shows the busiest rules; on nftables nodes it lists
conntrack for the ports of every service of the node's table and ranks their endpoints with the rules.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from svcdoctor.collect.conntrack_reads import ConntrackQuery, parse_conntrack_output
from svcdoctor.collect.sampler import parse_chain_listings
from svcdoctor.inputs import InputOptions, LoadedInput, load
from svcdoctor.errors import ExitStatus, SvcdoctorError, UsageError
from svcdoctor.model.watch.busiest import BusiestTracker, scan_dump
from svcdoctor.model.watch.flows import FlowCounter, FlowPlan, plan_flows, plan_table_flows
from svcdoctor.model.watch.frame import Frame, observe_service
from svcdoctor.model.watch.listing import IPV4, IPV6, Listings
from svcdoctor.model.watch.plan import ServiceWatchPlan, plan_service_watch
from svcdoctor.model.watch.tracker import WatchTracker
from svcdoctor.render.console import print_input_report
from svcdoctor.render.watch_live import live, paced
from svcdoctor.render.watch_view import TOP_RULES, render_frame, sample_document

NODE_TIMEOUT = 10.0  # seconds per node and read; a node that takes longer is reported and not waited for


# a node's conntrack is listed by port up to this many listings, unfiltered beyond: each listing walks the whole
# table, and an unfiltered one costs about ten (collect/conntrack_reads.py, benchmarks/bench_conntrack.py)
MAX_PORT_LISTINGS = 8
SOURCES = (COUNTERS, CONNTRACK) = ("counters", "conntrack")  # --source: what a node's new connections are counted from


def run_watch(opts: InputOptions, service, namespace, interval, count, output, out, err,
              top: int = TOP_RULES, all_nodes: bool = False, source: str = COUNTERS) -> int:
    if opts.bundle or opts.demo:
        raise UsageError("watch samples live counters and needs a live kind cluster; --bundle and --demo hold one "
                         "moment's counters (`svcdoctor explain --bundle …` shows them)")
    if source not in SOURCES:
        raise UsageError(f"--source must be counters or conntrack, not {source!r}")
    if source == CONNTRACK and not service:
        raise UsageError("--source conntrack counts one service's connections: name the service "
                         "(without one, watch ranks iptables nodes' rules by their counters, and nftables nodes' "
                         "endpoints from conntrack)")
    if service:
        ns, name = service.split("/", 1) if "/" in service and namespace is None else (namespace or "default", service)
        opts.service = f"{ns}/{name}"
    try:
        return _watch(opts, service, namespace, interval, count, output, out, err, top, all_nodes, source)
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def _watch(opts, service, namespace, interval, count, output, out, err, top: int = TOP_RULES,
           all_nodes: bool = False, source: str = COUNTERS) -> int:
    loaded = _first_read(opts, err)
    if not loaded.rules:
        raise SvcdoctorError("no node of the cluster could be read; nothing to watch", exit_status=ExitStatus.PARTIAL)
    plan = None
    if service:
        from svcdoctor.inputs import build_view, resolve_service

        ns, name = resolve_service(service, namespace, loaded)
        view = build_view(loaded, ns, name)
        plan = plan_service_watch(view, loaded.rules, loaded.cluster, loaded.rules6)
        sources = node_sources(plan.nodes, loaded.nft, source)
        flows = plan_flows(view, [n for n, s in sources.items() if s == CONNTRACK], plan)
    from svcdoctor.collect.sampler import open_sampler

    backends = {n.name: n.backend or "nft" for n in loaded.snapshot.nodes if n.name in loaded.rules}
    sampler = open_sampler(loaded.snapshot, opts, list(loaded.rules), backends, timeout=NODE_TIMEOUT)
    try:
        if plan is not None:
            sample = ServiceSample(sampler, plan, WatchTracker(interval, plan.service), sources, flows,
                                   sorted(loaded.nft))
            take = sample.take
        else:
            pods = loaded.cluster.pods_by_ip if loaded.cluster is not None else {}
            take = BusiestSample(sampler, loaded, BusiestTracker(interval, top, pods)).take
        partial = bool(loaded.failed)
        wide = output == "wide"
        if output == "json":
            def show(frame: Frame) -> None:
                doc = sample_document(frame, top=None if plan else top)
                out.file.write(json.dumps(doc) + "\n")
                out.file.flush()
            partial |= paced(take, show, interval, count)
        elif out.is_terminal and _isatty(out.file):
            # FORCE_COLOR makes rich treat a pipe as a terminal for colours; redrawing in place needs a real one
            partial |= live(take, out, plan, wide, interval, count, all_nodes)
        else:
            # a pipe has no width (render/console.py): the frame's tables stretch their POD column to the width
            # given, so give them the width of a wide terminal
            width = min(out.width, PIPE_FRAME_WIDTH)

            def show(frame: Frame) -> None:
                # crop=False: a line longer than the width goes out whole, as every line into a pipe does
                out.print(render_frame(frame, plan, wide, all_nodes), width=width, crop=False)
                out.print()
            partial |= paced(take, show, interval, count)
    finally:
        sampler.close()
    return ExitStatus.PARTIAL if partial else ExitStatus.OK


PIPE_FRAME_WIDTH = 200


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _first_read(opts: InputOptions, err) -> LoadedInput:
    # the samples go through the same door (collect/sampler.py): docker on kind, else each node's kube-proxy pod
    if opts.api_read is not None and getattr(opts.api_read, "debug_pod", None) is not None:
        raise UsageError("watch samples through kube-proxy pods; --debug-pod's helper pods live for one read only")
    with err.status("collecting rules from the nodes…") as status:
        loaded = load(opts, progress=lambda msg: status.update(msg))
    print_input_report(loaded, err)
    return loaded


def node_sources(nodes: list[str], nft: dict, source: str = COUNTERS) -> dict[str, str]:
    """What each node's new connections are counted from: conntrack where kube-proxy runs in nftables mode (its
    rules keep no counters) or where --source conntrack asks for it, the rules' counters elsewhere."""
    return {node: CONNTRACK if node in nft or source == CONNTRACK else COUNTERS for node in nodes}


# --- one sample -------------------------------------------------------------------------------------------------------
class ServiceSample:
    """One service's samples: the rule counters of the nodes counted by counters, the conntrack table of the
    others, both turned into rows for one tracker."""

    def __init__(self, sampler, plan: ServiceWatchPlan, tracker: WatchTracker, sources: dict[str, str],
                 flows: FlowPlan | None = None, nftables_nodes: list[str] = ()):
        self.sampler, self.plan, self.tracker = sampler, plan, tracker
        self.sources = dict(sources)
        self.conntrack = ConntrackNodes(sampler, flows or FlowPlan(), plan)
        self.nftables_nodes = [n for n in nftables_nodes if self.sources.get(n) == CONNTRACK]

    def take(self) -> Frame:
        counted = [n for n in self.plan.nodes if self.sources.get(n, COUNTERS) == COUNTERS]
        tracked = [n for n in self.plan.nodes if self.sources.get(n) == CONNTRACK]
        readings, read_at, chains, failed = _counter_readings(self.sampler, self.plan, counted)
        notes = self.conntrack.read(tracked, self.tracker.samples == 0, readings, read_at, failed)
        frame = self.tracker.update(readings, read_at, datetime.now(timezone.utc), chains, failed, self.plan)
        frame.sources = {node: self.sources[node] for node in counted + tracked}
        frame.nftables_nodes = list(self.nftables_nodes)
        frame.notes[:0] = notes
        return frame


class ConntrackNodes:
    """The nodes counted from conntrack: each sample lists a node's conntrack table for the ports of its flow plan,
    and the FlowCounter turns the connections into rows (model/watch/flows.py)."""

    def __init__(self, sampler, flows: FlowPlan, plan: ServiceWatchPlan | None = None):
        self.sampler, self.flows = sampler, flows
        self.counter = FlowCounter(flows, plan)
        self._noted: set[str] = set()  # nodes whose conntrack read was noted once (read from the proc file)

    def queries(self, node: str) -> list[ConntrackQuery]:
        """A listing per destination port, or, where that would be more walks of the table than one unfiltered
        listing costs, one listing of each family (collect/conntrack_reads.py)."""
        by_port = [ConntrackQuery(*q) for q in self.flows.queries(node)]
        if len(by_port) <= MAX_PORT_LISTINGS:
            return by_port
        return [ConntrackQuery(family) for family in dict.fromkeys(q.family for q in by_port)]

    def read(self, nodes: list[str], baseline: bool, readings: dict, read_at: dict, failed: dict) -> list[str]:
        """Each node's conntrack rows into `readings` (or why not into `failed`); returns notes for the frame.
        ``baseline``: the watch's first sample."""
        if not nodes:
            return []
        wanted = {node: self.queries(node) for node in nodes}
        notes = []
        got = self.sampler.read_conntrack({n: q for n, q in wanted.items() if q})
        for node in nodes:
            reading = got.get(node)
            if reading is None:  # no entry of the plan's services on this node: nothing to look for
                readings[node], read_at[node] = self.counter.observe(node, [], baseline), time.monotonic()
                continue
            ports = None if any(q.unfiltered for q in wanted[node]) else {q.port for q in wanted[node]}
            parsed = parse_conntrack_output(reading.text, ports) if not reading.error else None
            problem = reading.error or parsed.error
            if problem:
                failed[node] = problem
                continue
            if parsed.note and node not in self._noted:
                self._noted.add(node)
                notes.append(f"{node}: {parsed.note} (it has no connection ids: connections are told apart by "
                             "their addresses and ports)")
            if parsed.unread:
                notes.append(f"{node}: {parsed.unread} line(s) of conntrack's listing could not be read: the "
                             "connections in them are not counted")
            readings[node] = self.counter.observe(node, parsed.flows, baseline)
            read_at[node] = reading.read_at
        return notes


def _service_sample(sampler, plan: ServiceWatchPlan, tracker: WatchTracker) -> Frame:
    """One sample of a service whose nodes are all counted by their rules' counters."""
    return ServiceSample(sampler, plan, tracker, node_sources(plan.nodes, {})).take()


def _counter_readings(sampler, plan: ServiceWatchPlan, nodes: list[str]):
    """The rows of the nodes counted by their rules' counters: (rows, read times, nat chain presence, failures),
    each by node."""
    if not nodes:
        return {}, {}, {}, {}
    wanted = {node: plan.reads(node) for node in nodes}
    got = sampler.read_chains(wanted)
    listings: dict[str, dict[str, Listings]] = {}  # node -> family -> its listings
    failed: dict[str, str] = {}
    for node, reading in got.items():
        parsed = parse_chain_listings(reading.text) if not reading.error else {}
        problem = reading.error or _incomplete(parsed, wanted[node])
        if problem:
            failed[node] = problem
        else:
            listings[node] = parsed
    _learn_new_endpoints(sampler, plan, listings)
    readings = {node: [row for family, listed in by_family.items()
                       for row in observe_service(plan, node, listed, family)]
                for node, by_family in listings.items()}
    chains = {node: {(family, table, chain): listing.present for family, listed in by_family.items()
                     for (table, chain), listing in listed.items() if table == "nat"}
              for node, by_family in listings.items()}
    read_at = {node: got[node].read_at for node in listings}
    return readings, read_at, chains, failed


def _incomplete(parsed: dict[str, Listings], wanted: dict[str, list[tuple[str, str]]]) -> str | None:
    """Why a node's listing cannot be used (a chain whose listing failed, or one missing), or None."""
    errors = [listing.error for listed in parsed.values() for listing in listed.values() if listing.error]
    if errors:
        return errors[0]
    if any(key not in parsed.get(family, {}) for family, keys in wanted.items() for key in keys):
        return "the chain listing came back incomplete"
    return None


def _learn_new_endpoints(sampler, plan: ServiceWatchPlan, listings: dict[str, dict[str, Listings]]) -> None:
    """Endpoints that appeared since the plan, in a cluster too big for comments: their DNAT rules name them."""
    unknown = {node: {family: [("nat", sep) for sep in plan.unknown_endpoints(listed)]
                      for family, listed in by_family.items()}
               for node, by_family in listings.items()}
    unknown = {node: by_family for node, by_family in unknown.items() if any(by_family.values())}
    if not unknown:
        return
    for reading in sampler.read_chains(unknown).values():
        if not reading.error:
            for listed in parse_chain_listings(reading.text).values():
                plan.learn(listed)


class BusiestSample:
    """Without a service: the busiest kube-proxy rules of the iptables nodes, by their counters (a full dump of
    each node), and on nodes in nftables mode, whose rules keep no counters, the busiest endpoints of every service
    port of their tables, by the new connections conntrack lists (model/watch/flows.py plan_table_flows). The
    conntrack rows go through a tracker of their own, as `watch SERVICE` tracks them, and join the frame."""

    def __init__(self, sampler, loaded: LoadedInput, tracker: BusiestTracker):
        self.sampler, self.tracker = sampler, tracker
        self.nftables_nodes = sorted(n for n in loaded.nft if n in loaded.rules)
        nodes = [n for n in loaded.snapshot.nodes if n.name in loaded.rules and n.name not in loaded.nft]
        self.counted = [n.name for n in nodes]
        self.ipv6_nodes = [n.name for n in nodes if n.name in loaded.rules6]
        # the first read was a full dump already: it is the first sample
        self.first: dict[str, dict[str, str]] | None = {
            n.name: {IPV4: n.iptables_save, **({IPV6: n.ip6tables_save} if n.name in self.ipv6_nodes else {})}
            for n in nodes}
        self.first_at = time.monotonic()
        tables = {n: loaded.nft[n] for n in self.nftables_nodes}
        self.conntrack = ConntrackNodes(sampler, plan_table_flows(tables, loaded.cluster))
        self.flow_tracker = WatchTracker(tracker.interval)

    def take(self) -> Frame:
        if self.first is not None:
            texts, read_at, failed, self.first = self.first, {n: self.first_at for n in self.first}, {}, None
        elif self.counted:
            texts, read_at, failed = _dumps(self.sampler.read_dumps(self.counted, self.ipv6_nodes))
        else:
            texts, read_at, failed = {}, {}, {}
        scans = {node: [scan_dump(text, family) for family, text in by_family.items()]
                 for node, by_family in texts.items()}
        frame = self.tracker.update(scans, read_at, datetime.now(timezone.utc), failed)
        readings: dict = {}
        flow_read_at: dict = {}
        flow_failed: dict = {}
        notes = self.conntrack.read(self.nftables_nodes, frame.baseline, readings, flow_read_at, flow_failed)
        flows = self.flow_tracker.update(readings, flow_read_at, frame.time, failed=flow_failed)
        frame.rows += flows.rows
        frame.elapsed.update(flows.elapsed)
        frame.failed.update(flows.failed)
        frame.notes[:0] = notes
        frame.sources = {**{n: COUNTERS for n in self.counted}, **{n: CONNTRACK for n in self.nftables_nodes}}
        frame.nftables_nodes = list(self.nftables_nodes)
        return frame


def _dumps(got) -> tuple[dict[str, dict[str, str]], dict[str, float], dict[str, str]]:
    """(node -> family -> dump, node -> read time, node -> why it failed) from the reads of one sample. A node is
    used only when all its dumps came back: half a node would look like rules that disappeared."""
    failed = {node: reading.error for (node, _family), reading in got.items() if reading.error}
    texts: dict[str, dict[str, str]] = {}
    read_at: dict[str, float] = {}
    for (node, family), reading in got.items():
        if node not in failed:
            texts.setdefault(node, {})[family] = reading.text
            read_at[node] = max(read_at.get(node, 0.0), reading.read_at)
    return texts, read_at, failed
