"""`watch` without a cluster: the pure parts fed with synthetic samples.

The plans come from the demo bundle (the seed's cluster, rules made by the kernel); each sample is the text the
sampler's exec prints (`#chain`, what `iptables -S CHAIN -v` prints, `#status`), written from those same rules with
the counters a test wants.
"""

from __future__ import annotations

import io
import json
import math
import re
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from cli_run import run_cli
from svcdoctor.collect.sampler import CHAIN_SCRIPT, chain_argv, parse_chain_listings
from svcdoctor.commands import watch as watch_command
from svcdoctor.inputs import build_view
from svcdoctor.inputs import InputOptions, load
from svcdoctor.errors import ExitStatus, UsageError
from svcdoctor.model.rules import NodeRules
from svcdoctor.model.watch.busiest import BusiestTracker, scan_dump
from svcdoctor.model.watch.frame import observe_service
from svcdoctor.model.watch.listing import IPV4
from svcdoctor.model.watch.plan import plan_service_watch
from svcdoctor.model.watch.stats import SIGNIFICANCE, chi_square_sf, chi_square_test, connections_needed
from svcdoctor.model.watch.tracker import WatchTracker
from svcdoctor.render import watch_live
from svcdoctor.render.watch_view import render_frame, sample_document, split_note

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
WORKER, WORKER3 = "myk8s-worker", "myk8s-worker3"
CLUSTERIP_SVC = "KUBE-SVC-KBDEBIL6IU6WL7RF"  # default/svc-clusterip:svc-webport
SEPS = {"KUBE-SEP-DOIEFYKPESCDTYCH": "10.10.2.2:80", "KUBE-SEP-2TLZC6QOUTI37HEJ": "10.10.3.2:80",
        "KUBE-SEP-UJ5TWZUP4ZE5V2IX": "10.10.4.2:80"}
ROW_KEYS = {"node", "chain", "rule", "service", "endpoint", "packets", "bytes", "deltaPackets", "deltaBytes", "reset"}


@pytest.fixture(scope="module")
def demo():
    return load(InputOptions(demo=True))


def plan_for(loaded, name: str, namespace: str = "default"):
    return plan_service_watch(build_view(loaded, namespace, name), loaded.rules, loaded.cluster, loaded.rules6)


def listing_text(rules: NodeRules, wanted, packets: dict | None = None, missing=(), replace: dict | None = None,
                 failing: dict | None = None) -> str:
    """What the sampler's exec prints for `wanted` on a node with these rules.

    packets: (chain, target) -> packets (bytes are 60 a packet; everything else counts 0); missing: chains to
    leave out (`#status 1`, as iptables exits for "no such chain"); replace: chain -> rule specs that stand in
    for its rules (a rewritten chain); failing: chain -> exit status of a listing that failed otherwise."""
    packets, replace, failing = packets or {}, replace or {}, failing or {}
    out = []
    for table, name in wanted:
        out.append(f"#chain {table} {name}")
        chain = rules.chain(table, name)
        if name in failing:
            out.append(f"#status {failing[name]}")
            continue
        if (chain is None and name not in replace) or name in missing:
            out.append("#status 1")
            continue
        out.append(f"-N {name}")
        specs = replace.get(name) or [r.spec for r in chain.rules]
        for spec in specs:
            target = re.search(r" ?-j (\S+)", " " + spec).group(1)
            n = packets.get((name, target), 0)
            head, _, tail = (" " + spec).rpartition(" -j ")
            out.append(f"-A {name}{head} -c {n} {n * 60} -j {tail}")
        out.append("#status 0")
    return "\n".join(out) + "\n"


def sample(tracker, plan, loaded, counts_by_node: dict, at: float, **kw):
    """Feed one sample (node -> {(chain, target): packets}) through parse, observe and the tracker."""
    wanted = plan.chains_to_read()
    readings, chains = {}, {}
    for node, counts in counts_by_node.items():
        listings = parse_chain_listings(listing_text(loaded.rules[node], wanted, counts, **kw))[IPV4]
        plan.learn(listings)
        readings[node] = observe_service(plan, node, listings)
        chains[node] = {(IPV4, *k): v.present for k, v in listings.items() if k[0] == "nat"}
    return tracker.update(readings, {n: at for n in counts_by_node}, T0 + timedelta(seconds=at), chains, {}, plan)


