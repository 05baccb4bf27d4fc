"""`watch` on a dual-stack node: IPv6 service ports are planned and sampled beside IPv4 ones.

The node is a network namespace holding kube-proxy's rules for both families (model/expected.py, loaded with the
real iptables-legacy-restore and ip6tables-legacy-restore, as tests/test_dual_stack.py does). The first read is its
bundle; every sample after that runs the sampler's real script with the real iptables-legacy and ip6tables-legacy
inside the namespace. Between two samples the kernel's counters move: the nat table is restored with counters
(`ip6tables-legacy-restore -c`). Not with real connections: a test machine's kernel may have no conntrack, and then
nat rules never see a packet. And legacy, because iptables-nft-restore -c (1.8.9, here) left the counters at 0.
"""

from __future__ import annotations

import io
import subprocess
import time
from datetime import datetime, timezone

import pytest
from rich.console import Console

from netns import Namespace, require_netns
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.sampler import NodeReading, chain_argv
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.inputs import build_view
from svcdoctor.inputs import InputOptions, load
from svcdoctor.commands.watch import _service_sample
from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.expected import ProxySettings, expected_restore_text
from svcdoctor.model.hashes import ENDPOINT_CHAIN_PREFIX
from svcdoctor.model.parse import parse_rules
from svcdoctor.model.watch.busiest import BusiestTracker, scan_dump
from svcdoctor.model.watch.listing import IPV4, IPV6
from svcdoctor.model.watch.plan import plan_service_watch
from svcdoctor.model.watch.tracker import WatchTracker
from svcdoctor.render.watch_view import render_frame, sample_document
from test_dual_stack import NODE, NODE_IP4, NODE_IP6, SERVICE, SLICES

pytestmark = pytest.mark.netns
CLUSTER_IP4, CLUSTER_IP6 = "10.96.0.50", "fd00:10:96::50"
ENDPOINTS4 = {"10.244.1.5:8080", "10.244.2.6:8080"}
ENDPOINTS6 = {"[fd00:10:244:1::5]:8080", "[fd00:10:244:2::6]:8080"}
MORE6, MORE4 = [25, 15], [4, 2]  # new connections per endpoint between the two samples, in the chain's order
CONNECTIONS6, CONNECTIONS4 = sum(MORE6), sum(MORE4)

class NamespaceSampler:
    """The sampler's `read_chains` with the namespace for a node: the same argv, run there instead of in a
    container."""

    def __init__(self, ns: Namespace):
        self.ns = ns

    def read_chains(self, wanted):
        out = {}
        for node, by_family in wanted.items():
            argv = chain_argv("legacy", by_family.get(IPV4, []), by_family.get(IPV6, []))
            proc = subprocess.run(["ip", "netns", "exec", self.ns.name, *argv], capture_output=True, text=True,
                                  timeout=60)
            out[node] = NodeReading(node, proc.stdout, None if proc.returncode == 0 else proc.stderr,
                                    read_at=time.monotonic())
        return out


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """(namespace, loaded bundle of its first read)."""
    require_netns()
    model = build_cluster_model([SERVICE], SLICES)
    settings = dict(node_name=NODE, node_ips=(NODE_IP4, NODE_IP6))
    v4 = expected_restore_text(model, ProxySettings(**settings, cluster_cidr="10.244.0.0/16"))
    v6 = expected_restore_text(model, ProxySettings(**settings, cluster_cidr="fd00:10:244::/56", ip_family="IPv6"))
    with Namespace() as ns:
        ns.run("iptables-legacy-restore", input=v4["filter"] + v4["nat"])
        ns.run("ip6tables-legacy-restore", input=v6["filter"] + v6["nat"])
        capture = NodeCapture(name=NODE, iptables_save=ns.run("iptables-legacy-save", "-c").stdout,
                              ip6tables_save=ns.run("ip6tables-legacy-save", "-c").stdout, internal_ip=NODE_IP4,
                              backend="legacy", proxy_mode="iptables")
        path = tmp_path_factory.mktemp("watch-dual") / "bundle.tar.gz"
        write_bundle(ClusterSnapshot(cluster="dual", nodes=[capture],
                                     api=ApiObjects(services=[SERVICE], endpointslices=SLICES, status="ok")), path)
        yield ns, load(InputOptions(bundle=str(path)))


def jump_counts(dump: str, chain: str) -> dict[str, int]:
    """KUBE-SEP-… -> packets of the jumps to it in `chain`, from an `iptables-save -c` dump."""
    rules = parse_rules(dump, "dump").chain("nat", chain).rules
    return {r.target: r.packets for r in rules if (r.target or "").startswith(ENDPOINT_CHAIN_PREFIX)}


def add_connections(ns: Namespace, tool: str, chain: str, more: list[int]) -> None:
    """What `more[i]` new connections drawn to the chain's i-th endpoint leave in the kernel: its nat table saved
    with counters, those jumps' counters raised, and restored with counters."""
    lines = ns.run(f"{tool}-save", "-t", "nat", "-c").stdout.splitlines()
    jumps = [i for i, line in enumerate(lines) if f"] -A {chain} " in line and f"-j {ENDPOINT_CHAIN_PREFIX}" in line]
    assert len(jumps) == len(more)
    for i, n in zip(jumps, more):
        counters, rule = lines[i][1:].split("] ", 1)
        packets, nbytes = map(int, counters.split(":"))
        lines[i] = f"[{packets + n}:{nbytes + 80 * n}] {rule}"
    ns.run(f"{tool}-restore", "-c", input="\n".join(lines) + "\n")


