"""The real `svcdoctor` command against the docker lab and the stand-in API server, with real packets.

Every number asserted here is counted twice, independently: by the kernel (the rule counters svcdoctor reads)
and by the pods' own HTTP servers (the requests they served).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


from . import harness
from . import scenario as sc

LIVE = ["--cluster", sc.CLUSTER]


def svcdoctor(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "svcdoctor", *args], cwd=harness.REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def explain(service: str, kubeconfig: str, *extra: str, expect_rc: int = 0) -> dict:
    run = svcdoctor("explain", service, *LIVE, "--kubeconfig", kubeconfig, "-o", "json", *extra)
    assert run.returncode == expect_rc, run.stderr
    assert "Traceback" not in run.stderr
    return json.loads(run.stdout)  # exactly one JSON document on stdout


def entry(doc: dict, node: str, kind: str) -> dict:
    (port,) = doc["ports"]
    (node_doc,) = [n for n in port["nodes"] if n["node"] == node]
    (found,) = [e for e in node_doc["entries"] if e["kind"] == kind]
    return found


def endpoint_packets(doc: dict, node: str, kind: str) -> dict[str, int]:
    """pod name -> packets svcdoctor shows for that endpoint on that node's entry."""
    return {ep["pod"].split("/")[1]: ep["packets"] for ep in entry(doc, node, kind)["endpoints"]}


def delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before) if after.get(k, 0) != before.get(k, 0)}


def test_explain_endpoint_counters_equal_what_each_pod_served(lab, kubeconfig):
    before = explain("svc-clusterip", kubeconfig)
    pods_before = lab.pod_counts()
    answers = lab.hit("net-pod", "http://10.200.1.10:9000/", 45)
    served = delta(lab.pod_counts(), pods_before)
    after = explain("svc-clusterip", kubeconfig)

    assert "ERROR" not in answers and sum(served.values()) == 45 and len(served) == 3
    # the pod net-pod lives on the control plane: its node's rules did the DNAT
    shown = delta(endpoint_packets(after, sc.CONTROL_PLANE, "clusterIP"),
                  endpoint_packets(before, sc.CONTROL_PLANE, "clusterIP"))
    assert shown == served
    assert entry(after, sc.CONTROL_PLANE, "clusterIP")["packets"] - \
        entry(before, sc.CONTROL_PLANE, "clusterIP")["packets"] == 45
    for node in (sc.WORKER, sc.WORKER2, sc.WORKER3):
        assert not delta(endpoint_packets(after, node, "clusterIP"), endpoint_packets(before, node, "clusterIP"))
    # what the API says about the endpoints came through the stand-in
    eps = entry(after, sc.CONTROL_PLANE, "clusterIP")["endpoints"]
    assert {(e["pod"], e["node"]) for e in eps} == {
        (f"default/webpod-{i}", node) for i, node in enumerate((sc.WORKER, sc.WORKER2, sc.WORKER3), start=1)}
    assert all(abs(e["probability"] - 1 / 3) < 1e-6 for e in eps)


def test_explain_nodeport_counts_and_masquerade_match_the_packets(lab, kubeconfig):
    worker = sc.NODE_BY_NAME[sc.WORKER]
    before = explain("svc-nodeport", kubeconfig)
    requests_before = lab.pod_requests()
    answers = lab.hit(sc.CLIENT_NAME, f"http://{worker.ip}:32624/", 30)
    requests_after = lab.pod_requests()
    after = explain("svc-nodeport", kubeconfig)

    served = {pod: len(requests_after[pod]) - len(requests_before.get(pod, [])) for pod in requests_after}
    served = {pod: n for pod, n in served.items() if n}
    assert "ERROR" not in answers and sum(served.values()) == 30
    node_port = entry(after, sc.WORKER, "nodePort")
    assert node_port["destination"] == ":32624" and node_port["verdict"] == "dnat"
    assert node_port["packets"] - entry(before, sc.WORKER, "nodePort")["packets"] == 30
    assert delta(endpoint_packets(after, sc.WORKER, "nodePort"), endpoint_packets(before, sc.WORKER, "nodePort")) == served
    # ETP Cluster: svcdoctor says "always masqueraded", and no pod saw mypc's own address
    assert node_port["masquerade"] == "always"
    clients = {addr for pod in served for addr in requests_after[pod][len(requests_before.get(pod, [])):]}
    assert sc.CLIENT_IP not in clients and clients <= {worker.ip, worker.pod_gateway}


