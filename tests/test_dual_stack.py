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