def svc(n1: int, n2: int, n3: int) -> dict:
    return {(CLUSTERIP_SVC, sep): n for sep, n in zip(SEPS, (n1, n2, n3))}


def endpoint_rows(frame, node=WORKER):
    return {r.reading.endpoint: r for r in frame.rows if r.reading.kind == "endpoint" and r.reading.node == node}


# --- deltas, rates, totals ------------------------------------------------------------------------------------------
def test_deltas_rates_and_totals_between_samples(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(2.0, plan.service)
    first = sample(tracker, plan, demo, {WORKER: svc(2, 3, 1)}, at=10.0)
    rows = endpoint_rows(first)
    assert set(rows) == set(SEPS.values())
    assert [(rows[e].packets, rows[e].delta_packets, rows[e].rate) for e in SEPS.values()] == [
        (2, 0, None), (3, 0, None), (1, 0, None)]  # the first sample is the baseline: no deltas yet

    second = sample(tracker, plan, demo, {WORKER: svc(5, 3, 10)}, at=12.5)
    rows = endpoint_rows(second)
    got = [(rows[e].delta_packets, rows[e].delta_bytes, rows[e].rate, rows[e].reset) for e in SEPS.values()]
    assert got == [(3, 180, 3 / 2.5, False), (0, 0, 0.0, False), (9, 540, 9 / 2.5, False)]
    assert second.elapsed == {WORKER: 2.5}

    third = sample(tracker, plan, demo, {WORKER: svc(6, 7, 10)}, at=14.5)
    rows = endpoint_rows(third)
    assert [rows[e].total_packets for e in SEPS.values()] == [4, 4, 9]  # since the watch started
    assert [round(rows[e].observed_share, 6) for e in SEPS.values()] == [round(x / 17, 6) for x in (4, 4, 9)]
    assert all(math.isclose(rows[e].reading.expected, 1 / 3, abs_tol=1e-9) for e in SEPS.values())
    pods = {rows[e].reading.pod for e in SEPS.values()}
    assert len(pods) == 3 and all(p.startswith("default/webpod-") for p in pods)  # named from the API


def test_a_counter_that_goes_down_is_a_reset_never_a_negative_delta(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: svc(50, 40, 30)}, at=0)
    frame = sample(tracker, plan, demo, {WORKER: svc(4, 45, 2)}, at=1)
    rows = endpoint_rows(frame)
    first, second, third = (rows[e] for e in SEPS.values())
    assert (first.reset, first.change, first.delta_packets, first.delta_bytes) == (True, "reset", 4, 240)
    assert (second.reset, second.change, second.delta_packets) == (False, None, 5)
    assert (third.reset, third.delta_packets) == (True, 2)
    assert all(r.delta_packets >= 0 and r.delta_bytes >= 0 for r in frame.rows)
    doc = sample_document(frame)
    assert [r["reset"] for r in doc["rows"] if r["kind"] == "endpoint"] == [True, False, True]


def test_a_rewritten_rule_with_new_text_is_a_reset_even_when_its_counter_grew(demo):
    # kube-proxy rewrote the chain with other probabilities (say an endpoint's weight changed): same SEP, new rule
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: svc(1, 1, 1)}, at=0)
    seps = list(SEPS)
    rewritten = [f"-m statistic --mode random --probability 0.20000000019 -j {seps[0]}",
                 f"-m statistic --mode random --probability 0.50000000000 -j {seps[1]}", f"-j {seps[2]}"]
    frame = sample(tracker, plan, demo, {WORKER: svc(7, 8, 9)}, at=1, replace={CLUSTERIP_SVC: rewritten})
    rows = endpoint_rows(frame)
    assert [(rows[e].reset, rows[e].delta_packets) for e in SEPS.values()] == [(True, 7), (True, 8), (True, 9)]
    assert math.isclose(rows[SEPS[seps[0]]].reading.expected, 0.2, abs_tol=1e-6)
    assert any("changed" in n and CLUSTERIP_SVC in n for n in frame.notes)  # the split test starts again


