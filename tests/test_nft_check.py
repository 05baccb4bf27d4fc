"""`check` on nftables-mode nodes, through the routing model: each node's routes read from kube-proxy's table
(listed back by the real `nft`) against the routes kube-proxy's decisions give for the API objects."""

from __future__ import annotations

import copy

import pytest

from cli_run import run_cli
from nft_rules import NODE_IP, Svc, ruleset
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from test_nft import SERVICES, _listings

pytestmark = pytest.mark.netns


def _service(svc: Svc) -> dict:
    spec = {"type": "NodePort" if svc.node_port else "ClusterIP", "clusterIP": svc.cluster_ip,
            "clusterIPs": [svc.cluster_ip],
            "ports": [{"name": svc.port_name, "protocol": svc.protocol.upper(), "port": svc.port,
                       "targetPort": svc.port, **({"nodePort": svc.node_port} if svc.node_port else {})}]}
    if svc.node_port:
        spec["externalTrafficPolicy"] = "Cluster"
    if svc.affinity_seconds:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_seconds}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": svc.namespace, "name": svc.name},
            "spec": spec}


def _slice(svc: Svc) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": svc.namespace, "name": f"{svc.name}-x",
                         "labels": {"kubernetes.io/service-name": svc.name}},
            "ports": [{"name": svc.port_name, "protocol": svc.protocol.upper(), "port": svc.port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-a"}
                          for ip in svc.endpoints]}


def _bundle(tmp_path, per_node: dict[str, list[Svc]]) -> str:
    nodes = []
    for node, services in per_node.items():
        as_json, _ = _listings(ruleset(services))
        nodes.append(NodeCapture(name=node, iptables_save="", nftables_json=as_json, internal_ip=NODE_IP,
                                 proxy_mode="nftables"))
    api = ApiObjects(services=[_service(s) for s in SERVICES], endpointslices=[_slice(s) for s in SERVICES],
                     status="ok")
    return str(write_bundle(ClusterSnapshot(cluster="nft", nodes=nodes, api=api), tmp_path / "bundle"))


