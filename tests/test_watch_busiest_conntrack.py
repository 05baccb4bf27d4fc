"""`watch` without a service on nodes in nftables mode: their rules keep no counters, so the busiest endpoints of
every service port of their tables are ranked by the new connections conntrack lists, next to the busiest rules of
the iptables nodes (commands/watch.py BusiestSample, model/watch/flows.py plan_table_flows).

The nftables node is tests/conntrack_node.py's: its captured samples without root, a network namespace with real
connections with root (the netns test). The iptables node is the demo bundle's worker.
"""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console

from conntrack_node import (FIXTURE, NFT_NODE, NFT_SERVICES, WEB, NamespaceConntrackSampler, TrafficNode,
                            api_objects, endpoint_counts, nft_capture)
from netns import require_netns
from nft_rules import NODE_IP, Svc, ruleset
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.sampler import NodeReading
from svcdoctor.collect.snapshot import ClusterSnapshot
from svcdoctor.commands.watch import BusiestSample
from svcdoctor.inputs import InputOptions, load
from svcdoctor.model.watch.busiest import BusiestTracker
from svcdoctor.render.watch_view import render_frame, sample_document

CAPTURE = json.loads(FIXTURE.read_text())
WORKER = "myk8s-worker"  # the demo's iptables node
WEB_PORT, DNS_PORT = "default/web:http", "kube-system/dns:dns"
DNS_ENDPOINT = "10.180.0.3:53"


def load_cluster(tmp_path, nodes):
    write_bundle(ClusterSnapshot(cluster="mixed", nodes=nodes, api=api_objects(NFT_SERVICES)),
                 tmp_path / "bundle.tar.gz")
    return load(InputOptions(bundle=str(tmp_path / "bundle.tar.gz")))


def counted_more(dump: str, chain_prefix: str, more: int) -> tuple[str, str]:
    """The dump with the first jump from a KUBE-SVC chain to an endpoint counting `more` packets more, and the
    endpoint chain it jumps to."""
    pattern = re.compile(rf"^\[(\d+):(\d+)\] (-A {chain_prefix}\S+ .*-j (KUBE-SEP-\S+).*)$", re.M)
    found = pattern.search(dump)
    packets, nbytes = int(found.group(1)) + more, int(found.group(2)) + 60 * more
    return dump[:found.start()] + f"[{packets}:{nbytes}] {found.group(3)}" + dump[found.end():], found.group(4)


class MixedSampler:
    """The iptables node's dumps (the first read's, then one with counters moved), the nftables node's conntrack
    as the sampler's script printed it there (the capture), sample after sample."""

    def __init__(self, dumps: list[str], conntrack: list[str]):
        self.dumps, self.conntrack = list(dumps), list(conntrack)
        self.dumped: list[list[str]] = []
        self.asked: list[dict] = []

    def read_dumps(self, nodes, ipv6_nodes=()):
        self.dumped.append(list(nodes))
        return {(node, "IPv4"): NodeReading(node, self.dumps.pop(0), read_at=time.monotonic()) for node in nodes}

    def read_conntrack(self, wanted):
        self.asked.append({node: [q.arg for q in queries] for node, queries in wanted.items()})
        return {node: NodeReading(node, self.conntrack.pop(0), read_at=time.monotonic()) for node in wanted}


def conntrack_rows(doc: dict) -> dict[tuple[str, str], dict]:
    return {(r["service"], r["endpoint"]): r for r in doc["rows"] if r["source"] == "conntrack"}


def view_text(frame) -> str:
    out = io.StringIO()
    Console(file=out, width=250, no_color=True).print(render_frame(frame), crop=False)
    return out.getvalue()