# --- chains and endpoints that come and go --------------------------------------------------------------------------
def test_chains_and_endpoints_that_appear_and_disappear(demo):
    plan = plan_for(demo, "svc-local")
    port = plan.ports[0]
    svl, svc_chain = port.chains["svl"], port.chains["svc"]
    rules = demo.rules[WORKER3]  # no local endpoint on worker3: no KUBE-SVL chain there
    assert rules.chain("nat", svl) is None and rules.chain("nat", svc_chain) is not None
    sep = next(r.target for r in rules.chain("nat", svc_chain).rules if (r.target or "").startswith("KUBE-SEP-"))
    tracker = WatchTracker(1.0, plan.service)
    first = sample(tracker, plan, demo, {WORKER3: {}}, at=0)
    assert not first.chain_changes

    # a local endpoint came to worker3: kube-proxy writes its KUBE-SVL chain
    frame = sample(tracker, plan, demo, {WORKER3: {(svl, sep): 4}}, at=1, replace={svl: [f"-j {sep}"]})
    assert [(c.node, c.chain, c.change) for c in frame.chain_changes] == [(WORKER3, svl, "appeared")]
    (new,) = [r for r in frame.rows if r.reading.chain == svl]
    assert (new.change, new.delta_packets, new.reset) == ("appeared", 4, False)  # all it counted is new

    # and left again: the chain disappears, its endpoint row is shown once as gone
    frame = sample(tracker, plan, demo, {WORKER3: {}}, at=2)
    assert [(c.chain, c.change) for c in frame.chain_changes] == [(svl, "disappeared")]
    (gone,) = [r for r in frame.rows if r.reading.chain == svl]
    assert (gone.change, gone.delta_packets, gone.packets) == ("gone", 0, 4)
    frame = sample(tracker, plan, demo, {WORKER3: {}}, at=3)
    assert not [r for r in frame.rows if r.reading.chain == svl] and not frame.chain_changes


def test_blackhole_rules_of_the_service_are_rows_of_their_own(demo):
    plan = plan_for(demo, "svc-local")
    tracker = WatchTracker(1.0, plan.service)
    drop = ("KUBE-EXTERNAL-SERVICES", "DROP")
    sample(tracker, plan, demo, {WORKER3: {drop: 7}}, at=0)
    frame = sample(tracker, plan, demo, {WORKER3: {drop: 9}}, at=2)
    (hole,) = [r for r in frame.rows if r.reading.kind == "blackhole"]
    assert (hole.reading.chain, hole.reading.verdict, hole.packets, hole.delta_packets, hole.rate) == (
        "KUBE-EXTERNAL-SERVICES", "DROP", 9, 2, 1.0)
    assert hole.reading.service == "default/svc-local:http" and "has no local endpoints" in hole.reading.comment
    # kubelet's localnet DROP in KUBE-FIREWALL is no service's
    assert all("svc-local" in r.reading.rule for r in frame.rows if r.reading.kind == "blackhole")


def test_a_node_that_fails_keeps_its_rows_for_the_next_sample(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: svc(1, 1, 1)}, at=0)
    failed = tracker.update({}, {}, T0, {}, {WORKER: "did not answer within 10s"}, plan)
    assert failed.failed == {WORKER: "did not answer within 10s"} and not failed.rows
    frame = sample(tracker, plan, demo, {WORKER: svc(3, 1, 4)}, at=4)
    rows = endpoint_rows(frame)
    assert [rows[e].delta_packets for e in SEPS.values()] == [2, 0, 3] and frame.elapsed == {WORKER: 4}
    assert not [r for r in frame.rows if r.change in ("gone", "appeared")]


def test_an_iptables_failure_is_not_a_missing_chain():
    text = "#chain nat KUBE-SVC-X\n#status 1\n#chain nat KUBE-SVL-X\n#status 4\n"
    listings = parse_chain_listings(text)[IPV4]
    assert listings[("nat", "KUBE-SVC-X")].present is False and listings[("nat", "KUBE-SVC-X")].error is None
    assert listings[("nat", "KUBE-SVL-X")].error == "iptables -S KUBE-SVL-X exited 4"


