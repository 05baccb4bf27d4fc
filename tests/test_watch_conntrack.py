"""`watch` counted from conntrack: on a node in nftables mode (whose rules keep no counters), and with
`--source conntrack` on an iptables one.

The nftables node is tests/conntrack_node.py's network namespace: kube-proxy's nftables rules for `default/web`
(tests/nft_rules.py), its two endpoints answering on `lo`, and real connections to its cluster IP and node port.
Without root the samples are what the sampler's script printed there (tests/fixtures/conntrack/nft-node.json);
with root (the netns tests) everything is made and read again now, and the iptables node is the same namespace
with kube-proxy's iptables rules for a dual-stack Service (model/expected.py), sampled by counters and by
conntrack at once.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from datetime import datetime, timezone

import pytest
from rich.console import Console

from cli_run import run_cli
from conntrack_node import (AS_NOBODY, FIXTURE, NFT_NODE, NFT_SERVICES, WEB, NamespaceConntrackSampler, TrafficNode,
                            api_objects, endpoint_counts, nft_capture)
from netns import require_netns
from nft_rules import NODE_IP, Svc, ruleset
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.conntrack_reads import conntrack_argv
from svcdoctor.collect.sampler import NodeReading, chain_argv
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.commands.watch import CONNTRACK, COUNTERS, ServiceSample, node_sources
from svcdoctor.errors import ExitStatus
from svcdoctor.inputs import InputOptions, build_view, load
from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.expected import ProxySettings, expected_restore_text
from svcdoctor.model.nft.names import expected_name, service_base
from svcdoctor.model.watch.flows import plan_flows
from svcdoctor.model.watch.listing import IPV4, IPV6
from svcdoctor.model.watch.plan import plan_service_watch
from svcdoctor.model.watch.tracker import WatchTracker
from svcdoctor.render.watch_view import render_frame, sample_document, split_summary, what_is_counted

CAPTURE = json.loads(FIXTURE.read_text())
WEB_CHAIN = expected_name("service", service_base("default", "web", "tcp", "http"))
WEB_ENDPOINTS = {f"{ip}:80" for ip in WEB.endpoints}
SECOND_NODE = "nft-node-2"


def load_nft_cluster(tmp_path, nodes=(NFT_NODE,)):
    """The first read of a cluster whose nodes are in nftables mode, each with the captured kube-proxy table."""
    snapshot = ClusterSnapshot(cluster="nft", nodes=[nft_capture(CAPTURE["nftJson"], node) for node in nodes],
                               api=api_objects(NFT_SERVICES))
    write_bundle(snapshot, tmp_path / "bundle.tar.gz")
    return load(InputOptions(bundle=str(tmp_path / "bundle.tar.gz")))


def watch_parts(loaded, service="web", namespace="default", source=COUNTERS):
    """What `watch SERVICE` makes from its first read: the plan, each node's source, the flow plan."""
    view = build_view(loaded, namespace, service)
    plan = plan_service_watch(view, loaded.rules, loaded.cluster, loaded.rules6)
    sources = node_sources(plan.nodes, loaded.nft, source)
    return plan, sources, plan_flows(view, [n for n, s in sources.items() if s == CONNTRACK], plan)


class ReplaySampler:
    """The sampler's read_conntrack answering with what the script printed on the fixture's node, sample after
    sample; each node named in `texts` gets its own list of answers."""

    def __init__(self, texts: dict[str, list[str]]):
        self.texts = {node: list(answers) for node, answers in texts.items()}
        self.asked: list[dict] = []

    def read_conntrack(self, wanted):
        self.asked.append({node: [q.arg for q in queries] for node, queries in wanted.items()})
        now = time.monotonic()
        return {node: NodeReading(node, self.texts[node].pop(0), read_at=now) for node in wanted}


def rows_by_endpoint(frame, node=NFT_NODE, family=IPV4) -> dict:
    return {r.reading.endpoint: r for r in frame.rows
            if r.reading.kind == "endpoint" and r.reading.node == node and r.reading.family == family}


def view_text(frame, plan) -> str:
    out = io.StringIO()
    Console(file=out, width=250, no_color=True).print(render_frame(frame, plan), crop=False)
    return out.getvalue()


