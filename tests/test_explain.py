"""`explain` on kube-proxy's own cases: the contract's JSON shape and the answers kube-proxy's rules imply."""

import math

import pytest

from cli_run import run_cli
from kube_proxy_cases import iter_cases
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture

CASES = list(iter_cases())
SERVICE_KEYS = {"namespace", "name", "type", "clusterIP", "externalTrafficPolicy", "internalTrafficPolicy",
                "sessionAffinity", "sessionAffinityTimeoutSeconds"}
PORT_KEYS = {"name", "protocol", "port", "nodePort", "targetPort", "chains", "nodes"}
ENTRY_KEYS = {"kind", "destination", "verdict", "path", "masquerade", "packets", "bytes", "endpoints"}
ENDPOINT_KEYS = {"ip", "port", "chain", "probability", "ruleProbability", "packets", "bytes", "node", "pod", "local"}
FINDING_KEYS = {"id", "severity", "node", "service", "message", "evidence"}


def bundle_for(case, tmp_path, with_api=True):
    node = NodeCapture(name=case.settings_json.get("nodeName", "test-hostname"), iptables_save=case.restore_text,
                       internal_ip=case.node_ip, backend="nft", proxy_mode="iptables")
    snap = ClusterSnapshot(cluster="cases", nodes=[node], collected_at="2026-11-26T00:00:00Z")
    if with_api:
        snap.api = case.api_objects()
    out = tmp_path / case.name.replace("/", "_")
    write_bundle(snap, out)
    return out


def services_of(case):
    return sorted({(s["metadata"]["namespace"], s["metadata"]["name"]) for s in case.items("services")})


def check_shape(doc):
    assert doc["apiVersion"] == "svcdoctor/v1" and doc["kind"] == "Explain"
    assert SERVICE_KEYS <= set(doc["service"])
    for port in doc["ports"]:
        assert PORT_KEYS <= set(port)
        assert set(port["chains"]) == {"svc", "svl", "ext", "fw"}
        for node in port["nodes"]:
            assert "node" in node
            for entry in node["entries"]:
                assert ENTRY_KEYS <= set(entry)
                assert entry["kind"] in ("clusterIP", "nodePort", "externalIP", "loadBalancer")
                assert entry["verdict"] in ("dnat", "drop", "reject", "none")
                assert entry["masquerade"] in ("always", "never", "conditional")
                assert entry["path"] and entry["path"][0] in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES",
                                                              "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")
                for ep in entry["endpoints"]:
                    assert ENDPOINT_KEYS <= set(ep)
                    assert 0 < ep["probability"] <= 1
                if entry["verdict"] == "dnat":
                    assert math.isclose(sum(ep["probability"] for ep in entry["endpoints"]), 1.0, abs_tol=1e-6)
                    n = len(entry["endpoints"])
                    assert all(math.isclose(ep["probability"], 1 / n, abs_tol=1e-6) for ep in entry["endpoints"])
    for f in doc["findings"]:
        assert FINDING_KEYS <= set(f)
        assert f["severity"] in ("error", "warning", "info")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("with_api", [True, False], ids=["api", "rules-only"])
def test_every_service_explains_to_the_contract(case, with_api, tmp_path):
    path = bundle_for(case, tmp_path, with_api)
    for ns, name in services_of(case):
        r = run_cli("explain", name, "-n", ns, "--bundle", str(path), "-o", "json")
        if r.exit_code == 2 and not with_api:
            assert "no service" in r.stderr  # a service with no rules at all can only be known from the API
            continue
        assert r.exit_code == 0, r.stderr
        doc = r.json()
        check_shape(doc)
        if with_api:
            assert doc["service"]["type"] is not None


def explain(case_prefix, ns, name, tmp_path, with_api=True):
    case = next(c for c in CASES if c.name.startswith(case_prefix))
    r = run_cli("explain", name, "-n", ns, "--bundle", str(bundle_for(case, tmp_path, with_api)), "-o", "json")
    assert r.exit_code == 0, r.stderr
    return r.json()