def test_nftables_nodes_that_do_what_kube_proxy_should_check_clean(tmp_path):
    bundle = _bundle(tmp_path, {"node-a": SERVICES, "node-b": SERVICES})
    r = run_cli("check", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 0, r.stdout
    assert [(f["id"], f["service"]) for f in r.json()["findings"]] == [("no-endpoints", "ns1/empty")]


def test_a_stale_endpoint_on_one_nftables_node_is_found_there(tmp_path):
    stale = copy.deepcopy(SERVICES)
    stale[0].endpoints = stale[0].endpoints + ["10.180.0.9"]
    bundle = _bundle(tmp_path, {"node-a": SERVICES, "node-b": stale})
    r = run_cli("check", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 1, r.stdout
    found = [(f["id"], f["node"]) for f in r.json()["findings"] if f["service"] == "ns1/web"]
    assert ("stale-endpoint", "node-b") in found and all(node == "node-b" for _, node in found)
    assert any("10.180.0.9:80" in f["message"] for f in r.json()["findings"])
    # explain shows what check reports for the service (one engine)
    doc = run_cli("explain", "ns1/web", "--bundle", bundle, "-o", "json").json()
    assert sorted((f["id"], f["node"]) for f in doc["findings"]) == sorted(found)


def test_iptables_chains_left_on_an_nftables_node_are_found(tmp_path):
    from svcdoctor.collect.bundle import demo_bundle_path

    old = (demo_bundle_path() / "nodes" / "myk8s-worker" / "iptables.txt").read_text()
    as_json, _ = _listings(ruleset(SERVICES))
    nodes = [NodeCapture(name="node-a", iptables_save="", nftables_json=as_json, internal_ip=NODE_IP,
                         proxy_mode="nftables"),
             NodeCapture(name="node-b", iptables_save=old, nftables_json=as_json, internal_ip=NODE_IP,
                         proxy_mode="nftables")]
    api = ApiObjects(services=[_service(s) for s in SERVICES], endpointslices=[_slice(s) for s in SERVICES],
                     status="ok")
    bundle = str(write_bundle(ClusterSnapshot(cluster="nft", nodes=nodes, api=api), tmp_path / "bundle"))
    r = run_cli("check", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 1
    stale = [f for f in r.json()["findings"] if f["id"] == "stale-iptables-rules"]
    assert [f["node"] for f in stale] == ["node-b"]


def test_a_node_in_another_mode_than_its_peers_or_the_configmap(tmp_path):
    from svcdoctor.collect.bundle import demo_bundle_path

    iptables = (demo_bundle_path() / "nodes" / "myk8s-worker" / "iptables.txt").read_text()
    as_json, _ = _listings(ruleset(SERVICES))
    nodes = [NodeCapture(name=f"node-{i}", iptables_save=iptables, internal_ip=NODE_IP, proxy_mode="iptables")
             for i in "abc"]
    nodes.append(NodeCapture(name="node-d", iptables_save="", nftables_json=as_json, internal_ip=NODE_IP,
                             proxy_mode="nftables"))
    for config, meant in ((None, "the other nodes run iptables"), ({"mode": ""}, "the kube-proxy ConfigMap says")):
        api = ApiObjects(status="not in the bundle") if config is None else ApiObjects(
            services=[], endpointslices=[], status="ok", kube_proxy_config=config)
        path = tmp_path / ("peers" if config is None else "configmap")
        bundle = str(write_bundle(ClusterSnapshot(cluster="mixed", nodes=nodes, api=api), path))
        r = run_cli("check", "--bundle", bundle, "-o", "json")
        (mismatch,) = [f for f in r.json()["findings"] if f["id"] == "proxy-mode-mismatch"]
        assert mismatch["node"] == "node-d" and meant in mismatch["message"], mismatch


def test_an_nftables_node_read_through_its_kube_proxy_pod(tmp_path):
    """Through the API (collect/api_nodes.py), a node whose iptables has no kube-proxy chains has its kube-proxy
    pod asked for `nft -j list table ip kube-proxy` (argv only), as through docker; the listing is the real nft's."""
    from types import SimpleNamespace

    from svcdoctor.collect import api_nodes
    from svcdoctor.collect.proxy_pods import ProxyPod

    as_json, _ = _listings(ruleset(SERVICES))
    kubelet_only = ("# Generated by iptables-nft-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n"
                    ":KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n# Completed\n")
    answers = {"iptables-nft-save": (0, kubelet_only, ""), "iptables-legacy-save": (0, "", ""),
               "ip6tables-nft-save": (0, "", ""),
               "nft list tables": (0, "table ip filter\ntable ip kube-proxy\n", ""),  # names only
               "nft -j list table ip kube-proxy": (0, as_json, ""),
               "nft -j list table ip6 kube-proxy": (1, "", "Error: No such file or directory")}
    seen = []

    class Target:  # answers exec_run as PodTarget does (docker's ExecResult shape)
        def exec_run(self, argv, demux=True):
            assert isinstance(argv, list)  # argv only, never a shell
            seen.append(argv)
            key = argv[0] if argv[0].endswith("-save") else " ".join(argv)
            code, out, err = answers[key]
            return SimpleNamespace(exit_code=code, output=(out.encode(), err.encode()))

    node = api_nodes.ApiNode(name="node-a", role="worker", internal_ip=NODE_IP, zone=None)
    capture = api_nodes._read_whole(Target(), node, ProxyPod("kube-system", "kube-proxy-a", "kube-proxy"), 10, None)
    assert capture.error is None and capture.proxy_mode == "nftables"
    assert capture.nftables_json and '"kube-proxy"' in capture.nftables_json
    assert ["nft", "-j", "list", "table", "ip", "kube-proxy"] in seen
    assert ["nft", "-j", "list", "table", "ip6", "kube-proxy"] not in seen  # nft said there is none


# --- dual stack: one kube-proxy table per family -------------------------------------------------------------
def _dual_stack_bundle(tmp_path, stale_ipv6_endpoint: bool) -> str:
    """A dual-stack Service on one node whose `ip` and `ip6` kube-proxy tables are what svcdoctor's model of
    kube-proxy writes (model/nft/expected.py), loaded into a real kernel and listed back as kube-proxy's
    collection stores them (one JSON document per table); optionally with an IPv6 endpoint the API no longer has."""
    import subprocess

    from netns import Namespace, require_netns

    from svcdoctor.model.cluster import build_cluster_model
    from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ds", "name": "web"},
               "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00:96::50"],
                        "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}

    def slice_(family: str, ips: list[str]) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
                "metadata": {"namespace": "ds", "name": f"web-{family.lower()}",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-a"} for ip in ips]}

    slices = [slice_("IPv4", ["10.244.1.5", "10.244.1.6"]), slice_("IPv6", ["fd00:244::5", "fd00:244::6"])]
    programmed = copy.deepcopy(slices)
    if stale_ipv6_endpoint:
        programmed[1]["endpoints"].append({"addresses": ["fd00:244::9"], "conditions": {"ready": True},
                                           "nodeName": "node-a"})
    ports = build_cluster_model([service], programmed).service_ports
    config = {"mode": "nftables", "clusterCIDR": "10.244.0.0/16,fd00:244::/56"}
    tables = {}
    require_netns()
    for family, ipx, node_ip, pod_cidr, service_cidr in (("IPv4", "ip", "172.18.0.2", "10.244.0.0/16", "10.96.0.0/16"),
                                                         ("IPv6", "ip6", "fc00:f853::2", "fd00:244::/56",
                                                          "fd00:96::/112")):
        settings = NftProxySettings(node_name="node-a", node_ips=(node_ip,), pod_cidrs=(pod_cidr,),
                                    service_cidrs=(service_cidr,), ip_family=family)
        with Namespace() as ns:
            run = ["ip", "netns", "exec", ns.name, "nft"]
            subprocess.run(run + ["-f", "-"], input=expected_ruleset(ports, settings), text=True, check=True,
                           capture_output=True)
            tables[ipx] = subprocess.run(run + ["-j", "list", "table", ipx, "kube-proxy"], text=True, check=True,
                                         capture_output=True).stdout.strip()
    node = NodeCapture(name="node-a", iptables_save="", nftables_json=tables["ip"] + "\n" + tables["ip6"] + "\n",
                       internal_ip="172.18.0.2", proxy_mode="nftables")
    nodes_api = [{"metadata": {"name": "node-a"}, "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:244:0:1::/64"]},
                  "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                           {"type": "InternalIP", "address": "fc00:f853::2"}]}}]
    api = ApiObjects(services=[service], endpointslices=slices, nodes=nodes_api, status="ok",
                     kube_proxy_config=config)
    return str(write_bundle(ClusterSnapshot(cluster="ds", nodes=[node], api=api), tmp_path / "bundle"))


def test_dual_stack_nftables_node_checks_both_tables(tmp_path):
    clean = run_cli("check", "--bundle", _dual_stack_bundle(tmp_path / "clean", False), "-o", "json")
    assert clean.exit_code == 0, clean.stdout
    assert clean.json()["findings"] == []
    stale = run_cli("check", "--bundle", _dual_stack_bundle(tmp_path / "stale", True), "-o", "json")
    assert stale.exit_code == 1, stale.stdout
    found = {(f["id"], f["node"]) for f in stale.json()["findings"]}
    assert found == {("stale-endpoint", "node-a")}
    assert all("fd00:244::9" in f["message"] for f in stale.json()["findings"])


def test_a_node_read_from_the_text_listing_by_svcdoctor_is_said_once(tmp_path):
    """`nft-without-json` (info): where svcdoctor ran nft on the node and got no JSON (node.json's readVia), not
    for a text dump somebody wrote into a bundle by hand."""
    from test_nft import _listings

    as_json, as_text = _listings(ruleset(SERVICES))
    nodes = [NodeCapture(name="node-a", iptables_save="", nftables_text=as_text, internal_ip=NODE_IP,
                         proxy_mode="nftables", read_via="docker exec", source="myk8s-node-a"),
             NodeCapture(name="node-b", iptables_save="", nftables_json=as_json, internal_ip=NODE_IP,
                         proxy_mode="nftables", read_via="docker exec", source="myk8s-node-b"),
             NodeCapture(name="node-c", iptables_save="", nftables_text=as_text, internal_ip=NODE_IP,
                         proxy_mode="nftables")]
    api = ApiObjects(services=[_service(s) for s in SERVICES], endpointslices=[_slice(s) for s in SERVICES],
                     status="ok")
    bundle = write_bundle(ClusterSnapshot(cluster="nft", nodes=nodes, api=api), tmp_path / "bundle")
    r = run_cli("check", "--bundle", str(bundle), "-o", "json")
    assert r.exit_code == 0, r.stdout
    infos = [(f["id"], f["node"], f["severity"]) for f in r.json()["findings"] if f["id"] == "nft-without-json"]
    assert infos == [("nft-without-json", "node-a", "info")]


def test_names_that_are_not_kube_proxys_hash_are_found_with_and_without_the_api(tmp_path):
    """hash-mismatch on an nftables node: a service chain renamed (its hash no longer kube-proxy's for its name),
    and an endpoint chain that DNATs elsewhere than its name says; the other node, as kube-proxy writes it, is
    clean. Found by check with the API and without it, and shown by explain (one engine)."""
    good = ruleset(SERVICES)
    bad = good.replace("LV5ZVUGQ", "LV5ZVUGX").replace("dnat to 10.180.0.2:80", "dnat to 10.180.0.7:80")
    assert bad.count("LV5ZVUGX") > 2 and "10.180.0.7" in bad
    nodes = []
    for node, text in (("node-a", good), ("node-b", bad)):
        as_json, _ = _listings(text)
        nodes.append(NodeCapture(name=node, iptables_save="", nftables_json=as_json, internal_ip=NODE_IP,
                                 proxy_mode="nftables"))
    api = ApiObjects(services=[_service(s) for s in SERVICES], endpointslices=[_slice(s) for s in SERVICES],
                     status="ok")
    bundle = str(write_bundle(ClusterSnapshot(cluster="nft", nodes=nodes, api=api), tmp_path / "bundle"))
    for flags, status in (([], 1), (["--no-api"], 0)):  # with the API the wrong DNAT is also a stale endpoint
        r = run_cli("check", "--bundle", bundle, "-o", "json", *flags)
        assert r.exit_code == status, (flags, r.stdout)
        names = [f for f in r.json()["findings"] if f["id"] == "hash-mismatch"]
        assert {(f["node"], f["service"]) for f in names} == {("node-b", "ns1/web")}, flags
        text = " ".join(f["message"] for f in names)
        assert "service-LV5ZVUGX-ns1/web/tcp/p80" in text and "would name it service-LV5ZVUGQ" in text
        assert "external-LV5ZVUGX-ns1/web/tcp/p80" in text
        assert "DNATs to 10.180.0.7:80, not to the endpoint its name says (10.180.0.2:80)" in text
        assert {f["id"] for f in r.json()["findings"]} == ({"hash-mismatch", "node-drift"} if flags else
                                                          {"hash-mismatch", "stale-endpoint", "missing-endpoint", "no-endpoints"})  # ns1/empty
    shown = run_cli("explain", "ns1/web", "--bundle", bundle, "-o", "json").json()
    assert {(f["id"], f["node"]) for f in shown["findings"]} >= {("hash-mismatch", "node-b")}


def test_without_the_api_nftables_nodes_are_compared_with_each_other(tmp_path):
    """node-drift between nftables nodes (no API objects in the bundle): tables that svcdoctor's model of kube-proxy
    (model/nft/expected.py) writes per node for an ETP-Local NodePort service (so the nodes differ on purpose:
    local chains, drops for no local endpoint) and a ClusterIP service agree; a node whose kube-proxy still has an
    old endpoint of the ClusterIP service is the odd one out, and only it."""
    import subprocess

    from netns import Namespace, require_netns

    from svcdoctor.model.cluster import build_cluster_model
    from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset

    def svc(name, ip, **spec):
        return {"metadata": {"namespace": "d", "name": name},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                                     "targetPort": 8080, **spec.pop("port", {})}], **spec}}

    def slice_(name, eps):
        return {"metadata": {"namespace": "d", "name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node}
                              for ip, node in eps]}

    services = [svc("local", "10.96.0.10", type="NodePort", externalTrafficPolicy="Local", port={"nodePort": 30010}),
                svc("web", "10.96.0.11")]
    now = [slice_("local", [("10.244.1.5", "node-a")]),
           slice_("web", [("10.244.1.6", "node-a"), ("10.244.2.6", "node-b")])]
    before = [now[0], slice_("web", [("10.244.1.6", "node-a"), ("10.244.2.6", "node-b"), ("10.244.3.9", "node-c")])]
    require_netns()
    nodes = []
    for i, (node, slices) in enumerate((("node-a", now), ("node-b", now), ("node-c", before)), start=2):
        ports = build_cluster_model(services, slices).service_ports
        settings = NftProxySettings(node_name=node, node_ips=(f"172.18.0.{i}",), pod_cidrs=("10.244.0.0/16",),
                                    service_cidrs=("10.96.0.0/16",))
        with Namespace() as ns:
            run = ["ip", "netns", "exec", ns.name, "nft"]
            subprocess.run(run + ["-f", "-"], input=expected_ruleset(ports, settings), text=True, check=True,
                           capture_output=True)
            listing = subprocess.run(run + ["-j", "list", "table", "ip", "kube-proxy"], text=True, check=True,
                                     capture_output=True).stdout
        nodes.append(NodeCapture(name=node, iptables_save="", nftables_json=listing, internal_ip=f"172.18.0.{i}",
                                 proxy_mode="nftables"))
    bundle = str(write_bundle(ClusterSnapshot(cluster="d", nodes=nodes), tmp_path / "bundle"))
    r = run_cli("check", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 0, r.stdout  # warnings only
    assert [(f["id"], f["node"], f["service"]) for f in r.json()["findings"]] == [("node-drift", "node-c", "d/web")]
    (drift,) = r.json()["findings"]
    assert "endpoints only here: 10.244.3.9:8080" in drift["message"]
    shown = run_cli("explain", "d/web", "--bundle", bundle, "-o", "json").json()
    assert [(f["id"], f["node"]) for f in shown["findings"]] == [("node-drift", "node-c")]
    assert run_cli("explain", "d/local", "--bundle", bundle, "-o", "json").json()["findings"] == []
