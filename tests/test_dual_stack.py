"""Dual-stack Services: kube-proxy's IPv6 proxier writes the same chain names into ip6tables. A bundle that
carries `ip6tables.txt` beside `iptables.txt` is explained in both families; the rules are kube-proxy's
(model/expected.py), loaded into a network namespace with the real iptables-restore and ip6tables-restore and
dumped back."""

import pytest

from cli_run import run_cli
from netns import Namespace, require_netns
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.expected import ProxySettings, expected_restore_text

pytestmark = pytest.mark.netns
NODE, NODE_IP4, NODE_IP6 = "node-a", "172.18.0.3", "fc00:f853:ccd:e793::3"
SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"namespace": "default", "name": "web"},
    "spec": {"type": "NodePort", "clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00:10:96::50"],
             "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
             "externalTrafficPolicy": "Cluster", "sessionAffinity": "None",
             "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30050}]},
}


def endpoint_slice(family: str, addresses: list[str]) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"namespace": "default", "name": f"web-{family.lower()}",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": n}
                      for a, n in zip(addresses, ("node-a", "node-b"))],
    }


SLICES = [endpoint_slice("IPv4", ["10.244.1.5", "10.244.2.6"]),
          endpoint_slice("IPv6", ["fd00:10:244:1::5", "fd00:10:244:2::6"])]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    require_netns()
    model = build_cluster_model([SERVICE], SLICES)
    v4 = expected_restore_text(model, ProxySettings(node_name=NODE, node_ips=(NODE_IP4, NODE_IP6),
                                                    cluster_cidr="10.244.0.0/16"))
    v6 = expected_restore_text(model, ProxySettings(node_name=NODE, node_ips=(NODE_IP4, NODE_IP6),
                                                    cluster_cidr="fd00:10:244::/56", ip_family="IPv6"))
    with Namespace() as ns:
        ns.run("iptables-restore", input=v4["filter"] + v4["nat"])
        ns.run("ip6tables-restore", input=v6["filter"] + v6["nat"])
        saved4 = ns.run("iptables-save", "-c").stdout
        saved6 = ns.run("ip6tables-save", "-c").stdout
    assert "fd00:10:96::50/128" in saved6 and "10.96.0.50/32" in saved4
    node = NodeCapture(name=NODE, iptables_save=saved4, ip6tables_save=saved6, internal_ip=NODE_IP4, backend="nft",
                       proxy_mode="iptables")
    path = tmp_path_factory.mktemp("dual") / "bundle.tar.gz"
    write_bundle(ClusterSnapshot(cluster="dual", nodes=[node], api=ApiObjects(services=[SERVICE],
                                                                              endpointslices=SLICES, status="ok")),
                 path)
    return str(path)