# --- the statistics -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [0.1, 1.0, 3.84, 7.5, 20.0, 60.0])
def test_chi_square_survival_matches_closed_forms(x):
    # exact for these degrees of freedom: erfc and exp forms of the regularized upper incomplete gamma
    assert math.isclose(chi_square_sf(x, 1), math.erfc(math.sqrt(x / 2)), rel_tol=1e-9, abs_tol=1e-300)
    assert math.isclose(chi_square_sf(x, 2), math.exp(-x / 2), rel_tol=1e-9)
    three = math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    assert math.isclose(chi_square_sf(x, 3), three, rel_tol=1e-9)
    assert math.isclose(chi_square_sf(x, 4), math.exp(-x / 2) * (1 + x / 2), rel_tol=1e-9)


def test_chi_square_critical_values():
    # the tables' 5% and 1% points
    assert math.isclose(chi_square_sf(3.841458820694124, 1), 0.05, rel_tol=1e-9)
    assert math.isclose(chi_square_sf(11.070497693516351, 5), 0.05, rel_tol=1e-9)
    assert math.isclose(chi_square_sf(23.209251158954356, 10), 0.01, rel_tol=1e-9)


def test_chi_square_statistic_by_hand():
    fit = chi_square_test([60, 20, 20], [1 / 3, 1 / 3, 1 / 3])
    # expected 33.3 each: (26.7^2 + 13.3^2 + 13.3^2) / 33.3 = 32
    assert math.isclose(fit.statistic, 32.0, rel_tol=1e-12) and fit.degrees_of_freedom == 2
    assert math.isclose(fit.p_value, math.exp(-16), rel_tol=1e-9)
    assert connections_needed([1 / 3, 1 / 3, 1 / 3]) == 15 and connections_needed([0.8, 0.2]) == 25
    assert connections_needed([0.33333333349, 0.333333333255, 0.333333333255]) == 15  # as the kernel rounds them


def test_a_skewed_split_gets_a_note_with_the_numbers(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: svc(0, 0, 0)}, at=0)
    few = sample(tracker, plan, demo, {WORKER: svc(4, 1, 1)}, at=1)
    (service_check,) = [s for s in few.splits if s.scope == "service"]
    assert service_check.fit is None and service_check.needed == 15 and not few.notes  # too few to tell

    frame = sample(tracker, plan, demo, {WORKER: svc(60, 20, 20)}, at=2)
    (service_check,) = [s for s in frame.splits if s.scope == "service"]
    (chain_check,) = [s for s in frame.splits if s.scope == "chain"]
    for check in (service_check, chain_check):
        # the chain is tested against its probabilities as the kernel holds them (0.33333333349, …), hence 1e-6
        assert check.observed == [60, 20, 20] and check.departs
        assert math.isclose(check.fit.statistic, 32.0, rel_tol=1e-6)
        assert math.isclose(check.fit.p_value, math.exp(-16), rel_tol=1e-6) and check.fit.p_value < SIGNIFICANCE
    assert service_check.fit.statistic == pytest.approx(32.0, rel=1e-12)
    note = split_note(service_check)
    assert "chi-square 32.0 with 2 degrees of freedom, p = 1.1e-07" in note
    first_pod = plan.endpoints[next(iter(SEPS))].pod
    assert f"{first_pod} 60 (60%, expected 33%)" in note and "keep-alive" in note
    doc = sample_document(frame)
    (svc_doc,) = [s for s in doc["splits"] if s["scope"] == "service"]
    assert svc_doc["degreesOfFreedom"] == 2 and math.isclose(svc_doc["statistic"], 32.0) and svc_doc["departs"]
    assert note in doc["notes"]


def test_an_even_split_gets_no_note(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: svc(0, 0, 0)}, at=0)
    frame = sample(tracker, plan, demo, {WORKER: svc(34, 33, 33)}, at=1)
    checks = {s.scope: s for s in frame.splits}
    assert checks["service"].fit is not None and not checks["service"].departs
    assert math.isclose(checks["service"].fit.statistic, (0.67 ** 2 + 2 * 0.33 ** 2) / 33.33, rel_tol=1e-3)
    assert checks["service"].fit.p_value > 0.9
    assert not frame.notes and not [s for s in frame.splits if split_note(s)]