# --- an nftables node, from the capture ----------------------------------------------------------------------------
def test_an_nftables_node_is_counted_from_conntrack_per_endpoint(tmp_path):
    loaded = load_nft_cluster(tmp_path)
    plan, sources, flows = watch_parts(loaded)
    assert sources == {NFT_NODE: CONNTRACK}  # no --source: nftables mode has no counters to read
    assert [(e.label, e.chains) for e in flows.entries[NFT_NODE]] == [
        ("clusterIP 172.30.0.41:80", (WEB_CHAIN,)), ("nodePort :30080", (WEB_CHAIN,))]
    sampler = ReplaySampler({NFT_NODE: [s["reading"] for s in CAPTURE["samples"]]})
    sample = ServiceSample(sampler, plan, WatchTracker(2.0, plan.service), sources, flows, sorted(loaded.nft))
    first, second = sample.take(), sample.take()

    assert sampler.asked == [{NFT_NODE: CAPTURE["queries"]}] * 2, "the capture is stale: run tests/conntrack_node.py"
    before = endpoint_counts(CAPTURE["samples"][0]["servedSincePreviousSample"])
    served = endpoint_counts(CAPTURE["samples"][1]["servedSincePreviousSample"])
    rows = rows_by_endpoint(first)
    assert set(rows) == WEB_ENDPOINTS and all(r.reading.chain == WEB_CHAIN for r in rows.values())
    # the baseline: what conntrack held then, nothing new yet
    assert {e: (r.packets, r.delta_packets, r.reading.tracked) for e, r in rows.items()} == {
        e: (before[e], 0, before[e]) for e in WEB_ENDPOINTS}
    rows = rows_by_endpoint(second)
    assert {e: r.delta_packets for e, r in rows.items()} == served  # each endpoint: the connections it answered
    assert {e: r.reading.pod for e, r in rows.items()} == {"10.180.0.1:80": "default/web-1",
                                                            "10.180.0.2:80": "default/web-2"}
    assert all(r.reading.expected == 0.5 and not r.reset and r.change is None for r in rows.values())
    (service_split,) = [s for s in second.splits if s.scope == "service"]
    assert service_split.connections == sum(served.values()) and not second.failed

    doc = sample_document(second)
    assert (doc["source"], doc["sources"]) == ("conntrack", {NFT_NODE: "conntrack"})
    shown = {r["endpoint"]: r for r in doc["rows"]}
    assert {e: (r["deltaConnections"], r["deltaPackets"], r["source"], r["chain"]) for e, r in shown.items()} == {
        e: (n, n, "conntrack", WEB_CHAIN) for e, n in served.items()}
    assert all(r["bytes"] is None and r["deltaBytes"] is None and r["tracked"] >= r["deltaConnections"]
               for r in shown.values())
    text = view_text(second, plan)
    assert ("counted from conntrack on nft-node: kube-proxy runs in nftables mode there, and its nftables rules "
            "keep no counters.") in text
    assert f"{NFT_NODE}  {WEB_CHAIN}  ← clusterIP 172.30.0.41:80, nodePort :30080  +{sum(served.values())}" in text


def test_a_node_that_may_not_read_conntrack_is_named_and_the_others_counted(tmp_path):
    loaded = load_nft_cluster(tmp_path, (NFT_NODE, SECOND_NODE))
    plan, sources, flows = watch_parts(loaded)
    readings = [s["reading"] for s in CAPTURE["samples"]]
    sampler = ReplaySampler({NFT_NODE: readings, SECOND_NODE: [CAPTURE["denied"]["nobody"]] * 2})
    sample = ServiceSample(sampler, plan, WatchTracker(2.0, plan.service), sources, flows, sorted(loaded.nft))
    sample.take()
    frame = sample.take()
    assert frame.failed == {SECOND_NODE: (
        "conntrack -L: Operation failed: sorry, you must be root or get CAP_NET_ADMIN capability to do this, and "
        "cat /proc/net/nf_conntrack: Permission denied: connections cannot be counted here")}
    served = endpoint_counts(CAPTURE["samples"][1]["servedSincePreviousSample"])
    assert {e: r.delta_packets for e, r in rows_by_endpoint(frame).items()} == served
    assert f"{SECOND_NODE}: not read this sample (conntrack -L: Operation failed" in view_text(frame, plan)
    assert sample_document(frame)["failedNodes"][0]["node"] == SECOND_NODE