def test_explain_shows_both_families(bundle):
    r = run_cli("explain", "web", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    (port,) = doc["ports"]
    (node,) = port["nodes"]
    by_dest = {(e["kind"], e["family"], e["destination"]): e for e in node["entries"]}
    v4 = by_dest[("clusterIP", "IPv4", "10.96.0.50:80")]
    v6 = by_dest[("clusterIP", "IPv6", "[fd00:10:96::50]:80")]
    assert [e["ip"] for e in v4["endpoints"]] == ["10.244.1.5", "10.244.2.6"]
    assert [e["ip"] for e in v6["endpoints"]] == ["fd00:10:244:1::5", "fd00:10:244:2::6"]
    assert [e["local"] for e in v6["endpoints"]] == [True, False]
    assert v4["masquerade"] == v6["masquerade"] == "conditional"
    assert {(k, f) for k, f, _ in by_dest if k == "nodePort"} == {("nodePort", "IPv4"), ("nodePort", "IPv6")}
    assert doc["service"]["clusterIP"] == "10.96.0.50"
    assert doc["findings"] == []


def test_trace_takes_the_family_of_the_destination(bundle):
    r = run_cli("trace", "--dst", "[fd00:10:96::50]:80", "--src", "fd00:10:244:9::9", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["verdict"] == "dnat" and not doc["masquerade"]
    assert sorted(e["ip"] for e in doc["endpoints"]) == ["fd00:10:244:1::5", "fd00:10:244:2::6"]


def test_the_human_view_marks_ipv6_entries(bundle, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    out = run_cli("explain", "web", "--bundle", bundle).stdout
    assert "clusterIP [fd00:10:96::50]:80 (IPv6)" in out and "clusterIP 10.96.0.50:80" in out


def test_without_ip6tables_ipv6_endpoints_are_not_called_missing(tmp_path):
    model = build_cluster_model([SERVICE], SLICES)
    v4 = expected_restore_text(model, ProxySettings(node_name=NODE, node_ips=(NODE_IP4,), cluster_cidr="10.244.0.0/16"))
    node = NodeCapture(name=NODE, iptables_save=v4["filter"] + v4["nat"], internal_ip=NODE_IP4)
    write_bundle(ClusterSnapshot(cluster="dual", nodes=[node], api=ApiObjects(services=[SERVICE], endpointslices=SLICES,
                                                                              status="ok")), tmp_path / "b")
    r = run_cli("explain", "web", "--bundle", str(tmp_path / "b"), "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["findings"] == []
    r = run_cli("trace", "--dst", "[fd00:10:96::50]:80", "--bundle", str(tmp_path / "b"))
    assert r.exit_code == 2 and "ip6tables" in r.stderr


STALE_V6 = "fd00:10:244:3::9"


@pytest.fixture(scope="module")
def stale_v6_bundle(tmp_path_factory):
    """Three nodes read from the kernel; node-c's ip6tables still routes to an IPv6 pod the slices no longer list
    (in place of one they do list: kube-proxy there missed an update)."""
    require_netns()
    model = build_cluster_model([SERVICE], SLICES)
    stale = build_cluster_model([SERVICE], [SLICES[0], endpoint_slice("IPv6", ["fd00:10:244:1::5", STALE_V6])])
    saved = {}
    for name, m6 in (("clean", model), ("stale", stale)):
        v4 = expected_restore_text(model, ProxySettings(node_name=NODE, node_ips=(NODE_IP4, NODE_IP6),
                                                        cluster_cidr="10.244.0.0/16"))
        v6 = expected_restore_text(m6, ProxySettings(node_name=NODE, node_ips=(NODE_IP4, NODE_IP6),
                                                     cluster_cidr="fd00:10:244::/56", ip_family="IPv6"))
        with Namespace() as ns:
            ns.run("iptables-restore", input=v4["filter"] + v4["nat"])
            ns.run("ip6tables-restore", input=v6["filter"] + v6["nat"])
            saved[name] = (ns.run("iptables-save", "-c").stdout, ns.run("ip6tables-save", "-c").stdout)
    assert STALE_V6 in saved["stale"][1] and STALE_V6 not in saved["clean"][1]
    nodes = [NodeCapture(name=n, iptables_save=saved[kind][0], ip6tables_save=saved[kind][1], backend="nft",
                         proxy_mode="iptables")
             for n, kind in (("node-a", "clean"), ("node-b", "clean"), ("node-c", "stale"))]
    path = tmp_path_factory.mktemp("dual-stale") / "bundle"
    write_bundle(ClusterSnapshot(cluster="dual", nodes=nodes, api=ApiObjects(services=[SERVICE],
                                                                             endpointslices=SLICES, status="ok")), path)
    return str(path)


def test_check_finds_a_stale_ipv6_endpoint_on_its_node(stale_v6_bundle):
    r = run_cli("check", "--bundle", stale_v6_bundle, "-o", "json")
    assert r.exit_code == 1, r.stderr
    (stale,) = [f for f in r.json()["findings"] if f["id"] == "stale-endpoint"]
    assert stale["node"] == "node-c" and f"[{STALE_V6}]:8080" in stale["message"]
    assert {f["node"] for f in r.json()["findings"] if f["severity"] != "info"} == {"node-c"}
    # explain's findings for the service are check's (one engine, both families)
    doc = run_cli("explain", "web", "--bundle", stale_v6_bundle, "-o", "json").json()
    checked = sorted((f["id"], f["node"]) for f in r.json()["findings"] if f["service"] == "default/web")
    assert sorted((f["id"], f["node"]) for f in doc["findings"]) == checked
    assert ("stale-endpoint", "node-c") in checked


def test_without_the_api_the_ipv6_drift_is_found_on_its_node(stale_v6_bundle):
    r = run_cli("check", "--bundle", stale_v6_bundle, "--no-api", "-o", "json")
    assert r.exit_code in (0, 1), r.stderr
    drift = [f for f in r.json()["findings"] if f["id"] == "node-drift"]
    assert [f["node"] for f in drift] == ["node-c"] and STALE_V6 in drift[0]["message"]


def test_a_clean_dual_stack_cluster_checks_clean(bundle):
    r = run_cli("check", "--bundle", bundle, "-o", "json")
    assert r.exit_code == 0 and r.json()["findings"] == [], r.stdout