def test_local_traffic_policy_names_the_node_that_took_the_traffic(demo):
    plan = plan_for(demo, "svc-local")
    port = plan.ports[0]
    rules = demo.rules[WORKER]
    svl = rules.chain("nat", port.chains["svl"])
    (local_sep,) = [r.target for r in svl.rules if (r.target or "").startswith("KUBE-SEP-")]
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: {}}, at=0)
    frame = sample(tracker, plan, demo, {WORKER: {(port.chains["svl"], local_sep): 40}}, at=1)
    (check,) = [s for s in frame.splits if s.scope == "service"]
    assert check.departs and check.connections == 40
    note = split_note(check)
    assert "a node taking all external traffic" in note and f"{WORKER} 40" in note
    # on the node itself, KUBE-SVL has one endpoint: nothing to test, nothing wrong
    assert not [s for s in frame.splits if s.scope == "chain" and s.fit is not None]


def test_session_affinity_hits_are_counted_but_left_out_of_the_random_split(demo):
    plan = plan_for(demo, "svc-affinity")
    port = plan.ports[0]
    node = next(n for n, r in demo.rules.items() if r.chain("nat", port.chains["svc"]) is not None)
    chain = demo.rules[node].chain("nat", port.chains["svc"])
    seps = [r.target for r in chain.rules if (r.target or "").startswith("KUBE-SEP-") and r.value("--rcheck") is None
            and not any(m.module == "recent" for m in r.matches)]
    assert len(seps) == 3 and port.affinity_seconds == 10800
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {node: {}}, at=0)
    # 9 first-time clients split 3/3/3; then 30 returning clients, all held on the first endpoint by `recent`
    lines = []
    for line in listing_text(demo.rules[node], plan.chains_to_read()).splitlines():
        if line.startswith(f"-A {port.chains['svc']} ") and "KUBE-SEP-" in line:
            if "--rcheck" not in line:
                line = line.replace(" -c 0 0 ", " -c 3 180 ")
            elif seps[0] in line:
                line = line.replace(" -c 0 0 ", " -c 30 1800 ")
        lines.append(line)
    listings = parse_chain_listings("\n".join(lines) + "\n")[IPV4]
    frame = tracker.update({node: observe_service(plan, node, listings)}, {node: 1.0}, T0, {}, {}, plan)
    rows = endpoint_rows(frame, node)
    assert sorted(r.delta_packets for r in rows.values()) == [3, 3, 33]
    assert max(r.affinity_delta for r in rows.values()) == 30
    (chain_check,) = [s for s in frame.splits if s.scope == "chain"]
    assert chain_check.observed == [3, 3, 3] and chain_check.affinity_connections == 30
    (service_check,) = [s for s in frame.splits if s.scope == "service"]
    assert service_check.departs and "session affinity: 30 of the 39 connections" in split_note(service_check)


# --- without a service: the busiest rules -------------------------------------------------------------------------
def busiest_rows(text: str, pods=None, top: int = 1000):
    """Every counted rule of a dump, named, as the first sample of a busiest-rules watch shows them."""
    frame = BusiestTracker(2.0, top, pods).update({WORKER: [scan_dump(text)]}, {WORKER: 0.0}, T0)
    return [r.reading for r in frame.rows]


def test_busiest_rules_of_a_dump_name_services_and_endpoints(demo):
    capture = next(n for n in demo.snapshot.nodes if n.name == WORKER)
    rows = busiest_rows(capture.iptables_save, demo.cluster.pods_by_ip)
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)
    eps = [r for r in by_kind["endpoint"] if r.chain == CLUSTERIP_SVC]
    assert {r.endpoint for r in eps} == set(SEPS.values()) and {r.rules[0].packets for r in eps} == {2, 3, 1}
    assert {r.service for r in eps} == {"default/svc-clusterip:svc-webport"}
    assert all(r.pod and r.pod.startswith("default/webpod-") for r in eps)
    assert any(r.chain == "KUBE-SERVICES" and r.service == "default/svc-clusterip:svc-webport"
               and r.rules[0].packets == 6 for r in by_kind["entry"])
    # blackholes are scanned too (on this node none has counted anything, so the first sample lists none)
    holes = [r for r in scan_dump(capture.iptables_save).rules if r[0] == "blackhole"]
    assert holes and {r[6] for r in holes} <= {"DROP", "REJECT"} and "blackhole" not in by_kind
    # without comments on the jumps (large clusters), the chain's hash still names the service through its entry
    bare = re.sub(r' -m comment --comment "[^"]*" (-m statistic|-j KUBE-SEP)', r" \1", capture.iptables_save)
    assert bare != capture.iptables_save
    unnamed = [r for r in busiest_rows(bare) if r.kind == "endpoint" and r.chain == CLUSTERIP_SVC]
    assert {r.service for r in unnamed} == {"default/svc-clusterip:svc-webport"}


