"""`svcdoctor watch [SERVICE]`: sample rule counters on every node at an interval and show what moved.

Live clusters only: a bundle's counters are one moment, and watch is about the difference between two.

With a service, the first read is the full one every command makes (both iptables backends of every node, their
ip6tables, and the service's API objects); it finds the service's chains and names its endpoints. From then on a
sample reads only that service's chains and kube-proxy's DROP/REJECT chains, in both address families on a
dual-stack node, one exec per node (svcdoctor.collect.sampler). Without a service, every sample is a full dump of
each node, and the view shows the busiest rules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone

from svcdoctor.collect.sampler import parse_chain_listings
from svcdoctor.inputs import InputOptions, LoadedInput, load
from svcdoctor.errors import ExitStatus, SvcdoctorError, UsageError
from svcdoctor.model.watch.busiest import BusiestTracker, scan_dump
from svcdoctor.model.watch.frame import Frame, observe_service
from svcdoctor.model.watch.listing import IPV4, IPV6, Listings
from svcdoctor.model.watch.plan import ServiceWatchPlan, plan_service_watch
from svcdoctor.model.watch.tracker import WatchTracker
from svcdoctor.render.console import print_input_report
from svcdoctor.render.watch_live import live, paced
from svcdoctor.render.watch_view import TOP_RULES, render_frame, sample_document

NODE_TIMEOUT = 10.0  # seconds per node and read; a node that takes longer is reported and not waited for


def run_watch(opts: InputOptions, service, namespace, interval, count, output, out, err,
              top: int = TOP_RULES, all_nodes: bool = False) -> int:
    if opts.bundle or opts.demo:
        raise UsageError("watch samples live counters and needs a live kind cluster; --bundle and --demo hold one "
                         "moment's counters (`svcdoctor explain --bundle …` shows them)")
    if service:
        ns, name = service.split("/", 1) if "/" in service and namespace is None else (namespace or "default", service)
        opts.service = f"{ns}/{name}"
    try:
        return _watch(opts, service, namespace, interval, count, output, out, err, top, all_nodes)
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def _watch(opts, service, namespace, interval, count, output, out, err, top: int = TOP_RULES,
           all_nodes: bool = False) -> int:
    loaded = _first_read(opts, err)
    if not loaded.rules:
        raise SvcdoctorError("no node of the cluster could be read; nothing to watch", exit_status=ExitStatus.PARTIAL)
    plan = None
    if service:
        from svcdoctor.inputs import build_view, resolve_service

        ns, name = resolve_service(service, namespace, loaded)
        plan = plan_service_watch(build_view(loaded, ns, name), loaded.rules, loaded.cluster, loaded.rules6)
    from svcdoctor.collect.sampler import open_sampler

    backends = {n.name: n.backend or "nft" for n in loaded.snapshot.nodes if n.name in loaded.rules}
    sampler = open_sampler(loaded.snapshot, opts, list(loaded.rules), backends, timeout=NODE_TIMEOUT)
    try:
        if plan is not None:
            tracker = WatchTracker(interval, plan.service)
            take = lambda: _service_sample(sampler, plan, tracker)  # noqa: E731
        else:
            pods = loaded.cluster.pods_by_ip if loaded.cluster is not None else {}
            take = _busiest_sampler(sampler, loaded, BusiestTracker(interval, top, pods))
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


# --- one sample -------------------------------------------------------------------------------------------------------
def _service_sample(sampler, plan: ServiceWatchPlan, tracker: WatchTracker) -> Frame:
    wanted = {node: plan.reads(node) for node in plan.nodes}
    got = sampler.read_chains(wanted)
    when = datetime.now(timezone.utc)
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
    return tracker.update(readings, read_at, when, chains, failed, plan)


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


def _busiest_sampler(sampler, loaded: LoadedInput, tracker: BusiestTracker) -> Callable[[], Frame]:
    nodes = [n for n in loaded.snapshot.nodes if n.name in loaded.rules]
    ipv6_nodes = [n.name for n in nodes if n.name in loaded.rules6]
    first: dict[str, dict[str, str]] | None = {
        n.name: {IPV4: n.iptables_save, **({IPV6: n.ip6tables_save} if n.name in ipv6_nodes else {})} for n in nodes}
    first_at = time.monotonic()

    def take() -> Frame:
        nonlocal first
        if first is not None:
            # the first read was a full dump already: it is the first sample
            texts, read_at, failed, first = first, {n: first_at for n in first}, {}, None
        else:
            texts, read_at, failed = _dumps(sampler.read_dumps(list(loaded.rules), ipv6_nodes))
        scans = {node: [scan_dump(text, family) for family, text in by_family.items()]
                 for node, by_family in texts.items()}
        return tracker.update(scans, read_at, datetime.now(timezone.utc), failed)

    return take


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
