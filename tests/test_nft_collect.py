"""Reading kind nodes whose kube-proxy runs in nftables mode, iptables mode, or nftables mode over the iptables
mode's leftovers, and telling each node's mode. Each "node" is a network namespace (tests/netns.py) that docker's
`exec_run` is answered from: the real iptables-save and nft print what kube-proxy's input (svcdoctor's ports of
kube-proxy, iptables 1.28 and nftables 1.34–1.35) left in it. Then `check` on those captures, with the kube-proxy
ConfigMap saying nftables: what tests/lab/test_nft_lab.py shows on docker, here without docker."""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import pytest

from cli_run import run_cli
from netns import Namespace, require_netns
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.kind import KindNode
from svcdoctor.collect.live import node_proxy_mode
from svcdoctor.collect.node_rules import capture_nodes
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot
from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.expected import ProxySettings, expected_restore_text
from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset

pytestmark = pytest.mark.netns

POD_CIDR = "10.180.0.0/16"
NODE_IPS = {"node-a": "192.168.0.2", "node-b": "192.168.0.3", "node-c": "192.168.0.4", "node-d": "192.168.0.5"}
KUBELET = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n" \
          "*nat\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n*filter\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
SERVICES = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns1", "name": "web"},
     "spec": {"type": "NodePort", "clusterIP": "172.30.0.41", "clusterIPs": ["172.30.0.41"],
              "externalTrafficPolicy": "Local",
              "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns1", "name": "empty"},
     "spec": {"type": "ClusterIP", "clusterIP": "172.30.0.42", "clusterIPs": ["172.30.0.42"],
              "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}},
]
SLICES = [  # web's one pod runs on node-a: the other nodes drop its node port (externalTrafficPolicy Local)
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
     "metadata": {"namespace": "ns1", "name": "web-x", "labels": {"kubernetes.io/service-name": "web"}},
     "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
     "endpoints": [{"addresses": ["10.180.0.5"], "conditions": {"ready": True}, "nodeName": "node-a"}]},
]


class NetnsContainer:
    """Answers docker's Container.exec_run (argv only, demux) by running the argv in a network namespace;
    `garbled` argv prefixes first fail as docker-py's misread stream does (docker/docker-py#3160), once each."""

    def __init__(self, ns: Namespace, garbled: tuple[str, ...] = ()):
        self.ns = ns
        self.calls: list[list[str]] = []
        self.garbled = set(garbled)
        self.cut: set[str] = set()  # answered once as a stream that ended early: exit 1, not a word on either

    def exec_run(self, argv, demux=False):
        assert demux and isinstance(argv, list)
        self.calls.append(argv)
        if " ".join(argv) in self.garbled:
            self.garbled.discard(" ".join(argv))
            raise ValueError("110 is not a valid stream")
        if " ".join(argv) in self.cut:
            self.cut.discard(" ".join(argv))
            return SimpleNamespace(exit_code=1, output=(None, None))
        proc = subprocess.run(["ip", "netns", "exec", self.ns.name, *argv], capture_output=True, timeout=60)
        return SimpleNamespace(exit_code=proc.returncode, output=(proc.stdout or None, proc.stderr or None))


def program(ns: Namespace, node: str, iptables: bool, nftables: bool) -> None:
    """kubelet's chains, then kube-proxy's iptables restore input and/or its nftables table for `node`."""
    model = build_cluster_model(SERVICES, SLICES)
    ns.restore(KUBELET)
    if iptables:
        texts = expected_restore_text(model, ProxySettings(node_name=node, node_ips=(NODE_IPS[node],),
                                                           cluster_cidr=POD_CIDR))
        ns.run("iptables-nft-restore", "--noflush", input=texts["filter"] + texts["nat"])
        ns.iptables("-t", "nat", "-I", "PREROUTING", "-j", "KUBE-SERVICES")
    if nftables:
        settings = NftProxySettings(node_name=node, node_ips=(NODE_IPS[node],), pod_cidrs=(POD_CIDR,))
        ns.run("nft", "-f", "-", input=expected_ruleset(model.service_ports, settings))


