"""The real `svcdoctor` on lab nodes in kube-proxy's nftables mode: kube-proxy's table (1.34–1.35 layout) loaded
with the node's own `nft -f`, real packets from `mypc` and from pods through it, the pods' own HTTP servers as
the witnesses (nftables keeps no counters on kube-proxy's rules, so what each pod served is the count).

One module, one lab state change: the session's iptables lab is reprogrammed in place into nftables mode
(`Lab.switch`, docs/reference/lab.md §9), the planted faults of the mode are reprogrammings of one node, and the
lab is switched back to the seed's iptables mode at the end.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from . import harness
from . import scenario as sc
from .standin_apiserver import StandinApiServer
from .standin_exec import docker_runner
from .test_cli_e2e import LIVE, svcdoctor

NODE_NAMES = [n.name for n in sc.NODES]
BY_DESIGN = {  # the scenario's own broken services (labelled sc.FAULT_LABEL), found in every mode
    ("etp-local-no-local-endpoints", sc.CONTROL_PLANE, "default/svc-nodeport-local"),
    ("etp-local-no-local-endpoints", sc.WORKER3, "default/svc-nodeport-local"),
    ("no-endpoints", None, "default/svc-no-endpoints"),
}


@pytest.fixture(scope="module")
def nft_lab(lab):
    """The session's lab with every node's kube-proxy in nftables mode (the seed's objects); back to the seed's
    iptables mode afterwards."""
    before = lab.scenario
    started = time.monotonic()
    lab.switch(sc.nft_scenario())
    lab.timings["switch to nftables"] = time.monotonic() - started
    try:
        yield lab
    finally:
        lab.switch(before)


@pytest.fixture(scope="module")
def nft_kubeconfig(tmp_path_factory) -> str:
    """A stand-in API server with the nft scenario's objects: the kube-proxy ConfigMap says `mode: nftables`."""
    with StandinApiServer(sc.nft_scenario().api_objects(), max_page_size=2) as server:
        yield str(server.write_kubeconfig(tmp_path_factory.mktemp("standin-nft") / "kubeconfig"))


def run_json(*args: str, expect_rc: int = 0) -> dict:
    run = svcdoctor(*args, "-o", "json")
    assert run.returncode == expect_rc, run.stderr
    assert "Traceback" not in run.stderr
    return json.loads(run.stdout)


def explain(service: str, kubeconfig: str) -> dict:
    return run_json("explain", service, *LIVE, "--kubeconfig", kubeconfig)


def entry(doc: dict, node: str, kind: str) -> dict:
    (port,) = doc["ports"]
    (node_doc,) = [n for n in port["nodes"] if n["node"] == node]
    (found,) = [e for e in node_doc["entries"] if e["kind"] == kind]
    return found


def served_since(lab, before: dict[str, list[str]]) -> dict[str, list[str]]:
    """pod -> the client address of each request it served since `before` (lab.pod_requests())."""
    now = lab.pod_requests()
    return {pod: addrs[len(before.get(pod, [])):] for pod, addrs in now.items() if addrs[len(before.get(pod, [])):]}


def endpoint_of(lab, pod: str) -> str:
    spec = lab.scenario.pod(pod)
    return f"{spec.ip}:{spec.port}"


def findings(kubeconfig: str, *extra: str, expect_rc: int = 0) -> set[tuple]:
    doc = run_json("check", *LIVE, "--kubeconfig", kubeconfig, *extra, expect_rc=expect_rc)
    return {(f["id"], f["node"], f["service"]) for f in doc["findings"]}


def test_every_node_runs_kube_proxy_in_nftables_mode(nft_lab, nft_kubeconfig):
    for node in NODE_NAMES:  # the harness's own view: kube-proxy's table in nft, its chains gone from iptables
        assert "service-ips" in nft_lab.nft_list(node)
        saved = nft_lab.save(node)
        assert ":KUBE-SERVICES" not in saved and ":KUBE-KUBELET-CANARY" in saved and "DOCKER_OUTPUT" in saved
    doc = run_json("nodes", *LIVE, "--kubeconfig", nft_kubeconfig)
    assert [(n["name"], n["proxyMode"], n["problems"]) for n in doc["nodes"]] == [
        (node, "nftables", []) for node in NODE_NAMES]


def test_pod_traffic_reaches_the_endpoints_explain_shows(nft_lab, nft_kubeconfig):
    doc = explain("svc-clusterip", nft_kubeconfig)
    net_pod = nft_lab.scenario.pod("net-pod")
    shown = entry(doc, sc.CONTROL_PLANE, "clusterIP")  # net-pod's node: its table does the DNAT
    assert shown["verdict"] == "dnat" and shown["packets"] is None  # no counters in nftables mode
    endpoints = {f"{e['ip']}:{e['port']}": e for e in shown["endpoints"]}
    assert all(abs(e["probability"] - 1 / 3) < 1e-6 for e in endpoints.values())
    before = nft_lab.pod_requests()
    answers = nft_lab.hit("net-pod", "http://10.200.1.10:9000/", 45)
    served = served_since(nft_lab, before)

    assert "ERROR" not in answers and sum(map(len, served.values())) == 45
    # each endpoint explain shows served (45 requests split 1/3 each: all three miss one with p < 1e-7), no other pod
    assert {endpoint_of(nft_lab, pod) for pod in served} == set(endpoints)
    assert {endpoints[endpoint_of(nft_lab, pod)]["pod"] for pod in served} == {f"default/{p}" for p in served}
    # masquerading: only sources outside the pod network (`ip saddr != 10.10.0.0/16`); the pods saw net-pod itself
    assert shown["masquerade"] == "conditional" and any(sc.CLUSTER_CIDR in w for w in shown["masqueradeWhen"])
    assert {addr for addrs in served.values() for addr in addrs} == {net_pod.ip}


def test_outside_traffic_to_a_node_port_reaches_the_endpoints_explain_shows(nft_lab, nft_kubeconfig):
    worker = sc.NODE_BY_NAME[sc.WORKER]
    node_port = entry(explain("svc-nodeport", nft_kubeconfig), sc.WORKER, "nodePort")
    assert (node_port["destination"], node_port["verdict"], node_port["masquerade"]) == (":32624", "dnat", "always")
    before = nft_lab.pod_requests()
    answers = nft_lab.hit(sc.CLIENT_NAME, f"http://{worker.ip}:32624/", 30)
    served = served_since(nft_lab, before)

    assert "ERROR" not in answers and sum(map(len, served.values())) == 30
    assert {endpoint_of(nft_lab, pod) for pod in served} == {f"{e['ip']}:{e['port']}" for e in node_port["endpoints"]}
    # ETP Cluster, "always" masqueraded: no pod saw mypc's own address, only worker's (its node IP or pod gateway)
    assert {a for addrs in served.values() for a in addrs} <= {worker.ip, worker.pod_gateway}


def test_etp_local_on_the_podless_node_drops_as_explain_says(nft_lab, nft_kubeconfig):
    doc = explain("svc-nodeport-local", nft_kubeconfig)
    podless = entry(doc, sc.WORKER3, "nodePort")
    assert podless["verdict"] == "drop" and podless["endpoints"] == []
    assert "no-endpoint-nodeports" in podless["blackholeRule"] and podless["blackholeRule"].endswith(": drop }")
    assert [(f["id"], f["node"]) for f in doc["findings"] if f["node"] == sc.WORKER3] == [
        ("etp-local-no-local-endpoints", sc.WORKER3)]
    before = nft_lab.pod_requests()
    assert nft_lab.hit(sc.CLIENT_NAME, f"http://{sc.NODE_BY_NAME[sc.WORKER3].ip}:32625/", 2, timeout=1) == \
        ["ERROR", "ERROR"]
    assert served_since(nft_lab, before) == {}  # nobody served them: dropped on worker3

    # the node with a local pod: only that pod, and the client's own address kept (masquerade "never")
    local = entry(doc, sc.WORKER, "nodePort")
    assert local["masquerade"] == "never"
    assert [(e["pod"], e["local"]) for e in local["endpoints"]] == [("default/echo-local-1", True)]
    before = nft_lab.pod_requests()
    assert "ERROR" not in nft_lab.hit(sc.CLIENT_NAME, f"http://{sc.NODE_BY_NAME[sc.WORKER].ip}:32625/", 3)
    assert served_since(nft_lab, before) == {"echo-local-1": [sc.CLIENT_IP] * 3}


@pytest.mark.parametrize("source, node, url", [
    ("net-pod", sc.CONTROL_PLANE, "10.200.1.10:9000"),
    (sc.CLIENT_NAME, sc.WORKER2, f"{sc.NODE_BY_NAME[sc.WORKER2].ip}:32624"),
])
def test_trace_of_a_real_request_gives_the_endpoints_it_reached(nft_lab, nft_kubeconfig, source, node, url):
    src = nft_lab.scenario.pod(source).ip if source != sc.CLIENT_NAME else sc.CLIENT_IP
    trace = run_json("trace", "--dst", url, "--src", src, "--node", node, *LIVE, "--kubeconfig", nft_kubeconfig)
    assert trace["node"] == node and trace["verdict"] == "dnat"
    reached = {f"{e['ip']}:{e['port']}" for e in trace["endpoints"]}
    assert sum(e["probability"] for e in trace["endpoints"]) == pytest.approx(1.0)
    before = nft_lab.pod_requests()
    answers = nft_lab.hit(source, f"http://{url}/", 36)
    served = served_since(nft_lab, before)
    assert "ERROR" not in answers and sum(map(len, served.values())) == 36
    assert {endpoint_of(nft_lab, pod) for pod in served} == reached
    # what the pods saw of the client is what trace says of masquerading
    clients = {a for addrs in served.values() for a in addrs}
    assert (src not in clients) == trace["masquerade"], (clients, trace["masquerade"])


def test_affinity_clients_are_the_clients_that_sent_requests(nft_lab, nft_kubeconfig):
    nft_lab.conntrack_flush(sc.WORKER)
    before = nft_lab.pod_requests()
    answers = nft_lab.hit(sc.CLIENT_NAME, "http://10.200.1.40:9000/", 6)  # mypc's route: via myk8s-worker
    served = served_since(nft_lab, before)
    assert "ERROR" not in answers and sum(map(len, served.values())) == 6
    (pinned_pod,) = served  # ClientIP affinity: one pod took all six

    shown = entry(explain("svc-affinity", nft_kubeconfig), sc.WORKER, "clusterIP")
    assert shown["sessionAffinityTimeoutSeconds"] == 10800
    (mine,) = [c for c in shown["affinityClients"] if c["client"] == sc.CLIENT_IP]
    assert mine["endpoint"] == endpoint_of(nft_lab, pinned_pod)
    assert 10800 - 120 < mine["expiresSeconds"] <= 10800  # refreshed by the last request, seconds ago
    # a pod's requests pin the pod's own address, on its own node's table only
    net_pod = nft_lab.scenario.pod("net-pod")
    before = nft_lab.pod_requests()
    assert "ERROR" not in nft_lab.hit("net-pod", "http://10.200.1.40:9000/", 3)
    (net_pod_pinned,) = served_since(nft_lab, before)
    doc = explain("svc-affinity", nft_kubeconfig)
    (pinned,) = [c for c in entry(doc, sc.CONTROL_PLANE, "clusterIP")["affinityClients"] if c["client"] == net_pod.ip]
    assert pinned["endpoint"] == endpoint_of(nft_lab, net_pod_pinned)
    for node in (sc.WORKER, sc.WORKER2, sc.WORKER3):
        assert net_pod.ip not in {c["client"] for c in entry(doc, node, "clusterIP")["affinityClients"]}
    # what nft itself lists: the same client in the same endpoint's set
    listing = nft_lab.nft_list(sc.WORKER)
    endpoint = mine["endpoint"].replace(":", "/")
    (elements,) = re.findall(r"set affinity-\w+-default/svc-affinity/tcp/svc-webport__" + re.escape(endpoint)
                             + r" \{[^}]*?elements = \{([^}]*)\}", listing, re.S)
    assert sc.CLIENT_IP in elements


def test_check_on_the_all_nftables_cluster_is_clean(nft_lab, nft_kubeconfig):
    # the services broken by design left out (the whole cluster's check shows exactly BY_DESIGN: the two tests
    # below, where one node's trouble is added to it)
    doc = run_json("check", *LIVE, "--kubeconfig", nft_kubeconfig, "-l", f"!{sc.FAULT_LABEL}")
    assert [f for f in doc["findings"] if f["severity"] != "info"] == []
    assert doc["summary"]["error"] == doc["summary"]["warning"] == 0 and doc["services"] == 4


def test_mixed_modes_mismatch_is_found_on_the_odd_nodes_only(nft_lab, nft_kubeconfig, kubeconfig):
    """worker2's kube-proxy runs in iptables mode, the others in nftables mode. With the ConfigMap saying
    nftables, worker2 is the odd one; with it saying iptables (the seed's stand-in), the three others are."""
    nft_lab.switch(sc.mixed_scenario())
    try:
        assert ":KUBE-SERVICES" in nft_lab.save(sc.WORKER2)
        assert [n["proxyMode"] for n in run_json("nodes", *LIVE, "--kubeconfig", nft_kubeconfig)["nodes"]] == [
            "nftables", "nftables", "iptables", "nftables"]
        assert findings(nft_kubeconfig) == BY_DESIGN | {("proxy-mode-mismatch", sc.WORKER2, None)}
        assert findings(kubeconfig) == BY_DESIGN | {
            ("proxy-mode-mismatch", node, None) for node in (sc.CONTROL_PLANE, sc.WORKER, sc.WORKER3)}
        # both kinds of node route the same Service, each through its own mode's rules
        for node in (sc.WORKER, sc.WORKER2):
            before = nft_lab.pod_requests()
            assert "ERROR" not in nft_lab.hit(sc.CLIENT_NAME, f"http://{sc.NODE_BY_NAME[node].ip}:32624/", 6)
            assert sum(map(len, served_since(nft_lab, before).values())) == 6
    finally:
        nft_lab.switch(sc.nft_scenario())


def test_iptables_leftovers_are_found_on_that_node_only(nft_lab, nft_kubeconfig, planted, tmp_path):
    planted(sc.WORKER3, sc.LEFTOVERS)
    assert ":KUBE-SERVICES" in nft_lab.save(sc.WORKER3) and "service-ips" in nft_lab.nft_list(sc.WORKER3)
    doc = run_json("check", *LIVE, "--kubeconfig", nft_kubeconfig, expect_rc=1)  # an error: exit 1
    found = {(f["id"], f["node"], f["service"]) for f in doc["findings"]}
    assert found == BY_DESIGN | {("stale-iptables-rules", sc.WORKER3, None)}
    (stale,) = [f for f in doc["findings"] if f["id"] == "stale-iptables-rules"]
    assert "kube-proxy's chains" in stale["message"] and stale["evidence"][0].startswith("nat chains: KUBE-")
    # the same through the API (exec into each node's kube-proxy pod, the stand-in's exec runs it in the node):
    # the ConfigMap says nftables, so the node that still has iptables chains gets its nft tables read too
    objects = sc.nft_scenario().api_objects() + sc.kube_proxy_pods()
    with StandinApiServer(objects, exec_runner=docker_runner(nft_lab.client)) as server:
        path = tmp_path / "kubeconfig-api"
        server.write_kubeconfig(path)
        via_api = run_json("check", "--kubeconfig", str(path), "--via", "api", expect_rc=1)
    assert {(f["id"], f["node"], f["service"]) for f in via_api["findings"]} == found
    # Which of the two nat chains at prerouting priority -100 takes a new connection: the kernel runs hooks of
    # equal priority newest first (net/netfilter/core.c, nf_hook_entries_grow), and kube-proxy's table was made
    # after the iptables mode's chains, so the leftovers' counters stay 0 while the pods serve the requests...
    worker3 = sc.NODE_BY_NAME[sc.WORKER3]
    before = nft_lab.pod_requests()
    assert "ERROR" not in nft_lab.hit(sc.CLIENT_NAME, f"http://{worker3.ip}:32624/", 6)
    assert sum(map(len, served_since(nft_lab, before).values())) == 6
    assert sum(r.packets for r in harness.counted_rules(nft_lab.save(sc.WORKER3, table="nat"))
               if r.chain == "PREROUTING") == 0
    # ...and what the table does not DNAT goes on to the leftovers: svc-clusterip as if deleted since the switch
    # (kube-proxy removes its elements), still served through the old KUBE-SERVICES, the finding's warning
    for name, element in (("service-ips", "10.200.1.10 . tcp . 9000"), ("cluster-ips", "10.200.1.10")):
        nft_lab._exec(sc.WORKER3, ["nft", "delete", "element", "ip", "kube-proxy", name, f"{{ {element} }}"])
    before = nft_lab.pod_requests()
    assert "ERROR" not in nft_lab.hit("webpod-3", "http://10.200.1.10:9000/", 6)
    served = served_since(nft_lab, before)
    dnat = harness.dnat_packets(nft_lab.save(sc.WORKER3, table="nat"), "default/svc-clusterip:svc-webport")
    assert sum(map(len, served.values())) == sum(dnat.values()) == 6
    assert {endpoint_of(nft_lab, pod) for pod in served} == {ep for ep, n in dnat.items() if n}


def test_watch_counts_each_endpoints_connections_from_conntrack(nft_lab, nft_kubeconfig):
    """nftables keeps no counters on kube-proxy's rules: `watch` counts new connections from each node's conntrack
    by itself, and each endpoint's count is what its pod served (net-pod's requests DNATed by the control plane's
    table, the outside client's by myk8s-worker's at the node port)."""
    from .test_watch_lab import Watch, endpoint_rows, sample_time, served_between

    worker = sc.NODE_BY_NAME[sc.WORKER]
    pods_before = nft_lab.pod_counts()
    with Watch(nft_kubeconfig, "svc-nodeport", "--count", "2", "--interval", "8") as watch:
        first = watch.sample()
        start = time.time()
        from_pod = nft_lab.hit("net-pod", "http://10.200.1.20:9000/", 18)
        pods_mid = nft_lab.pod_counts()
        from_outside = nft_lab.hit(sc.CLIENT_NAME, f"http://{worker.ip}:32624/", 12)
        done = time.time()
        second = watch.sample()
        code, err = watch.finish()
    assert code == 0, err
    assert "ERROR" not in from_pod + from_outside
    assert sample_time(first) <= start and done <= sample_time(second), "the requests did not fall between samples"
    assert (first["source"], second["source"]) == ("conntrack", "conntrack")
    assert all(r["deltaConnections"] == 0 for r in first["rows"])  # the baseline

    def deltas(node: str) -> dict[str, int]:
        rows = endpoint_rows(second, node, chain_prefix="service-")
        return {pod: row["deltaConnections"] for pod, row in rows.items() if row["deltaConnections"]}

    by_pod, from_mypc = served_between(pods_before, pods_mid), served_between(pods_mid, nft_lab.pod_counts())
    assert sum(by_pod.values()) == 18 and sum(from_mypc.values()) == 12
    assert deltas(sc.CONTROL_PLANE) == by_pod
    assert deltas(sc.WORKER) == from_mypc
    assert deltas(sc.WORKER2) == deltas(sc.WORKER3) == {}


# A stand-in for an nft built without JSON support (no such build is to be had here): the node's real nft moved
# aside, and in its place a script that answers `-j` as such a build does ("JSON support not compiled-in", exit 1)
# and runs the real nft for everything else. Fixed text, no input in it.
NFT_WITHOUT_JSON = """#!/bin/sh
for arg in "$@"; do
  if [ "$arg" = "-j" ] || [ "$arg" = "--json" ]; then
    echo "Error: JSON support not compiled-in" >&2
    exit 1
  fi
done
exec /usr/sbin/nft.real "$@"
"""


def test_a_node_whose_nft_has_no_json_is_read_from_the_text_and_said(nft_lab, nft_kubeconfig):
    node = sc.WORKER2
    nft_lab._exec(node, ["mv", "/usr/sbin/nft", "/usr/sbin/nft.real"])
    try:
        nft_lab._exec(node, ["sh", "-c", f"cat > /usr/sbin/nft <<'EOF'\n{NFT_WITHOUT_JSON}EOF\nchmod 755 /usr/sbin/nft"])
        assert "JSON support not compiled-in" in nft_lab._exec(node, ["sh", "-c", "nft -j list tables 2>&1"],
                                                                  check=False)
        doc = run_json("check", *LIVE, "--kubeconfig", nft_kubeconfig)
        found = {(f["id"], f["node"], f["service"]) for f in doc["findings"]}
        assert found == BY_DESIGN | {("nft-without-json", node, None)}
        # and the node's routing is the same, read from the text listing
        text_doc = explain("svc-nodeport", nft_kubeconfig)
        cluster_ip = entry(text_doc, node, "clusterIP")
        assert cluster_ip["verdict"] == "dnat" and len(cluster_ip["endpoints"]) == 3
    finally:
        nft_lab._exec(node, ["mv", "/usr/sbin/nft.real", "/usr/sbin/nft"])
    assert "service-ips" in nft_lab.nft_list(node)