def test_the_plan_reads_ipv6_chains_on_a_dual_stack_node(node):
    ns, loaded = node
    assert loaded.rules6, "the bundle carries the node's ip6tables"
    plan = plan_service_watch(build_view(loaded, "default", "web"), loaded.rules, loaded.cluster, loaded.rules6)
    reads = plan.reads(NODE)
    assert set(reads) == {IPV4, IPV6} and reads[IPV6] == reads[IPV4]  # the same chain names in both families
    assert {label.address for label in plan.endpoints.values()} == ENDPOINTS4 | ENDPOINTS6
    port = plan.ports[0]
    assert port.entries_into(NODE, port.chains["svc"], IPV6)[0] == f"clusterIP [{CLUSTER_IP6}]:80"
    assert port.entries_into(NODE, port.chains["svc"], IPV4)[0] == f"clusterIP {CLUSTER_IP4}:80"


def test_ipv6_per_endpoint_deltas_between_two_samples(node):
    ns, loaded = node
    plan = plan_service_watch(build_view(loaded, "default", "web"), loaded.rules, loaded.cluster, loaded.rules6)
    svc_chain = plan.ports[0].chains["svc"]
    sampler, tracker = NamespaceSampler(ns), WatchTracker(1.0, plan.service)
    before6 = jump_counts(ns.run("ip6tables-legacy-save", "-c").stdout, svc_chain)
    first = _service_sample(sampler, plan, tracker)
    add_connections(ns, "ip6tables-legacy", svc_chain, MORE6)
    add_connections(ns, "iptables-legacy", svc_chain, MORE4)
    second = _service_sample(sampler, plan, tracker)
    after6 = jump_counts(ns.run("ip6tables-legacy-save", "-c").stdout, svc_chain)

    assert not first.failed and not second.failed
    assert all(r.delta_packets == 0 for r in first.rows)  # the baseline
    rows = {(r.reading.family, r.reading.endpoint): r for r in second.rows
            if r.reading.kind == "endpoint" and r.reading.chain == svc_chain}
    assert set(rows) == {(IPV4, e) for e in ENDPOINTS4} | {(IPV6, e) for e in ENDPOINTS6}
    ipv6 = {e: r for (family, e), r in rows.items() if family == IPV6}
    # each endpoint's delta is what the kernel's counter of its jump rule moved by
    by_sep = {plan.endpoints[sep].address: after6[sep] - before6.get(sep, 0) for sep in after6}
    assert {e: r.delta_packets for e, r in ipv6.items()} == by_sep
    assert sorted(by_sep.values()) == sorted(MORE6) and not any(r.reset for r in ipv6.values())
    assert all(r.packets == after6[r.reading.key[-1]] for r in ipv6.values())
    assert sum(r.delta_packets for (family, _e), r in rows.items() if family == IPV4) == CONNECTIONS4

    # one even-split test per family: IPv4 clients are balanced over IPv4 endpoints only, IPv6 over IPv6
    services = {s.family: s for s in second.splits if s.scope == "service"}
    assert set(services) == {IPV4, IPV6}
    assert set(services[IPV6].endpoints) == ENDPOINTS6 and services[IPV6].connections == CONNECTIONS6
    assert services[IPV4].connections == CONNECTIONS4

    doc = sample_document(second)
    shown6 = [r for r in doc["rows"] if r["kind"] == "endpoint" and r["family"] == IPV6 and r["chain"] == svc_chain]
    assert {r["endpoint"] for r in shown6} == ENDPOINTS6
    assert sum(r["deltaPackets"] for r in shown6) == CONNECTIONS6
    assert {s["family"] for s in doc["splits"] if s["scope"] == "service"} == {IPV4, IPV6}

    out = io.StringIO()
    Console(file=out, width=200, no_color=True).print(render_frame(second, plan))
    text = out.getvalue()
    assert f"{svc_chain} IPv6" in text and f"← clusterIP [{CLUSTER_IP6}]:80" in text
    assert all(e in text for e in ENDPOINTS6)


def test_without_a_service_the_busiest_rules_include_ipv6(node):
    ns, loaded = node
    plan = plan_service_watch(build_view(loaded, "default", "web"), loaded.rules, loaded.cluster, loaded.rules6)
    svc_chain = plan.ports[0].chains["svc"]

    def dumps():
        return [scan_dump(ns.run("iptables-legacy-save", "-c").stdout, IPV4),
                scan_dump(ns.run("ip6tables-legacy-save", "-c").stdout, IPV6)]

    tracker = BusiestTracker(2.0, 20)
    tracker.update({NODE: dumps()}, {NODE: 0.0}, datetime.now(timezone.utc))
    add_connections(ns, "ip6tables-legacy", svc_chain, [7, 3])
    frame = tracker.update({NODE: dumps()}, {NODE: 2.0}, datetime.now(timezone.utc))
    doc = sample_document(frame, top=20)
    # only the IPv6 jumps moved; the IPv4 rules of the same chain names did not
    assert [(r["family"], r["kind"], r["endpoint"], r["deltaPackets"]) for r in doc["rows"]] == [
        (IPV6, "endpoint", "[fd00:10:244:1::5]:8080", 7), (IPV6, "endpoint", "[fd00:10:244:2::6]:8080", 3)]
    assert all(r["service"] == "default/web:http" for r in doc["rows"])