def test_etp_local_request_to_the_podless_node_shows_on_its_drop_rule(lab, kubeconfig):
    worker3 = sc.NODE_BY_NAME[sc.WORKER3]
    watch_args = ["watch", "svc-nodeport-local", *LIVE, "--kubeconfig", kubeconfig, "--count", "1", "-o", "json"]

    def drop_rule_packets() -> int:
        run = svcdoctor(*watch_args)
        assert run.returncode == 0, run.stderr
        (sample,) = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        (row,) = [r for r in sample["rows"] if r["node"] == sc.WORKER3 and r.get("blackhole")]
        assert row["chain"] == "KUBE-EXTERNAL-SERVICES" and row["rule"].endswith("-j DROP")
        return row["packets"]

    before, drops_before = explain("svc-nodeport-local", kubeconfig), drop_rule_packets()
    pods_before = lab.pod_counts()
    answers = lab.hit(sc.CLIENT_NAME, f"http://{worker3.ip}:32625/", 2, timeout=1)
    assert answers == ["ERROR", "ERROR"]
    assert not delta(lab.pod_counts(), pods_before)  # nobody served them
    after, drops_after = explain("svc-nodeport-local", kubeconfig), drop_rule_packets()

    node_port = entry(after, sc.WORKER3, "nodePort")
    assert node_port["verdict"] == "drop" and node_port["endpoints"] == []
    assert "-j DROP" in node_port["blackholeRule"]
    # nat sees each connection once; the filter DROP sees every SYN, retransmissions included
    assert node_port["packets"] - entry(before, sc.WORKER3, "nodePort")["packets"] == 2
    assert drops_after - drops_before >= 2
    (finding,) = [f for f in after["findings"] if f["id"] == "etp-local-no-local-endpoints" and f["node"] == sc.WORKER3]
    assert finding["service"] == "default/svc-nodeport-local"

    # the same NodePort on a node with a pod answers, and keeps the client's address (masquerade "never")
    requests_before = lab.pod_requests()["echo-local-1"]
    assert lab.hit(sc.CLIENT_NAME, f"http://{sc.NODE_BY_NAME[sc.WORKER].ip}:32625/", 3) != ["ERROR"] * 3
    assert lab.pod_requests()["echo-local-1"][len(requests_before):] == [sc.CLIENT_IP] * 3
    assert entry(after, sc.WORKER, "nodePort")["masquerade"] == "never"


def test_a_stopped_node_gives_exit_4_and_is_named(lab, kubeconfig, planted):
    planted(sc.WORKER3, sc.STOPPED)
    run = svcdoctor("explain", "svc-clusterip", *LIVE, "--kubeconfig", kubeconfig, "-o", "json")
    assert run.returncode == 4, run.stderr
    doc = json.loads(run.stdout)
    assert [n["node"] for n in doc["ports"][0]["nodes"]] == [sc.CONTROL_PLANE, sc.WORKER, sc.WORKER2]
    assert sc.WORKER3 in run.stderr and "exited" in run.stderr and "Traceback" not in run.stderr


def test_planted_faults_become_findings(lab, kubeconfig, planted):
    planted(sc.WORKER, sc.STALE)
    planted(sc.WORKER3, sc.NO_RULES)
    planted(sc.WORKER2, sc.LEGACY)
    run = svcdoctor("check", *LIVE, "--kubeconfig", kubeconfig, "-o", "json")
    assert run.returncode == 1, run.stderr  # errors found, default --fail-on error
    findings = json.loads(run.stdout)["findings"]
    found = {(f["id"], f["node"], f["service"]) for f in findings}
    assert ("stale-endpoint", sc.WORKER, "default/svc-clusterip") in found
    assert ("missing-endpoint", sc.WORKER, "default/svc-clusterip") in found
    assert ("no-kube-proxy-rules", sc.WORKER3, None) in found
    stale = [f for f in findings if f["id"] == "stale-endpoint" and f["service"] == "default/svc-clusterip"]
    assert sc.STALE_ENDPOINTS["webpod-1"] in stale[0]["message"]
    # kube-proxy's rules in legacy while kubelet's chains are in nft: the node's iptables users disagree
    assert ("backend-mismatch", sc.WORKER2, None) in found
    assert {f["id"] for f in findings if f["node"] == sc.WORKER2} == {"backend-mismatch"}

    nodes = svcdoctor("nodes", *LIVE, "--kubeconfig", kubeconfig, "-o", "json")
    assert nodes.returncode == 0, nodes.stderr
    by_name = {n["name"]: n for n in json.loads(nodes.stdout)["nodes"]}
    assert [by_name[n]["backend"] for n in sc.NODE_BY_NAME] == ["nft", "nft", "legacy", "nft"]