def test_busiest_rules_are_sorted_by_new_connections(demo):
    capture = next(n for n in demo.snapshot.nodes if n.name == WORKER)
    tracker = BusiestTracker(2.0, 3)
    first = tracker.update({WORKER: [scan_dump(capture.iptables_save)]}, {WORKER: 0.0}, T0)
    assert len(first.rows) == 3 and [r.packets for r in first.rows] == sorted(
        (r.packets for r in first.rows), reverse=True)  # the first sample: the most counted so far
    jump = '-A KUBE-SVC-KBDEBIL6IU6WL7RF -m comment --comment "default/svc-clusterip:svc-webport -> {}"'
    busier = capture.iptables_save.replace(f"[1:60] {jump.format('10.10.4.2:80')}",
                                           f"[101:6060] {jump.format('10.10.4.2:80')}")
    busier = busier.replace(f"[2:120] {jump.format('10.10.2.2:80')}", f"[7:420] {jump.format('10.10.2.2:80')}")
    assert f"[101:6060] {jump.format('10.10.4.2:80')}" in busier and f"[7:420] {jump.format('10.10.2.2:80')}" in busier
    frame = tracker.update({WORKER: [scan_dump(busier)]}, {WORKER: 2.0}, T0)
    doc = sample_document(frame, top=3)
    # only what moved, the busiest first
    assert [(r["endpoint"], r["deltaPackets"], r["ratePerSecond"]) for r in doc["rows"]] == [
        ("10.10.4.2:80", 100, 50.0), ("10.10.2.2:80", 5, 2.5)]
    quiet = tracker.update({WORKER: [scan_dump(busier)]}, {WORKER: 4.0}, T0)
    assert sample_document(quiet, top=3)["rows"] == []
    # a chain rewritten with fresh counters is a reset there too
    reset = busier.replace(f"[101:6060] {jump.format('10.10.4.2:80')}", f"[4:240] {jump.format('10.10.4.2:80')}")
    (row,) = tracker.update({WORKER: [scan_dump(reset)]}, {WORKER: 6.0}, T0).rows
    assert (row.reset, row.change, row.delta_packets, row.total_packets) == (True, "reset", 4, 104)


# --- what the user sees -----------------------------------------------------------------------------------------------
def test_watch_sample_json_follows_the_contract(demo):
    plan = plan_for(demo, "svc-local")
    tracker = WatchTracker(1.5, plan.service)
    nodes = {n: {} for n in demo.rules}
    sample(tracker, plan, demo, nodes, at=0)
    frame = sample(tracker, plan, demo, nodes, at=1.5)
    line = json.dumps(sample_document(frame))
    assert "\n" not in line and "\x1b" not in line
    doc = json.loads(line)
    assert (doc["apiVersion"], doc["kind"], doc["interval"]) == ("svcdoctor/v1", "WatchSample", 1.5)
    assert datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert doc["rows"]
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row)
        assert isinstance(row["reset"], bool) and isinstance(row["deltaPackets"], int)
        assert isinstance(row["packets"], int) and isinstance(row["bytes"], int)
        assert row["kind"] in ("endpoint", "blackhole")
    kinds = {(r["node"], r["kind"]) for r in doc["rows"]}
    assert (WORKER3, "blackhole") in kinds and (WORKER, "endpoint") in kinds