def test_read_from_the_proc_file_once_conntrack_is_refused_with_a_note(tmp_path):
    loaded = load_nft_cluster(tmp_path)
    plan, sources, flows = watch_parts(loaded)
    proc = CAPTURE["denied"]["no CAP_NET_ADMIN"]  # the same moment as the capture's last sample, from /proc
    sampler = ReplaySampler({NFT_NODE: [CAPTURE["samples"][0]["reading"], proc, proc]})
    sample = ServiceSample(sampler, plan, WatchTracker(2.0, plan.service), sources, flows, sorted(loaded.nft))
    sample.take()
    frame = sample.take()
    # the proc file has no ids: the same connections are known again by their addresses and ports
    served = endpoint_counts(CAPTURE["samples"][1]["servedSincePreviousSample"])
    assert {e: r.delta_packets for e, r in rows_by_endpoint(frame).items()} == served
    assert [n for n in frame.notes if "instead" in n] == [
        "nft-node: conntrack -L: Operation failed: sorry, you must be root or get CAP_NET_ADMIN capability to do this; "
        "read /proc/net/nf_conntrack instead (it has no connection ids: connections are told apart by their "
        "addresses and ports)"]
    again = sample.take()
    assert not [n for n in again.notes if "instead" in n]  # said once
    assert all(r.delta_packets == 0 for r in rows_by_endpoint(again).values())


def test_a_line_that_cannot_be_read_is_said_not_counted(tmp_path):
    loaded = load_nft_cluster(tmp_path)
    plan, sources, flows = watch_parts(loaded)
    first, second = (s["reading"] for s in CAPTURE["samples"])
    # a connection's line cut in two, as conntrack's stderr once cut it when written amid its 4 KB pieces
    line = next(line for line in second.splitlines() if "dport=80 " in line and line not in first)
    cut = second.replace(line, line[:70] + "\n" + line[70:])
    sample = ServiceSample(ReplaySampler({NFT_NODE: [first, cut]}), plan, WatchTracker(2.0, plan.service), sources,
                           flows)
    sample.take()
    frame = sample.take()
    served = endpoint_counts(CAPTURE["samples"][1]["servedSincePreviousSample"])
    assert sum(r.delta_packets for r in rows_by_endpoint(frame).values()) == sum(served.values()) - 1
    assert f"{NFT_NODE}: 2 line(s) of conntrack's listing could not be read: the connections in them are not " \
           "counted" in frame.notes


def test_with_session_affinity_conntrack_does_not_test_the_chains_split(tmp_path):
    loaded = load_nft_cluster(tmp_path)
    plan, sources, flows = watch_parts(loaded)
    plan.ports[0].affinity_seconds = 10800  # sessionAffinity ClientIP: returning clients skip the random draw
    sampler = ReplaySampler({NFT_NODE: [s["reading"] for s in CAPTURE["samples"]]})
    sample = ServiceSample(sampler, plan, WatchTracker(2.0, plan.service), sources, flows)
    sample.take()
    frame = sample.take()
    (chain_check,) = [s for s in frame.splits if s.scope == "chain"]
    assert chain_check.fit is None and not chain_check.departs and chain_check.connections >= chain_check.needed
    assert split_summary(chain_check).startswith("not tested: with session affinity, conntrack cannot tell")


def test_source_conntrack_needs_a_service_and_a_known_source():
    run = run_cli("watch", "--source", "conntrack", "--cluster", "nowhere")
    assert run.exit_code == ExitStatus.USAGE and "name the service" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    run = run_cli("watch", "web", "--source", "packets", "--cluster", "nowhere")
    assert run.exit_code == ExitStatus.USAGE and "--source" in run.stderr


def test_which_nodes_are_counted_from_conntrack():
    nft = {"b": ["its tables"]}
    assert node_sources(["a", "b"], nft) == {"a": COUNTERS, "b": CONNTRACK}
    assert node_sources(["a", "b"], nft, CONNTRACK) == {"a": CONNTRACK, "b": CONNTRACK}


