"""`trace` on a node in nftables mode that still holds kube-proxy's iptables chains (model/mixed_trace.py).

One network namespace is the node: the iptables rules kube-proxy (iptables mode) wrote for the Services as they
were (svcdoctor's model of it, model/expected.py), restored with iptables-nft, and kube-proxy's nftables table for
the Services as they are now (model/nft/expected.py), loaded with `nft -f`; both are listed back as a bundle node
holds them. Since the switch a Service's endpoints moved, a Service was created and one was deleted: kube-proxy's
table DNATs the ones it knows (to the endpoints they have now), the leftovers still DNAT the deleted one (to its
old endpoints). Real connections through that namespace's rules go where the trace says."""

from __future__ import annotations

import json
import re
import sys

import pytest
from cli_run import run_cli
from netns import Namespace, require_netns

from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.expected import ProxySettings, expected_restore_text, restore_input
from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset

NODE_IP = "172.18.0.3"


def _service(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "shop", "name": name},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}


def _slice(name: str, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "shop", "name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-a"} for ip in ips]}


BEFORE = ([_service("web", "10.96.0.20"), _service("gone", "10.96.0.22")],
          [_slice("web", ["10.244.1.10", "10.244.1.11"]), _slice("gone", ["10.244.1.40"])])
NOW = ([_service("web", "10.96.0.20"), _service("new", "10.96.0.21")],
       [_slice("web", ["10.244.2.20", "10.244.2.21"]), _slice("new", ["10.244.2.30"])])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    require_netns()
    old = build_cluster_model(*BEFORE)
    now = build_cluster_model(*NOW)
    iptables_text = restore_input(expected_restore_text(old, ProxySettings(
        node_name="node-a", node_ips=(NODE_IP,), cluster_cidr="10.244.0.0/16")))
    nft_text = expected_ruleset(now.service_ports, NftProxySettings(
        node_name="node-a", node_ips=(NODE_IP,), pod_cidrs=("10.244.0.0/16",), service_cidrs=("10.96.0.0/16",)))
    with Namespace() as ns:
        ns.restore(iptables_text)
        for chain, target in (("PREROUTING", "KUBE-SERVICES"), ("OUTPUT", "KUBE-SERVICES"),
                              ("POSTROUTING", "KUBE-POSTROUTING")):  # kube-proxy's jumps from the built-in chains
            ns.iptables("-t", "nat", "-I", chain, "-m", "comment", "--comment", "kubernetes service portals",
                        "-j", target)
        ns.run("nft", "-f", "-", input=nft_text)  # after iptables' nat table, as on a node that switched modes
        saved = ns.save()
        listing = ns.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
        reached = _connect_from_the_node(ns, ["10.96.0.20", "10.96.0.21", "10.96.0.22"])
    node = NodeCapture(name="node-a", iptables_save=saved, nftables_json=listing, internal_ip=NODE_IP,
                       proxy_mode="nftables")
    api = ApiObjects(services=NOW[0], endpointslices=NOW[1], status="ok")
    root = tmp_path_factory.mktemp("mixed")
    return str(write_bundle(ClusterSnapshot(cluster="mixed", nodes=[node], api=api), root / "bundle")), reached