@pytest.fixture(scope="module")
def captures():
    """node-a, node-b: nftables mode; node-c: iptables mode; node-d: nftables mode over iptables leftovers;
    node-e: nothing programmed (kubelet's chains only). Read as the kind collector reads them."""
    require_netns()
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (scripts/install-system-deps.sh installs nftables)")
    modes = {"node-a": (False, True), "node-b": (False, True), "node-c": (True, False), "node-d": (True, True),
             "node-e": (False, False)}
    spaces = {node: Namespace().__enter__() for node in modes}
    try:
        for node, (iptables, nftables) in modes.items():
            program(spaces[node], node, iptables, nftables)
        containers = {node: NetnsContainer(ns) for node, ns in spaces.items()}
        # docker-py misreads the stream of node-b's first nft listing, and node-d's first one ends early (seen
        # in the lab: exit 1, no stderr): both read again, neither taken for "no table" or warned about
        containers["node-b"].garbled.add("nft -j list table ip kube-proxy")
        containers["node-d"].cut.add("nft -j list table ip kube-proxy")
        nodes = [KindNode(node, "worker", containers[node], NODE_IPS.get(node), "running") for node in modes]
        yield {c.name: c for c in capture_nodes(nodes, timeout=30)}, containers
    finally:
        for ns in spaces.values():
            ns.close()


def test_every_node_is_asked_for_kube_proxys_nftables_tables(captures):
    by_name, containers = captures
    for node in ("node-a", "node-b", "node-c", "node-d", "node-e"):
        asked = [argv for argv in containers[node].calls if argv[0] == "nft"]
        # the tables' names first; then kube-proxy's table where there is one (IPv4 here), read again where the
        # first read came back misread or cut short
        tables = [["nft", "-j", "list", "table", "ip", "kube-proxy"]] if node in ("node-a", "node-b", "node-d") else []
        again = tables[:1] if node in ("node-b", "node-d") else []
        assert asked == [["nft", "list", "tables"]] + again + tables, node
        assert by_name[node].error is None and by_name[node].warnings == []
    assert by_name["node-a"].has_nftables and by_name["node-a"].proxy_mode == "nftables"
    assert by_name["node-b"].has_nftables
    # iptables mode and nothing programmed: nft answered that there is no table ("" is read, None is not read)
    assert (by_name["node-c"].nftables_json, by_name["node-e"].nftables_json) == ("", "")
    assert ":KUBE-SERVICES" in by_name["node-c"].iptables_save
    # the leftovers node: both read, the iptables mode's chains beside kube-proxy's table
    leftovers = by_name["node-d"]
    assert leftovers.has_nftables and ":KUBE-SVC-" in leftovers.iptables_save


@pytest.mark.parametrize("configured", ["nftables", "iptables", None])
def test_a_nodes_mode_is_what_it_shows_before_what_the_configmap_says(captures, configured):
    by_name, _ = captures
    modes = {node: node_proxy_mode(capture, configured) for node, capture in by_name.items()}
    assert modes["node-a"] == modes["node-b"] == modes["node-d"] == "nftables"
    if configured == "nftables":  # told nftables, running iptables; told nftables, running nothing
        assert (modes["node-c"], modes["node-e"]) == ("iptables", None)
    else:  # the ConfigMap's mode where the node shows none of its own (ipvs mode looks like iptables there)
        assert (modes["node-c"], modes["node-e"]) == (configured, configured)