def test_a_cluster_of_both_modes_ranks_rules_by_counters_and_nft_endpoints_by_conntrack(tmp_path):
    demo = load(InputOptions(demo=True))
    worker = next(n for n in demo.snapshot.nodes if n.name == WORKER)
    loaded = load_cluster(tmp_path, [worker, nft_capture(CAPTURE["nftJson"])])
    assert set(loaded.nft) == {NFT_NODE} and WORKER in loaded.rules
    moved, sep = counted_more(worker.iptables_save, "KUBE-SVC-", 5)
    sampler = MixedSampler([moved], [s["reading"] for s in CAPTURE["samples"]])
    sample = BusiestSample(sampler, loaded, BusiestTracker(2.0, 20))
    first, second = sample.take(), sample.take()

    # the iptables node is dumped (after the first read's dump), the nftables node's conntrack listed for every
    # port of its table: web's cluster IP port and node port, and dns's
    assert sampler.dumped == [[WORKER]]
    assert sampler.asked == [{NFT_NODE: ["ipv4:tcp:80", "ipv4:tcp:30080", "ipv4:udp:53"]}] * 2
    before = endpoint_counts(CAPTURE["samples"][0]["servedSincePreviousSample"])
    served = endpoint_counts(CAPTURE["samples"][1]["servedSincePreviousSample"])
    # the baseline ranks what conntrack holds, as it ranks the counters so far
    assert {k: (r["packets"], r["deltaConnections"], r["tracked"])
            for k, r in conntrack_rows(sample_document(first, top=20)).items()} == {
        (WEB_PORT, e): (n, 0, n) for e, n in before.items()}

    doc = sample_document(second, top=20)
    assert (doc["source"], doc["sources"]) == ("mixed", {WORKER: "counters", NFT_NODE: "conntrack"})
    rows = conntrack_rows(doc)
    assert {k: r["deltaConnections"] for k, r in rows.items()} == {(WEB_PORT, e): n for e, n in served.items()}
    assert all(r["node"] == NFT_NODE and r["kind"] == "endpoint" and r["table"] == "conntrack"
               and r["bytes"] is None for r in rows.values())
    assert {r["pod"] for r in rows.values()} == {"default/web-1", "default/web-2"}
    (counted,) = [r for r in doc["rows"] if r["source"] == "counters"]
    assert (counted["node"], counted["deltaConnections"], counted["rule"].split(" -j ")[-1]) == (WORKER, 5, sep)
    ranked = [r["deltaConnections"] for r in doc["rows"]]
    assert ranked == sorted(ranked, reverse=True) and not doc["failedNodes"]

    text = view_text(second)
    assert ("counted from conntrack on nft-node: kube-proxy runs in nftables mode there, and its nftables rules "
            "keep no counters.") in text
    assert "busiest kube-proxy rules and endpoints counted from conntrack" in text
    assert "`watch SERVICE`" not in text
    # --top 1: the web endpoint that answered the most new connections
    top = sample_document(second, top=1)["rows"]
    assert [(r["service"], r["deltaConnections"]) for r in top] == [(WEB_PORT, max(served.values()))]


def test_an_nftables_node_that_may_not_read_conntrack_is_named_and_the_iptables_node_still_ranked(tmp_path):
    demo = load(InputOptions(demo=True))
    worker = next(n for n in demo.snapshot.nodes if n.name == WORKER)
    loaded = load_cluster(tmp_path, [worker, nft_capture(CAPTURE["nftJson"])])
    moved, _sep = counted_more(worker.iptables_save, "KUBE-SVC-", 3)
    sampler = MixedSampler([moved], [CAPTURE["denied"]["nobody"]] * 2)
    sample = BusiestSample(sampler, loaded, BusiestTracker(2.0, 20))
    sample.take()
    doc = sample_document(sample.take(), top=20)
    assert [(f["node"], "CAP_NET_ADMIN" in f["reason"]) for f in doc["failedNodes"]] == [(NFT_NODE, True)]
    assert [(r["node"], r["deltaConnections"]) for r in doc["rows"]] == [(WORKER, 3)]


