"""`svcdoctor watch [SERVICE]`: sample rule counters on every node at an interval and show what moved.

Live clusters only: a bundle's counters are one moment, and watch is about the difference between two.

With a service, the first read is the full one every command makes (both iptables backends of every node, and the
service's API objects); it finds the service's chains and names its endpoints. From then on a sample reads only
that service's chains and kube-proxy's DROP/REJECT chains, one exec per node (svcdoctor.collect.sampler). Without a
service, every sample is a full dump of each node, and the view shows the busiest rules.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from svcdoctor.commands.inputs import InputOptions, LoadedInput, load
from svcdoctor.render.console import print_input_report
from svcdoctor.exit_codes import ExitStatus, SvcdoctorError, UsageError
from svcdoctor.model.watch import (
    BusiestTracker,
    Frame,
    ServiceWatchPlan,
    WatchTracker,
    observe_service,
    parse_chain_listings,
    plan_service_watch,
    scan_dump,
)
from svcdoctor.render.watch_view import TOP_RULES, render_frame, sample_document

NODE_TIMEOUT = 10.0  # seconds per node and read; a node that takes longer is reported and not waited for


def run_watch(opts: InputOptions, service, namespace, interval, count, output, out, err,
              top: int = TOP_RULES) -> int:
    if opts.bundle or opts.demo:
        raise UsageError("watch samples live counters and needs a live kind cluster; --bundle and --demo hold one "
                         "moment's counters (`svcdoctor explain --bundle …` shows them)")
    if service:
        ns, name = service.split("/", 1) if "/" in service and namespace is None else (namespace or "default", service)
        opts.service = f"{ns}/{name}"
    try:
        return _watch(opts, service, namespace, interval, count, output, out, err, top)
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def _watch(opts, service, namespace, interval, count, output, out, err, top: int = TOP_RULES) -> int:
    loaded = _first_read(opts, err)
    if not loaded.rules:
        raise SvcdoctorError("no node of the cluster could be read; nothing to watch", exit_status=ExitStatus.PARTIAL)
    plan = None
    if service:
        from svcdoctor.commands.explain import resolve_service, service_indexes
        from svcdoctor.model.explain import build_service_view

        ns, name = resolve_service(service, namespace, loaded)
        view = build_service_view(ns, name, loaded.rules, loaded.cluster, indexes=service_indexes(loaded, ns, name))
        plan = plan_service_watch(view, loaded.rules, loaded.cluster)
    from svcdoctor.collect.sampler import Sampler

    backends = {n.name: n.backend or "nft" for n in loaded.snapshot.nodes if n.name in loaded.rules}
    sampler = Sampler.open(loaded.snapshot.cluster, list(loaded.rules), backends, timeout=NODE_TIMEOUT)
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
            partial |= _loop(take, show, interval, count)
        elif out.is_terminal and _isatty(out.file):
            # FORCE_COLOR makes rich treat a pipe as a terminal for colours; redrawing in place needs a real one
            partial |= _live(take, out, plan, wide, interval, count)
        else:
            def show(frame: Frame) -> None:
                out.print(render_frame(frame, plan, wide))
                out.print()
            partial |= _loop(take, show, interval, count)
    finally:
        sampler.close()
    return ExitStatus.PARTIAL if partial else ExitStatus.OK


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _first_read(opts: InputOptions, err) -> LoadedInput:
    with err.status("collecting rules from the kind nodes…") as status:
        loaded = load(opts, progress=lambda msg: status.update(msg))
    print_input_report(loaded, err)
    return loaded


# --- one sample -------------------------------------------------------------------------------------------------------
def _service_sample(sampler, plan: ServiceWatchPlan, tracker: WatchTracker) -> Frame:
    wanted = plan.chains_to_read()
    got = sampler.read_chains({node: wanted for node in plan.nodes})
    when = datetime.now(timezone.utc)
    listings, failed = {}, {}
    for node, reading in got.items():
        if reading.error:
            failed[node] = reading.error
            continue
        parsed = parse_chain_listings(reading.text)
        errors = [listing.error for listing in parsed.values() if listing.error]
        if errors or any(key not in parsed for key in wanted):
            failed[node] = errors[0] if errors else "the chain listing came back incomplete"
            continue
        listings[node] = parsed
    unknown = {node: plan.unknown_endpoints(parsed) for node, parsed in listings.items()}
    if any(unknown.values()):
        # endpoints that appeared since the plan, in a cluster too big for comments: their DNAT rules name them
        more = sampler.read_chains({node: [("nat", sep) for sep in seps] for node, seps in unknown.items() if seps})
        for reading in more.values():
            if not reading.error:
                plan.learn(parse_chain_listings(reading.text))
    readings = {node: observe_service(plan, node, parsed) for node, parsed in listings.items()}
    chains = {node: {key: listing.present for key, listing in parsed.items() if key[0] == "nat"}
              for node, parsed in listings.items()}
    read_at = {node: got[node].read_at for node in listings}
    return tracker.update(readings, read_at, when, chains, failed, plan)


def _busiest_sampler(sampler, loaded: LoadedInput, tracker: BusiestTracker) -> Callable[[], Frame]:
    first = {n.name: n.iptables_save for n in loaded.snapshot.nodes if n.name in loaded.rules}
    first_at = time.monotonic()

    def take() -> Frame:
        nonlocal first
        if first is not None:
            # the first read was a full dump already: it is the first sample
            texts, read_at, failed, first = first, {n: first_at for n in first}, {}, None
        else:
            got = sampler.read_dumps(list(loaded.rules))
            texts = {n: r.text for n, r in got.items() if not r.error}
            read_at = {n: r.read_at for n, r in got.items() if not r.error}
            failed = {n: r.error for n, r in got.items() if r.error}
        scans = {n: scan_dump(text) for n, text in texts.items()}
        return tracker.update(scans, read_at, datetime.now(timezone.utc), failed)

    return take


# --- pacing and showing -----------------------------------------------------------------------------------------------
def _loop(take: Callable[[], Frame], show: Callable[[Frame], None], interval: float, count: int | None,
          wake: threading.Event | None = None, on_wake: Callable[[], None] | None = None) -> bool:
    """Sample, show, wait; until `count` samples. Returns whether any sample missed a node.

    The schedule starts when the first sample is shown (the first read is the slow, full one), then keeps a steady
    beat: sample k is due `interval` after sample k-1 was due, or at once if svcdoctor fell behind. ``wake`` cuts a
    wait short to call ``on_wake`` (a terminal resize redraws the view at once), then the wait goes on.
    """
    wake = wake or threading.Event()
    partial = False
    due = None
    n = 0
    while True:
        frame = take()
        partial |= bool(frame.failed)
        show(frame)
        n += 1
        if count is not None and n >= count:
            return partial
        now = time.monotonic()
        due = now + interval if due is None else max(due + interval, now)
        while (left := due - time.monotonic()) > 0:
            if wake.wait(left):
                wake.clear()
                if on_wake is not None:
                    on_wake()


def _live(take, out, plan, wide: bool, interval: float, count: int | None) -> bool:
    """The live view on a terminal: one table redrawn in place. Ctrl-C leaves it with the cursor back (rich's Live
    restores the terminal on the way out) and the command exits 130."""
    from rich.live import Live
    from rich.text import Text

    resized = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGWINCH"):
        previous = signal.signal(signal.SIGWINCH, lambda *_: resized.set())
    try:
        with Live(Text("taking the first sample…"), console=out, auto_refresh=False, transient=False,
                  redirect_stdout=False, redirect_stderr=False, vertical_overflow="ellipsis") as live:
            def show(frame: Frame) -> None:
                live.update(render_frame(frame, plan, wide), refresh=True)

            return _loop(take, show, interval, count, resized, live.refresh)
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