def test_api_trouble_falls_back_to_the_rules_alone(lab, standin, tmp_path):
    bad = str(standin.write_kubeconfig(tmp_path / "kubeconfig", token="wrong"))
    run = svcdoctor("explain", "svc-clusterip", *LIVE, "--kubeconfig", bad, "-o", "json")
    assert run.returncode == 0, run.stderr
    assert "401" in run.stderr and "Traceback" not in run.stderr
    doc = json.loads(run.stdout)
    assert doc["service"]["clusterIP"] == "10.200.1.10" and doc["service"]["type"] is None
    assert {e["ip"] for e in entry(doc, sc.WORKER, "clusterIP")["endpoints"]} == {"10.10.2.2", "10.10.3.2", "10.10.4.2"}


def test_no_docker_daemon_is_exit_3_naming_the_socket(tmp_path):
    socket = f"unix://{tmp_path}/nothing.sock"
    run = svcdoctor("nodes", "--no-api", env={"DOCKER_HOST": socket})
    assert run.returncode == 3
    assert socket in run.stderr and "Traceback" not in run.stderr and run.stdout == ""


def test_live_collect_bundle_explains_like_the_live_cluster(lab, kubeconfig, tmp_path):
    bundle = tmp_path / "myk8s.tar.gz"
    run = svcdoctor("collect", "--out", str(bundle), *LIVE, "--kubeconfig", kubeconfig)
    assert run.returncode == 0, run.stderr
    live = explain("svc-nodeport", kubeconfig)
    offline = svcdoctor("explain", "svc-nodeport", "--bundle", str(bundle), "-o", "json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["ports"] == live["ports"]  # no traffic in between: same counters too


def test_check_on_the_healthy_lab_finds_nothing(lab, kubeconfig):
    # the two services that are broken on purpose carry a label; everything else must check clean
    run = svcdoctor("check", *LIVE, "--kubeconfig", kubeconfig, "-l", f"!{sc.FAULT_LABEL}", "-o", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["findings"] == [] and doc["summary"] == {"error": 0, "warning": 0, "info": 0}
    # and the whole cluster shows exactly what those two services are broken for
    run = svcdoctor("check", *LIVE, "--kubeconfig", kubeconfig, "-o", "json")
    assert run.returncode == 0, run.stderr  # warnings only: below the default --fail-on error
    found = {(f["id"], f["node"], f["service"]) for f in json.loads(run.stdout)["findings"]}
    assert found == {
        ("etp-local-no-local-endpoints", sc.CONTROL_PLANE, "default/svc-nodeport-local"),
        ("etp-local-no-local-endpoints", sc.WORKER3, "default/svc-nodeport-local"),
        ("no-endpoints", None, "default/svc-no-endpoints"),
    }


def test_each_planted_fault_is_found_on_its_node_and_nothing_else(lab, kubeconfig, planted):
    planted(sc.WORKER, sc.STALE)
    planted(sc.WORKER2, sc.LEGACY)
    planted(sc.WORKER3, sc.NO_RULES)
    run = svcdoctor("check", *LIVE, "--kubeconfig", kubeconfig, "-o", "json")
    assert run.returncode == 1, run.stderr
    found = {(f["id"], f["node"], f["service"]) for f in json.loads(run.stdout)["findings"]}
    by_design = {  # the scenario's own broken services (worker3 now has no rules at all: one finding for it)
        ("etp-local-no-local-endpoints", sc.CONTROL_PLANE, "default/svc-nodeport-local"),
        ("no-endpoints", None, "default/svc-no-endpoints"),
    }
    planted_faults = {
        # webpod-1 "moved": worker still DNATs to its old IP, for both services that select it
        ("stale-endpoint", sc.WORKER, "default/svc-clusterip"),
        ("missing-endpoint", sc.WORKER, "default/svc-clusterip"),
        ("stale-endpoint", sc.WORKER, "default/svc-affinity"),
        ("missing-endpoint", sc.WORKER, "default/svc-affinity"),
        ("backend-mismatch", sc.WORKER2, None),
        ("no-kube-proxy-rules", sc.WORKER3, None),
    }
    assert found == by_design | planted_faults