@pytest.mark.netns
def test_live_an_nftables_node_ranks_every_services_endpoints_by_new_connections(tmp_path):
    require_netns()
    with TrafficNode() as node:
        node.load_nft(ruleset(NFT_SERVICES))
        table = node.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
        loaded = load_cluster(tmp_path, [nft_capture(table)])
        node.traffic(connect={f"{WEB.cluster_ip}:80/tcp": 2})  # before the watch: the baseline holds them
        sample = BusiestSample(NamespaceConntrackSampler(node), loaded, BusiestTracker(1.0, 20))
        first = sample.take()
        serve = [f"{ip}:80/tcp" for ip in WEB.endpoints] + [f"{DNS_ENDPOINT}/udp"]
        served = node.traffic(serve, connect={f"{WEB.cluster_ip}:80/tcp": 11, f"{NODE_IP}:30080/tcp": 4,
                                              "172.30.0.10:53/udp": 6})
        second = sample.take()
        quiet = sample.take()
    assert sum(r["packets"] for r in sample_document(first, top=20)["rows"]) == 2
    want = {(WEB_PORT, e): n for e, n in endpoint_counts(served).items()}
    want[(DNS_PORT, DNS_ENDPOINT)] = endpoint_counts(served, "udp")[DNS_ENDPOINT]
    assert sum(want.values()) == 21
    doc = sample_document(second, top=20)
    assert {k: r["deltaConnections"] for k, r in conntrack_rows(doc).items()} == want
    assert doc["sources"] == {NFT_NODE: "conntrack"} and not doc["failedNodes"]
    assert sample_document(quiet, top=20)["rows"] == []  # TIME_WAIT connections are not new again
    assert "no kube-proxy rule counted anything in the last interval" in view_text(quiet)


class AskedSampler(NamespaceConntrackSampler):
    """The namespace's sampler, keeping the script's arguments of each read."""

    def __init__(self, node: TrafficNode):
        super().__init__(node)
        self.asked: list[dict] = []

    def read_conntrack(self, wanted):
        self.asked.append({n: [q.arg for q in queries] for n, queries in wanted.items()})
        return super().read_conntrack(wanted)


@pytest.mark.netns
def test_live_a_node_of_many_ports_is_listed_once_unfiltered(tmp_path):
    require_netns()
    # eight more services with a node port each: 19 listings by port, more than one unfiltered listing costs
    more = [Svc("default", f"more-{i}", f"172.30.1.{i + 1}", 8000 + i, endpoints=[f"10.181.0.{i + 1}"],
                node_port=31000 + i, port_name="http") for i in range(8)]
    with TrafficNode() as node:
        node.load_nft(ruleset([*NFT_SERVICES, *more]))
        table = node.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
        loaded = load_cluster(tmp_path, [nft_capture(table)])
        sampler = AskedSampler(node)
        sample = BusiestSample(sampler, loaded, BusiestTracker(1.0, 20))
        assert len(sample.conntrack.flows.queries(NFT_NODE)) == 19
        first = sample.take()
        serve = [f"{ip}:80/tcp" for ip in WEB.endpoints] + [f"{DNS_ENDPOINT}/udp"]
        served = node.traffic(serve, connect={f"{WEB.cluster_ip}:80/tcp": 6, f"{NODE_IP}:30080/tcp": 3,
                                              "172.30.0.10:53/udp": 2})
        second = sample.take()
    assert sampler.asked == [{NFT_NODE: ["ipv4"]}] * 2
    # conntrack answered (no fallback to the proc file, which a note would say once)
    assert not first.notes and not second.notes and not second.failed
    want = {(WEB_PORT, e): n for e, n in endpoint_counts(served).items()}
    want[(DNS_PORT, DNS_ENDPOINT)] = endpoint_counts(served, "udp")[DNS_ENDPOINT]
    assert sum(want.values()) == 11
    assert {k: r["deltaConnections"] for k, r in conntrack_rows(sample_document(second, top=20)).items()} == want
