"""`svcdoctor watch --source conntrack` against the docker lab: the nodes' real conntrack tables, read while real
connections come in, next to a `watch` of the same service by its rule counters.

Two watches run at once on `svc-nodeport`; between their first and second samples the test sends requests to its
cluster IP from net-pod (the control plane's rules DNAT them) and to its node port on myk8s-worker from outside
(that node's rules DNAT them). The pods' own HTTP servers count what they served; each endpoint's new connections
by conntrack must be exactly that, node by node the same as the rule counters'.
"""

from __future__ import annotations

import time

from . import scenario as sc
from .test_watch_lab import Watch, endpoint_rows, sample_time, served_between

SERVICE = "svc-nodeport"
CLUSTER_IP_URL = "http://10.200.1.20:9000/"
INTERVAL = "8"  # both watches' first samples, then the requests, must fit in one interval of each


def deltas(doc: dict, node: str) -> dict[str, int]:
    return {pod: row["deltaPackets"] for pod, row in endpoint_rows(doc, node).items() if row["deltaPackets"]}


def test_conntrack_counts_each_endpoints_connections_as_the_pods_and_the_counters_do(lab, kubeconfig):
    worker = sc.NODE_BY_NAME[sc.WORKER]
    pods_before = lab.pod_counts()
    with Watch(kubeconfig, SERVICE, "--count", "2", "--interval", INTERVAL, "--source", "conntrack") as tracked, \
            Watch(kubeconfig, SERVICE, "--count", "2", "--interval", INTERVAL) as counted:
        firsts = {"conntrack": tracked.sample(), "counters": counted.sample()}
        start = time.time()
        from_pod = lab.hit("net-pod", CLUSTER_IP_URL, 18)
        pods_mid = lab.pod_counts()
        from_outside = lab.hit(sc.CLIENT_NAME, f"http://{worker.ip}:32624/", 12)
        done = time.time()
        seconds = {"conntrack": tracked.sample(), "counters": counted.sample()}
        results = {"conntrack": tracked.finish(), "counters": counted.finish()}
    served_by_pod = served_between(pods_before, pods_mid)
    served_from_outside = served_between(pods_mid, lab.pod_counts())

    for source, (code, err) in results.items():
        assert code == 0, f"{source}: {err}"
    assert "ERROR" not in from_pod + from_outside
    assert sum(served_by_pod.values()) == 18 and sum(served_from_outside.values()) == 12
    for source in firsts:
        assert sample_time(firsts[source]) <= start and done <= sample_time(seconds[source]), (
            f"{source}: the requests did not fall between its two samples: the test cannot tell")
    first, second = firsts["conntrack"], seconds["conntrack"]
    assert (first["source"], second["source"]) == ("conntrack", "conntrack")
    assert all(r["deltaConnections"] == 0 and r["source"] == "conntrack" for r in first["rows"])  # the baseline
    assert seconds["counters"]["source"] == "counters"

    # each node's conntrack saw the connections its rules DNATed: net-pod's on the control plane, the outside
    # client's at the node port it reached
    assert deltas(second, sc.CONTROL_PLANE) == served_by_pod
    assert deltas(second, sc.WORKER) == served_from_outside
    for node in (sc.WORKER2, sc.WORKER3):
        assert deltas(second, node) == {}
    # and the rule counters, read by the other watch at the same time, agree node by node
    for node in sc.NODE_BY_NAME:
        assert deltas(second, node) == deltas(seconds["counters"], node), node
    rows = endpoint_rows(second, sc.WORKER)
    assert all(r["chain"].startswith("KUBE-SVC-") and r["tracked"] >= r["deltaConnections"] and r["bytes"] is None
               for r in rows.values())
    (service_split,) = [s for s in second["splits"] if s["scope"] == "service"]
    assert service_split["connections"] == 30