def _connect_from_the_node(ns: Namespace, addresses: list[str], tries: int = 6) -> dict[str, set[str]]:
    """Real connections from the namespace to each service address; conntrack says where the kernel DNATed them
    (the reply's source). Nothing listens: the SYN is enough for the connection's conntrack entry."""
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")  # no dummy driver here
    ns.run("ip", "addr", "add", f"{NODE_IP}/16", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    ns.run("ip", "link", "set", "eth1", "up")
    ns.run("ip", "route", "add", "default", "dev", "eth0")  # the service IPs are routed before DNAT
    connect = ("import socket,sys\nfor _ in range(int(sys.argv[2])):\n s=socket.socket(); s.settimeout(0.05)\n"
               " try: s.connect((sys.argv[1], 80))\n except OSError: pass\n s.close()")
    reached: dict[str, set[str]] = {}
    for address in addresses:
        ns.run(sys.executable, "-c", connect, address, str(tries))
        listing = ns.run("conntrack", "-L", "-p", "tcp", "--orig-dst", address).stdout
        reached[address] = set()
        for line in listing.splitlines():
            tuples = re.findall(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)", line)
            if len(tuples) == 2:  # the original direction, then the reply: its source is where it was DNATed
                reached[address].add(f"{tuples[1][0]}:{tuples[1][2]}")
    return reached


def _trace(bundle: str, dst: str, src: str = "10.244.1.99") -> dict:
    r = run_cli("trace", "--dst", dst, "--src", src, "--bundle", bundle, "-o", "json")
    assert r.exit_code == 0, r.stderr
    (doc,) = r.json()["items"] if "items" in r.json() else [r.json()]
    return doc


def test_kube_proxys_table_dnats_the_services_it_knows(bundle):
    bundle, _ = bundle
    doc = _trace(bundle, "10.96.0.20:80")
    assert doc["verdict"] == "dnat"
    assert sorted(f"{e['ip']}:{e['port']}" for e in doc["endpoints"]) == ["10.244.2.20:8080", "10.244.2.21:8080"]
    assert any("nftables table DNATs this connection first" in n for n in doc["notes"])
    assert doc["steps"][0]["table"] == "ip kube-proxy"
    new = _trace(bundle, "10.96.0.21:80")
    assert [f"{e['ip']}:{e['port']}" for e in new["endpoints"]] == ["10.244.2.30:8080"]


def test_the_leftovers_dnat_a_deleted_service(bundle):
    bundle, _ = bundle
    doc = _trace(bundle, "10.96.0.22:80")
    assert doc["verdict"] == "dnat"
    assert [f"{e['ip']}:{e['port']}" for e in doc["endpoints"]] == ["10.244.1.40:8080"]
    assert any("stale rules decide where it goes" in n for n in doc["notes"])
    assert doc["steps"][0]["table"] == "nat"  # iptables' table


def test_real_connections_go_where_the_trace_says(bundle):
    """The kernel's answer: connections sent from the node itself, DNATed by whichever rules bind first."""
    bundle, reached = bundle
    for address in ("10.96.0.20", "10.96.0.21", "10.96.0.22"):
        doc = _trace(bundle, f"{address}:80", src=NODE_IP)
        traced = {f"{e['ip']}:{e['port']}" for e in doc["endpoints"]}
        assert reached[address] and reached[address] <= traced, (address, reached[address], traced)
    assert reached["10.96.0.20"] <= {"10.244.2.20:8080", "10.244.2.21:8080"}  # the new endpoints, not the old
    assert reached["10.96.0.22"] == {"10.244.1.40:8080"}


def test_check_and_the_terminal_say_it(bundle):
    bundle, _ = bundle
    r = run_cli("check", "--bundle", bundle, "-o", "json")
    assert "stale-iptables-rules" in {f["id"] for f in r.json()["findings"]}
    view = run_cli("trace", "--dst", "10.96.0.22:80", "--src", "10.244.1.99", "--bundle", bundle)
    assert "the iptables rules left from iptables mode still do" in " ".join(view.stdout.split())
    assert json.loads(run_cli("trace", "--dst", "10.96.0.20:80", "--bundle", bundle, "-o", "json").stdout)


# --- other owners' iptables rules on an nftables node (a firewall, another DNAT) --------------------------------
FIREWALL = ("-t", "filter", "-A", "OUTPUT", "-d", "10.244.2.21/32", "-p", "tcp", "--dport", "8080", "-m", "comment",
            "--comment", "firewall: not to 10.244.2.21", "-j", "REJECT")
OTHER_DNAT = ("-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.99/32", "-p", "tcp", "--dport", "80", "-j", "DNAT",
              "--to-destination", "10.244.9.9:8080")


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    """kube-proxy in nftables mode (the Services as they are now), and two iptables rules of other owners: a
    firewall rule that rejects one endpoint, and a DNAT of an address kube-proxy does not have."""
    require_netns()
    now = build_cluster_model(*NOW)
    nft_text = expected_ruleset(now.service_ports, NftProxySettings(
        node_name="node-a", node_ips=(NODE_IP,), pod_cidrs=("10.244.0.0/16",), service_cidrs=("10.96.0.0/16",)))
    with Namespace() as ns:
        ns.run("nft", "-f", "-", input=nft_text)
        ns.iptables(*FIREWALL)
        ns.iptables(*OTHER_DNAT)
        reached = _connect_from_the_node(ns, ["10.96.0.20", "10.96.0.99"], tries=8)
        rejected = int(re.search(r"\[(\d+):\d+\] -A OUTPUT -d 10.244.2.21", ns.save()).group(1))
        saved, listing = ns.save(), ns.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
    node = NodeCapture(name="node-a", iptables_save=saved, nftables_json=listing, internal_ip=NODE_IP,
                       proxy_mode="nftables")
    api = ApiObjects(services=NOW[0], endpointslices=NOW[1], status="ok")
    root = tmp_path_factory.mktemp("owners")
    bundle = str(write_bundle(ClusterSnapshot(cluster="owners", nodes=[node], api=api), root / "bundle"))
    return bundle, reached, rejected


def test_a_firewall_rule_after_kube_proxys_dnat_stops_that_endpoint(owners):
    bundle, reached, rejected = owners
    doc = _trace(bundle, "10.96.0.20:80", src=NODE_IP)
    verdicts = {f"{e['ip']}:{e['port']}": e["verdict"] for e in doc["endpoints"]}
    assert verdicts == {"10.244.2.20:8080": "dnat", "10.244.2.21:8080": "reject"}
    assert doc["verdict"] == "dnat"  # some connections still get through
    assert any("firewall: not to 10.244.2.21" in (s["comment"] or "") for s in doc["stoppedBy"])
    assert any("after kube-proxy's DNAT" in n for n in doc["notes"])
    # the kernel: connections DNATed to .21 were rejected by that rule (its counter), those to .20 went out
    assert rejected > 0 and "10.244.2.20:8080" in reached["10.96.0.20"]


def test_another_owners_dnat_takes_what_kube_proxy_does_not_have(owners):
    bundle, reached, _ = owners
    doc = _trace(bundle, "10.96.0.99:80", src=NODE_IP)
    assert [f"{e['ip']}:{e['port']}" for e in doc["endpoints"]] == ["10.244.9.9:8080"]
    assert any("other owners'" in n for n in doc["notes"])
    assert reached["10.96.0.99"] == {"10.244.9.9:8080"}