# --- live: an nftables node made now --------------------------------------------------------------------------------
@pytest.mark.netns
def test_live_an_nftables_node_counts_each_endpoints_new_connections(tmp_path):
    require_netns()
    # another service whose port is web's node port: its connections are in the same conntrack listing
    other = Svc("default", "other", "172.30.0.42", WEB.node_port, endpoints=["10.180.0.3"], port_name="http")
    with TrafficNode() as node:
        node.load_nft(ruleset([*NFT_SERVICES, other]))
        table = node.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
        snapshot = ClusterSnapshot(cluster="nft", nodes=[nft_capture(table)],
                                   api=api_objects([*NFT_SERVICES, other]))
        write_bundle(snapshot, tmp_path / "bundle.tar.gz")
        loaded = load(InputOptions(bundle=str(tmp_path / "bundle.tar.gz")))
        plan, sources, flows = watch_parts(loaded)
        node.traffic(connect={f"{WEB.cluster_ip}:80/tcp": 3})  # before the watch: the baseline holds them
        sample = ServiceSample(NamespaceConntrackSampler(node), plan, WatchTracker(1.0, plan.service), sources,
                               flows, sorted(loaded.nft))
        first = sample.take()
        serve = [f"{ip}:80/tcp" for ip in WEB.endpoints] + ["10.180.0.3:53/udp", f"10.180.0.3:{WEB.node_port}/tcp"]
        served = node.traffic(serve, connect={f"{WEB.cluster_ip}:80/tcp": 17, f"{NODE_IP}:30080/tcp": 7,
                                              "172.30.0.10:53/udp": 4,  # the DNS service's are not web's,
                                              f"{other.cluster_ip}:{WEB.node_port}/tcp": 5})  # nor other's
        second = sample.take()
        quiet = sample.take()
    assert sum(r.packets for r in rows_by_endpoint(first).values()) == 3
    web_served = {e: n for e, n in endpoint_counts(served).items() if e in WEB_ENDPOINTS}
    assert sum(web_served.values()) == 24 and endpoint_counts(served)[f"10.180.0.3:{WEB.node_port}"] == 5
    assert {e: r.delta_packets for e, r in rows_by_endpoint(second).items() if r.delta_packets} == web_served
    assert set(rows_by_endpoint(second)) == WEB_ENDPOINTS
    assert all(r.delta_packets == 0 for r in rows_by_endpoint(quiet).values())  # TIME_WAIT ones are not new again
    assert {e: r.total_packets for e, r in rows_by_endpoint(quiet).items()} == {
        e: r.total_packets for e, r in rows_by_endpoint(second).items()}


# --- live: an iptables node, by counters and by conntrack at once ---------------------------------------------------
DUAL_SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "web"},
    "spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00:10:96::50"],
             "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack", "externalTrafficPolicy": "Cluster",
             "sessionAffinity": "None",
             "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30050}]},
}
DUAL_ENDPOINTS = {IPV4: ["10.244.1.5", "10.244.2.6"], IPV6: ["fd00:10:244:1::5", "fd00:10:244:2::6"]}
IPT_NODE, IPT_NODE_IP4, IPT_NODE_IP6 = "node-a", "172.18.0.3", "fc00:f853:ccd:e793::3"


def dual_slices() -> list[dict]:
    return [{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
             "metadata": {"namespace": "default", "name": f"web-{family.lower()}",
                          "labels": {"kubernetes.io/service-name": "web"}},
             "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
             "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": IPT_NODE}
                           for ip in ips]} for family, ips in DUAL_ENDPOINTS.items()]


def with_entry_jumps(nat: str) -> str:
    """kube-proxy's jumps into its chains from the built-in ones (it adds them outside its restore): locally made
    connections through OUTPUT, their masquerade in POSTROUTING."""
    head, _, _ = nat.rpartition("COMMIT")
    return (head.replace("*nat\n", "*nat\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n", 1)
            + "-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n")


class ChainSampler:
    """The sampler's read_chains with the namespace for the node (iptables-legacy, both families)."""

    def __init__(self, node: TrafficNode):
        self.node = node

    def read_chains(self, wanted):
        out = {}
        for name, by_family in wanted.items():
            proc = self.node.exec_argv(chain_argv("legacy", by_family.get(IPV4, []), by_family.get(IPV6, [])))
            out[name] = NodeReading(name, proc.stdout, None if proc.returncode == 0 else proc.stderr,
                                    read_at=time.monotonic())
        return out