def test_check_finds_each_nodes_trouble_on_that_node(captures, tmp_path):
    by_name, _ = captures
    # (node-e, a bare namespace, has no iptables table at all to write to a bundle: not a node a cluster has)
    nodes = [capture for node, capture in by_name.items() if node != "node-e"]
    for capture in nodes:
        capture.proxy_mode = node_proxy_mode(capture, "nftables")
    api = ApiObjects(services=SERVICES, endpointslices=SLICES, status="ok",
                     kube_proxy_config={"mode": "nftables", "clusterCIDR": POD_CIDR})
    bundle = write_bundle(ClusterSnapshot(cluster="mixed", nodes=nodes, api=api), tmp_path / "b")
    r = run_cli("check", "--bundle", str(bundle), "-o", "json")
    assert r.exit_code == 1, r.stderr  # stale-iptables-rules is an error
    found = sorted((f["id"], f["node"], f["service"]) for f in r.json()["findings"])
    assert found == sorted([
        ("stale-iptables-rules", "node-d", None),
        ("proxy-mode-mismatch", "node-c", None),  # iptables mode where the ConfigMap says nftables
        # web's node port on the nodes without its pod: the nftables nodes' no-endpoint-nodeports drop, the
        # iptables node's DROP rule, one finding id for both
        ("etp-local-no-local-endpoints", "node-b", "ns1/web"),
        ("etp-local-no-local-endpoints", "node-c", "ns1/web"),
        ("etp-local-no-local-endpoints", "node-d", "ns1/web"),
        # once, though the iptables and the nftables comparisons both find it
        ("no-endpoints", None, "ns1/empty"),
    ])
    (drop,) = [f for f in r.json()["findings"] if f["id"] == "etp-local-no-local-endpoints" and f["node"] == "node-b"]
    assert "NodePort 30080" in drop["message"] and "no-endpoint-nodeports" in drop["evidence"][0]
    (stale,) = [f for f in r.json()["findings"] if f["id"] == "stale-iptables-rules"]
    nat = by_name["node-d"].iptables_save.split("*nat\n", 1)[1].split("COMMIT", 1)[0]
    kube_proxy_chains = [line for line in nat.splitlines() if line.startswith(":KUBE-") and "CANARY" not in line]
    assert f"({len(kube_proxy_chains)} KUBE-* chains)" in stale["message"]  # kubelet's canary is not kube-proxy's
    assert "KUBE-KUBELET-CANARY" not in stale["evidence"][0]


def test_an_nft_read_that_keeps_failing_is_said_not_taken_for_no_table():
    from svcdoctor.collect.nft_rules import attach_nftables, docker_runner, read_nft_tables
    from svcdoctor.collect.snapshot import NodeCapture

    require_netns()
    with Namespace() as ns:
        container = NetnsContainer(ns, garbled=("nft -j list table ip kube-proxy",))
        container.exec_run = _always_garbled(container.exec_run)
        capture = NodeCapture(name="n1")
        attach_nftables(capture, read_nft_tables(docker_runner(container)))
    assert capture.nftables_json is None and not capture.has_nftables  # not read, which is not "no table"
    assert capture.warnings == ["nft: 110 is not a valid stream (kube-proxy's nftables tables not read)"]
    assert len(container.calls) == 3  # asked three times, then given up


def _always_garbled(exec_run):
    def run(argv, demux=False):
        exec_run(argv, demux)  # recorded, then misread every time
        raise ValueError("110 is not a valid stream")
    return run


def test_a_node_without_nft_is_nothing_to_say():
    """kind node images without nft (kube-proxy in iptables mode needs none): docker answers exit 126 with its
    OCI error on stdout (docker 20.10's words, as exec_run(demux=True) returns them); no warning on such a node."""
    from svcdoctor.collect.nft_rules import NOT_INSTALLED, attach_nftables, docker_runner, read_nft_tables
    from svcdoctor.collect.snapshot import NodeCapture

    answer = (b'OCI runtime exec failed: exec failed: unable to start container process: exec: "nft": executable '
              b"file not found in $PATH: unknown\r\n", None)
    container = SimpleNamespace(exec_run=lambda argv, demux=True: SimpleNamespace(exit_code=126, output=answer))
    tables = read_nft_tables(docker_runner(container))
    assert tables.error == NOT_INSTALLED
    capture = NodeCapture(name="n1")
    attach_nftables(capture, tables)
    assert capture.warnings == [] and capture.nftables_json is None