def test_the_view_says_what_the_counters_count_and_marks_changes(demo):
    plan = plan_for(demo, "svc-local")
    tracker = WatchTracker(1.0, plan.service)
    drop = ("KUBE-EXTERNAL-SERVICES", "DROP")
    sample(tracker, plan, demo, {WORKER3: {drop: 7}, WORKER: {}}, at=0)
    frame = sample(tracker, plan, demo, {WORKER3: {drop: 3}, WORKER: {}}, at=1)
    out = io.StringIO()
    Console(file=out, width=200, no_color=True).print(render_frame(frame, plan))
    text = out.getvalue()
    assert "count new connections" in text and "not packets" in text
    assert "blackholes: DROP/REJECT" in text and "has no local endpoints" in text and "reset +3" in text
    assert "no new connections since the watch started on myk8s-worker" in text  # idle nodes: one line
    out = io.StringIO()
    Console(file=out, width=200, no_color=True).print(render_frame(frame, plan, all_nodes=True))
    assert "← nodePort" in out.getvalue()  # the entries that lead into each split chain


# --- folded and plainly worded (issue #11) ------------------------------------------------------------------------
def _text(frame, plan, **kw) -> str:
    out = io.StringIO()
    Console(file=out, width=250, no_color=True).print(render_frame(frame, plan, **kw), crop=False)
    return out.getvalue()


def test_idle_nodes_are_one_line_and_all_nodes_shows_them(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    idle = {n: {} for n in demo.rules if n != WORKER}
    sample(tracker, plan, demo, {**idle, WORKER: svc(0, 0, 0)}, at=0)
    frame = sample(tracker, plan, demo, {**idle, WORKER: svc(5, 5, 5)}, at=1)
    text = _text(frame, plan)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines if "KUBE-SVC-" in line] == [WORKER]  # one block: the busy node
    assert ("no new connections since the watch started on myk8s-control-plane, myk8s-worker2, myk8s-worker3 "
            "(--all-nodes shows them)") in lines
    every = _text(frame, plan, all_nodes=True)
    assert sorted(line.split()[0] for line in every.splitlines() if "KUBE-SVC-" in line) == sorted(demo.rules)
    assert "--all-nodes" not in every


def test_a_node_with_counters_before_the_watch_is_idle_once_the_watch_runs(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    first = sample(tracker, plan, demo, {WORKER: svc(3, 3, 3), WORKER3: svc(0, 0, 0)}, at=0)
    assert "no new connections yet on myk8s-worker3" in _text(first, plan)  # the first sample: counters as they are
    assert f"{WORKER}  KUBE-SVC-" in _text(first, plan)
    later = sample(tracker, plan, demo, {WORKER: svc(3, 3, 3), WORKER3: svc(0, 0, 0)}, at=1)
    assert "no new connections since the watch started on myk8s-worker, myk8s-worker3" in _text(later, plan)


def test_without_the_api_there_is_no_pod_column(demo):
    bare = load(InputOptions(demo=True, no_api=True))
    plan = plan_for(bare, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, bare, {WORKER: svc(0, 0, 0)}, at=0)
    frame = sample(tracker, plan, bare, {WORKER: svc(5, 5, 5)}, at=1)
    header = next(line for line in _text(frame, plan).splitlines() if "ENDPOINT" in line)
    assert header.split() == ["ENDPOINT", "NEW", "RATE/s", "TOTAL", "OBSERVED", "EXPECTED"]
    named = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, named.service)
    sample(tracker, named, demo, {WORKER: svc(0, 0, 0)}, at=0)
    frame = sample(tracker, named, demo, {WORKER: svc(5, 5, 5)}, at=1)
    header = next(line for line in _text(frame, named).splitlines() if "ENDPOINT" in line)
    assert header.split()[:2] == ["ENDPOINT", "POD"]


def test_the_split_test_is_worded_plainly_with_its_threshold(demo):
    plan = plan_for(demo, "svc-clusterip")
    tracker = WatchTracker(1.0, plan.service)
    sample(tracker, plan, demo, {WORKER: svc(0, 0, 0)}, at=0)
    few = _text(sample(tracker, plan, demo, {WORKER: svc(4, 1, 1)}, at=1), plan)
    assert "too few connections to test the split yet (6 of the 15 needed)" in few
    assert "connections to test" not in few.replace("too few connections to test", "")
    fits = _text(sample(tracker, plan, demo, {WORKER: svc(12, 10, 8)}, at=2), plan)
    # 11/9/10 since the start: chi-square 0.2 with 2 degrees of freedom
    assert re.search(r"the split fits the rules \(p=0\.\d{3}; a departure is called below p<0\.001\)", fits)
    assert "χ²" not in fits and " df " not in fits
    departs = _text(sample(tracker, plan, demo, {WORKER: svc(80, 12, 8)}, at=3), plan)
    assert "the split DEPARTS from the rules (p=" in departs and "below the p<0.001 that calls a departure" in departs