@pytest.mark.netns
def test_live_conntrack_and_the_rule_counters_count_the_same_connections(tmp_path):
    require_netns()
    model = build_cluster_model([DUAL_SERVICE], dual_slices())
    settings = dict(node_name=IPT_NODE, node_ips=(IPT_NODE_IP4, IPT_NODE_IP6))
    v4 = expected_restore_text(model, ProxySettings(**settings, cluster_cidr="10.244.0.0/16"))
    v6 = expected_restore_text(model, ProxySettings(**settings, cluster_cidr="fd00:10:244::/56", ip_family="IPv6"))
    endpoints = tuple(DUAL_ENDPOINTS[IPV4] + DUAL_ENDPOINTS[IPV6])
    with TrafficNode(IPT_NODE_IP4, IPT_NODE_IP6, endpoints) as node:
        node.run("iptables-legacy-restore", input=v4["filter"] + with_entry_jumps(v4["nat"]))
        node.run("ip6tables-legacy-restore", input=v6["filter"] + with_entry_jumps(v6["nat"]))
        capture = NodeCapture(name=IPT_NODE, iptables_save=node.run("iptables-legacy-save", "-c").stdout,
                              ip6tables_save=node.run("ip6tables-legacy-save", "-c").stdout,
                              internal_ip=IPT_NODE_IP4, backend="legacy", proxy_mode="iptables")
        write_bundle(ClusterSnapshot(cluster="dual", nodes=[capture], api=ApiObjects(
            services=[DUAL_SERVICE], endpointslices=dual_slices(), status="ok")), tmp_path / "bundle.tar.gz")
        loaded = load(InputOptions(bundle=str(tmp_path / "bundle.tar.gz")))
        serve = [f"{'[' + ip + ']' if ':' in ip else ip}:8080/tcp" for ip in endpoints]
        samples = {}
        for source, sampler in ((COUNTERS, ChainSampler(node)), (CONNTRACK, NamespaceConntrackSampler(node))):
            plan, sources, flows = watch_parts(loaded, source=source)
            assert sources == {IPT_NODE: source}
            samples[source] = ServiceSample(sampler, plan, WatchTracker(1.0, plan.service), sources, flows)
        firsts = {source: sample.take() for source, sample in samples.items()}
        served = node.traffic(serve=serve, connect={"10.96.0.50:80/tcp": 13, f"{IPT_NODE_IP4}:30050/tcp": 6,
                                                    "[fd00:10:96::50]:80/tcp": 9})
        seconds = {source: sample.take() for source, sample in samples.items()}
    assert all(not f.failed for f in (*firsts.values(), *seconds.values()))
    per_source = {}
    for source, frame in seconds.items():
        rows = [r for r in frame.rows if r.reading.kind == "endpoint"]
        assert {r.reading.source for r in rows} == {source}
        per_source[source] = Counter({r.reading.endpoint: r.delta_packets for r in rows if r.delta_packets})
    want = Counter({spec.rsplit("/", 1)[0]: n for spec, n in served.items()})
    assert sum(want.values()) == 28 and per_source[COUNTERS] == want and per_source[CONNTRACK] == want
    # the same chains and families: conntrack's rows sit where the counters' do
    shape = {source: {(r.reading.family, r.reading.chain, r.reading.endpoint) for r in frame.rows
                      if r.reading.kind == "endpoint"} for source, frame in seconds.items()}
    assert shape[COUNTERS] == shape[CONNTRACK]
    text = view_text(seconds[CONNTRACK], samples[CONNTRACK].plan)
    assert "counted from conntrack on node-a (--source conntrack)." in text


@pytest.mark.netns
def test_live_a_node_read_as_nobody_fails_with_one_line(tmp_path):
    require_netns()
    with TrafficNode() as node:
        node.load_nft(ruleset([WEB]))
        table = node.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
        write_bundle(ClusterSnapshot(cluster="nft", nodes=[nft_capture(table)], api=api_objects([WEB])),
                     tmp_path / "bundle.tar.gz")
        loaded = load(InputOptions(bundle=str(tmp_path / "bundle.tar.gz")))
        plan, sources, flows = watch_parts(loaded)
        sample = ServiceSample(NamespaceConntrackSampler(node, *AS_NOBODY), plan, WatchTracker(1.0, plan.service),
                               sources, flows)
        frame = sample.take()
        assert node.exec_argv(conntrack_argv([]), *AS_NOBODY).returncode == 0  # the script itself ran
    (reason,) = frame.failed.values()
    assert "CAP_NET_ADMIN" in reason and "Permission denied" in reason and "\n" not in reason


def test_a_cluster_of_both_modes_says_which_node_is_counted_how():
    frame = WatchTracker(1.0, "default/web").update({}, {}, datetime.now(timezone.utc))
    frame.sources = {"iptables-node": COUNTERS, "nft-node": CONNTRACK, "other-node": CONNTRACK}
    frame.nftables_nodes = ["nft-node"]
    assert frame.source == "mixed" and sample_document(frame)["sources"] == frame.sources
    lines = what_is_counted(frame)
    assert lines[0].startswith("nat counters count new connections") and lines[0].endswith("(on iptables-node).")
    assert lines[1].startswith("conntrack: NEW is the connections to a service that conntrack holds")
    assert lines[2:] == ["counted from conntrack on nft-node: kube-proxy runs in nftables mode there, and its "
                         "nftables rules keep no counters.",
                         "counted from conntrack on other-node (--source conntrack)."]