def entries(doc):
    return {(e["kind"], e["destination"]): e for p in doc["ports"] for n in p["nodes"] for e in n["entries"]}


def test_etp_local_without_local_pod_drops_external_traffic(tmp_path):
    doc = explain("01-", "ns2", "svc2", tmp_path)
    e = entries(doc)
    assert e[("nodePort", ":3001")]["verdict"] == "drop"
    assert e[("loadBalancer", "1.2.3.4:80")]["verdict"] == "drop"
    assert e[("externalIP", "192.168.99.22:80")]["verdict"] == "drop"
    assert e[("clusterIP", "172.30.0.42:80")]["verdict"] == "dnat"
    assert e[("clusterIP", "172.30.0.42:80")]["masquerade"] == "conditional"
    assert "etp-local-no-local-endpoints" in {f["id"] for f in doc["findings"]}
    assert doc["service"]["externalTrafficPolicy"] == "Local"


def test_two_endpoints_split_half_and_half_and_external_ip_masquerades(tmp_path):
    doc = explain("01-", "ns4", "svc4", tmp_path)
    e = entries(doc)
    cluster = e[("clusterIP", "172.30.0.44:80")]
    assert [(x["ip"], x["probability"], x["ruleProbability"]) for x in cluster["endpoints"]] == [
        ("10.180.0.4", 0.5, 0.5), ("10.180.0.5", 0.5, None)]
    assert [x["local"] for x in cluster["endpoints"]] == [False, True]
    ext = e[("externalIP", "192.168.99.33:80")]
    assert ext["masquerade"] == "always" and ext["verdict"] == "dnat"
    assert ext["path"] == ["KUBE-SERVICES", "KUBE-EXT-4SW47YFZTEDKD3PK", "KUBE-SVC-4SW47YFZTEDKD3PK"]


def test_load_balancer_source_ranges_go_through_the_firewall_chain(tmp_path):
    doc = explain("01-", "ns5", "svc5", tmp_path)
    lb = entries(doc)[("loadBalancer", "5.6.7.8:80")]
    assert lb["path"][:2] == ["KUBE-SERVICES", "KUBE-FW-NUKIZ6OKUXPJNT4C"]
    assert lb["verdict"] == "dnat" and lb["blackholeRule"] and "KUBE-PROXY-FIREWALL" in lb["blackholeRule"]
    assert doc["ports"][0]["chains"]["fw"] == "KUBE-FW-NUKIZ6OKUXPJNT4C"


def test_no_endpoints_rejects(tmp_path):
    doc = explain("05-", "ns1", "svc1", tmp_path)
    (entry,) = entries(doc).values()
    assert entry["verdict"] == "reject" and entry["endpoints"] == []
    assert [f["id"] for f in doc["findings"]] == ["no-endpoints"]


def test_session_affinity_and_local_only_external_path(tmp_path):
    doc = explain("03-", "ns1", "svc1", tmp_path)
    assert doc["service"]["sessionAffinity"] == "ClientIP"
    assert doc["service"]["sessionAffinityTimeoutSeconds"] == 10800
    e = entries(doc)
    node_port = e[("nodePort", ":3001")]
    assert node_port["masquerade"] == "never"
    assert [x["ip"] for x in node_port["endpoints"]] == ["10.180.2.1"]
    assert node_port["sessionAffinityTimeoutSeconds"] == 10800
    assert len(e[("clusterIP", "172.30.0.41:80")]["endpoints"]) == 2


def test_rules_only_recovers_names_from_comments(tmp_path):
    doc = explain("01-", "ns4", "svc4", tmp_path, with_api=False)
    assert doc["service"]["type"] is None
    assert doc["service"]["clusterIP"] == "172.30.0.44"
    assert doc["ports"][0]["name"] == "p80"
    assert doc["ports"][0]["chains"]["svc"] == "KUBE-SVC-4SW47YFZTEDKD3PK"