def test_watch_refuses_offline_input():
    for args in (["--demo"], ["--bundle", "/nonexistent"]):
        run = run_cli("watch", "svc-clusterip", *args)
        assert run.exit_code == ExitStatus.USAGE
        assert "live" in run.stderr and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_ctrl_c_restores_the_terminal_and_exits_130(monkeypatch):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    calls = []

    def take():
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return WatchTracker(1.0).update({}, {}, T0)

    with pytest.raises(KeyboardInterrupt):
        watch_live.live(take, console, None, False, 0.01, None)
    text = out.getvalue()
    assert "\x1b[?25l" in text and text.rstrip().endswith("\x1b[?25h")  # cursor hidden while live, shown again

    def interrupted(*_a):
        raise KeyboardInterrupt

    monkeypatch.setattr(watch_command, "_watch", interrupted)
    assert watch_command.run_watch(InputOptions(), "svc", None, 1.0, None, "table", console, console) == 130


def test_the_loop_stops_after_count_samples_and_reports_missed_nodes():
    frames = iter([WatchTracker(1.0).update({}, {}, T0),
                   WatchTracker(1.0).update({}, {}, T0, failed={"n1": "gone"})] * 3)
    shown = []
    partial = watch_live.paced(lambda: next(frames), shown.append, 0.01, 2)
    assert len(shown) == 2 and partial is True


def test_the_sampler_runs_a_constant_script_with_chain_names_as_arguments():
    argv = chain_argv("nft", [("nat", "KUBE-SVC-KBDEBIL6IU6WL7RF"), ("filter", "KUBE-EXTERNAL-SERVICES")])
    assert argv[:6] == ["sh", "-c", CHAIN_SCRIPT, "sh", "iptables-nft", "ip6tables-nft"]
    assert argv[6:] == ["nat:KUBE-SVC-KBDEBIL6IU6WL7RF", "filter:KUBE-EXTERNAL-SERVICES"]
    assert "-Z" not in CHAIN_SCRIPT and "-S" in CHAIN_SCRIPT and "-v" in CHAIN_SCRIPT
    assert chain_argv("legacy", [("nat", "KUBE-SERVICES")])[4:6] == ["iptables-legacy", "ip6tables-legacy"]
    # a dual-stack node: its IPv6 chains (same names) go to ip6tables in the same exec
    assert chain_argv("nft", [("nat", "KUBE-SERVICES")], [("nat", "KUBE-SERVICES")])[6:] == [
        "nat:KUBE-SERVICES", "6:nat:KUBE-SERVICES"]
    for bad in ("KUBE-SVC-X; iptables -F", "-Z", "$(reboot)", "A" * 40, ""):
        with pytest.raises(UsageError):
            chain_argv("nft", [("nat", bad)])
        with pytest.raises(UsageError):
            chain_argv("nft", [], [("nat", bad)])
    with pytest.raises(UsageError):
        chain_argv("nft", [("nat; -F", "KUBE-SERVICES")])


def test_top_sets_how_many_busiest_rules_the_view_shows(demo):
    from rich.console import Console

    from svcdoctor.render.watch_view import render_frame

    capture = next(n for n in demo.snapshot.nodes if n.name == WORKER)
    frame = BusiestTracker(2.0, 2).update({WORKER: [scan_dump(capture.iptables_save)]}, {WORKER: 0.0}, T0)
    assert frame.top == 2 and len(frame.rows) == 2
    console = Console(width=200, record=True, no_color=True)
    console.print(render_frame(frame))
    assert "the 2 busiest kube-proxy rules" in console.export_text()
    for bad in ("0", "-3"):
        run = run_cli("watch", "--top", bad, "--cluster", "nowhere")
        assert run.exit_code == ExitStatus.USAGE and "--top" in run.stderr