def test_port_filter(tmp_path):
    doc = explain("01-", "ns4", "svc4", tmp_path)
    assert len(doc["ports"]) == 1
    case = next(c for c in CASES if c.name.startswith("01-"))
    r = run_cli("explain", "svc4", "-n", "ns4", "--port", "p81", "--bundle", str(bundle_for(case, tmp_path)))
    assert r.exit_code == 2 and "no port" in r.stderr


def test_renamed_chain_is_a_hash_mismatch(tmp_path):
    case = next(c for c in CASES if c.name.startswith("01-"))
    p = tmp_path / "renamed.txt"
    p.write_text(case.restore_text.replace("KUBE-SEP-UKSFD7AGPMPPLUHC", "KUBE-SEP-AAAAAAAAAAAAAAAA"))
    r = run_cli("explain", "svc4", "-n", "ns4", "--bundle", str(p), "-o", "json")
    assert r.exit_code == 0, r.stderr
    found = [f for f in r.json()["findings"] if f["id"] == "hash-mismatch"]
    assert len(found) == 1 and "KUBE-SEP-AAAAAAAAAAAAAAAA" in found[0]["message"]
    # and the untouched original has none
    p.write_text(case.restore_text)
    assert not [f for f in run_cli("explain", "svc4", "-n", "ns4", "--bundle", str(p), "-o", "json").json()["findings"]
                if f["id"] == "hash-mismatch"]


# --- counters shared between entries (issue #11) ---------------------------------------------------------------
DEMO_NODES = __import__("pathlib").Path(__file__).parent.parent / "svcdoctor" / "demo" / "myk8s" / "nodes"


def _jump_counters(node: str, chains: set[str]) -> int:
    """The packets of every jump to a KUBE-SEP- chain in `chains`, read straight from the node's dump."""
    import re

    total = 0
    for line in (DEMO_NODES / node / "iptables.txt").read_text().splitlines():
        m = re.match(r"\[(\d+):\d+\] -A (\S+) .*-j KUBE-SEP-", line)
        if m and m.group(2) in chains:
            total += int(m.group(1))
    return total


@pytest.mark.parametrize("service", ["svc-nodeport", "svc-local", "svc-clusterip", "svc-affinity"])
def test_a_sum_over_entries_counts_each_connection_once(service):
    """jq '[.ports[].nodes[].entries[].endpoints[] | select(.countersCountedHere) | .packets] | add' equals the
    counters of the jumps in KUBE-SVC/SVL: the ClusterIP and node-port entries share them and say so."""
    doc = run_cli("explain", service, "--demo", "-o", "json").json()
    for port in doc["ports"]:
        chains = {c for key, c in port["chains"].items() if key in ("svc", "svl") and c}
        for node in port["nodes"]:
            once = sum(ep["packets"] or 0 for e in node["entries"] for ep in e["endpoints"]
                       if ep["countersCountedHere"])
            assert once == _jump_counters(node["node"], chains), (service, node["node"])


def test_shared_counters_are_named_on_both_entries_and_before_the_endpoints():
    doc = run_cli("explain", "svc-nodeport", "--demo", "-o", "json").json()
    worker = next(n for n in doc["ports"][0]["nodes"] if n["node"] == "myk8s-worker")
    cluster_ip, node_port = worker["entries"]
    assert cluster_ip["countersSharedWith"] == ["nodePort :32624"]
    assert node_port["countersSharedWith"] == ["clusterIP 10.200.1.184:9000"]
    assert cluster_ip["countersChain"] == node_port["countersChain"] == "KUBE-SVC-VTR7MTHHNMFZ3OFS"
    assert [ep["countersCountedHere"] for ep in cluster_ip["endpoints"]] == [True] * 3
    assert [ep["countersCountedHere"] for ep in node_port["endpoints"]] == [False] * 3
    lines = run_cli("explain", "svc-nodeport", "--demo").stdout.splitlines()
    said = next(i for i, line in enumerate(lines) if "shared with nodePort :32624" in line)
    first_endpoint = next(i for i, line in enumerate(lines) if "10.10.2.3:8080" in line)
    assert said < first_endpoint and "[0 pkts]" in lines[said - 3]
