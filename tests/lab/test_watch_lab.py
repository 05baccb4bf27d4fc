"""`svcdoctor watch` against the docker lab: real counters moved by real connections, read while they move.

Each test starts the real command, waits for its first sample (the baseline) on stdout, makes something happen in
the cluster, and reads the second sample. The pods' own HTTP servers count what they served, independently of
the kernel's rule counters that watch reads.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from datetime import datetime, timezone

from . import scenario as sc
from .harness import REPO_ROOT

SVC_CLUSTERIP = "default/svc-clusterip:svc-webport"
ROW_KEYS = {"node", "chain", "rule", "service", "endpoint", "packets", "bytes", "deltaPackets", "deltaBytes", "reset"}


class Watch:
    """`svcdoctor watch … -o json` in a child process, read one sample at a time."""

    def __init__(self, kubeconfig: str, *args: str):
        env = {**os.environ, "NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "svcdoctor", "watch", *args, "-o", "json", "--cluster", sc.CLUSTER,
             "--kubeconfig", kubeconfig], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def sample(self, timeout: float = 60) -> dict:
        line = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            self.proc.kill()
            raise AssertionError(f"no sample from watch (exit {self.proc.wait()}): {self.proc.stderr.read()}")
        doc = json.loads(line[0])
        assert (doc["apiVersion"], doc["kind"]) == ("svcdoctor/v1", "WatchSample")
        for row in doc["rows"]:
            assert ROW_KEYS <= set(row)
        return doc

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        try:
            rest, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert rest.strip() == "", f"more samples than --count: {rest[:200]}"
        assert "Traceback" not in err, err
        return self.proc.returncode, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def sample_time(doc: dict) -> float:
    return datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def endpoint_rows(doc: dict, node: str, chain_prefix: str = "KUBE-SVC-", family: str = "IPv4") -> dict[str, dict]:
    """pod name -> its endpoint row on that node's split chain (IPv4 by default: on a dual-stack lab a pod has a
    row in each family, under chains of the same name)."""
    rows = [r for r in doc["rows"] if r["kind"] == "endpoint" and r["node"] == node
            and r["chain"].startswith(chain_prefix) and r["family"] == family]
    return {r["pod"].split("/", 1)[1]: r for r in rows}


def served_between(before, after) -> dict[str, int]:
    return {pod: after[pod] - before.get(pod, 0) for pod in after if after[pod] != before.get(pod, 0)}


def test_per_endpoint_deltas_equal_the_requests_each_pod_served(lab, kubeconfig):
    pods_before = lab.pod_counts()
    with Watch(kubeconfig, "svc-clusterip", "--count", "2", "--interval", "1") as watch:
        first = watch.sample()
        answers = lab.hit("net-pod", "http://10.200.1.10:9000/", 24)
        traffic_done = time.time()
        second = watch.sample()
        code, err = watch.finish()
    served = served_between(pods_before, lab.pod_counts())

    assert code == 0, err
    assert "ERROR" not in answers and sum(served.values()) == 24 and len(served) == 3
    assert traffic_done <= sample_time(second), "the requests took longer than the interval: the test cannot tell"
    assert first["interval"] == 1 and all(r["deltaPackets"] == 0 for r in first["rows"])  # the baseline
    # net-pod runs on the control plane: its node's KUBE-SVC chain chose the endpoints
    shown = endpoint_rows(second, sc.CONTROL_PLANE)
    assert set(shown) == {"webpod-1", "webpod-2", "webpod-3"}
    assert {pod: row["deltaPackets"] for pod, row in shown.items() if row["deltaPackets"]} == served
    assert all(row["packets"] - endpoint_rows(first, sc.CONTROL_PLANE)[pod]["packets"] == row["deltaPackets"]
               for pod, row in shown.items())
    assert all(not r["reset"] and r["service"] == SVC_CLUSTERIP for r in shown.values())
    for node in (sc.WORKER, sc.WORKER2, sc.WORKER3):  # nobody else sent anything
        assert all(r["deltaPackets"] == 0 for r in endpoint_rows(second, node).values())
    (service_split,) = [s for s in second["splits"] if s["scope"] == "service" and s["family"] == "IPv4"]
    assert service_split["observed"] == [served.get(f"webpod-{i}", 0) for i in (1, 2, 3)]
    assert service_split["connections"] == 24 and service_split["degreesOfFreedom"] == 2


def test_an_etp_local_request_to_a_podless_node_is_a_blackhole_there(lab, kubeconfig):
    worker3 = sc.NODE_BY_NAME[sc.WORKER3]
    pods_before = lab.pod_counts()
    answers: list[str] = []
    with Watch(kubeconfig, "svc-nodeport-local", "--count", "2", "--interval", "1") as watch:
        first = watch.sample()
        # no pod behind the NodePort on worker3: the SYN is dropped, and the client gives up after a second
        client = threading.Thread(target=lambda: answers.extend(
            lab.hit(sc.CLIENT_NAME, f"http://{worker3.ip}:32625/", 1, timeout=1)))
        client.start()
        second = watch.sample()
        code, err = watch.finish()
        client.join(30)
    assert code == 0, err
    assert answers == ["ERROR"] and not served_between(pods_before, lab.pod_counts())

    def holes(doc):
        return {r["node"]: r for r in doc["rows"] if r["blackhole"] and r["family"] == "IPv4"}

    # every node without an echo-local pod has the DROP rule; only worker3's counted
    assert set(holes(first)) == {sc.CONTROL_PLANE, sc.WORKER3}
    hole = holes(second)[sc.WORKER3]
    assert (hole["kind"], hole["chain"], hole["verdict"]) == ("blackhole", "KUBE-EXTERNAL-SERVICES", "DROP")
    assert hole["service"] == "default/svc-nodeport-local:svc-webport" and "no local endpoints" in hole["reason"]
    assert hole["rule"].endswith("-j DROP") and "--dport 32625" in hole["rule"]
    assert hole["deltaPackets"] >= 1 and hole["packets"] == holes(first)[sc.WORKER3]["packets"] + hole["deltaPackets"]
    assert holes(second)[sc.CONTROL_PLANE]["deltaPackets"] == 0
    assert all(r["deltaPackets"] == 0 for r in second["rows"] if r["kind"] == "endpoint")


def test_a_counter_reset_between_two_samples_is_reported_as_a_reset(lab, kubeconfig):
    node = sc.CONTROL_PLANE
    assert "ERROR" not in lab.hit("net-pod", "http://10.200.1.10:9000/", 60)  # every endpoint has counted some
    chain = _svc_chain(lab, node)
    with Watch(kubeconfig, "svc-clusterip", "--count", "2", "--interval", "2") as watch:
        first = watch.sample()
        before = endpoint_rows(first, node)
        assert all(r["packets"] >= 5 for r in before.values()), before
        # what kube-proxy does on a sync: restore the chain (same rules), which starts its counters from zero
        _reload_chain(lab, node, chain)
        pods_before = lab.pod_counts()
        assert "ERROR" not in lab.hit("net-pod", "http://10.200.1.10:9000/", 2)
        served = served_between(pods_before, lab.pod_counts())
        second = watch.sample()
        code, err = watch.finish()
    assert code == 0, err
    after = endpoint_rows(second, node)
    assert {pod: r["rule"] for pod, r in after.items()} == {pod: r["rule"] for pod, r in before.items()}
    for pod, row in after.items():
        assert row["reset"] is True and row["change"] == "reset", row
        assert row["packets"] == row["deltaPackets"] == served.get(pod, 0)  # the delta is the new value
        assert row["deltaPackets"] >= 0 and row["deltaBytes"] >= 0
    assert sum(r["deltaPackets"] for r in after.values()) == 2


def _svc_chain(lab, node: str) -> str:
    for line in lab.save(node, table="nat").splitlines():
        if f'"{SVC_CLUSTERIP} cluster IP"' in line and "-A KUBE-SERVICES " in line:
            return line.rsplit("-j ", 1)[1].strip()
    raise AssertionError(f"no KUBE-SERVICES rule for {SVC_CLUSTERIP} on {node}")


def _reload_chain(lab, node: str, chain: str) -> None:
    """iptables-restore --noflush of the chain's own rules inside the node (the test's doing, not svcdoctor's)."""
    lines = [line.split("] ", 1)[1] if line.startswith("[") else line for line in lab.save(node, table="nat").splitlines()]
    rules = [line for line in lines if line.startswith(f"-A {chain} ")]
    assert len(rules) >= 4, rules  # the masquerade rule and three endpoint jumps
    text = "\n".join(["*nat", f":{chain} - [0:0]", *rules, "COMMIT", ""]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("lab/rules/watch-reset.rules")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    assert lab.container(node).put_archive("/", buf.getvalue())
    lab._exec(node, ["iptables-restore", "--noflush", "/lab/rules/watch-reset.rules"])


def test_each_node_is_sampled_with_its_own_backend(lab, kubeconfig):
    """worker2's kube-proxy writes with iptables-legacy: its counters come from there, and the nft nodes never get
    a legacy table (listing one with iptables-legacy -t … would create it)."""
    lab.plant(sc.WORKER2, sc.LEGACY)
    try:
        pods_before = lab.pod_counts()
        with Watch(kubeconfig, "svc-clusterip", "--count", "2", "--interval", "1") as watch:
            watch.sample()
            answers = lab.hit("webpod-2", "http://10.200.1.10:9000/", 12)  # webpod-2 lives on worker2
            second = watch.sample()
            code, err = watch.finish()
        served = served_between(pods_before, lab.pod_counts())
        assert code == 0, err
        assert "ERROR" not in answers and sum(served.values()) == 12
        shown = endpoint_rows(second, sc.WORKER2)
        assert {pod: r["deltaPackets"] for pod, r in shown.items() if r["deltaPackets"]} == served
        for node in (sc.CONTROL_PLANE, sc.WORKER, sc.WORKER3):
            assert lab._exec(node, ["cat", "/proc/net/ip_tables_names"]).strip() == "", node
    finally:
        lab.heal(sc.WORKER2)


def test_without_a_service_the_busiest_rules_are_what_moved(lab, kubeconfig):
    worker = sc.NODE_BY_NAME[sc.WORKER]
    pods_before = lab.pod_counts()
    with Watch(kubeconfig, "--count", "2", "--interval", "1") as watch:
        watch.sample()
        answers = lab.hit(sc.CLIENT_NAME, f"http://{worker.ip}:32624/", 15)
        second = watch.sample()
        code, err = watch.finish()
    served = served_between(pods_before, lab.pod_counts())
    assert code == 0, err
    assert "ERROR" not in answers and sum(served.values()) == 15
    rows = second["rows"]
    assert rows and all(r["deltaPackets"] > 0 for r in rows)  # only what moved
    assert [r["deltaPackets"] for r in rows] == sorted((r["deltaPackets"] for r in rows), reverse=True)
    (entry,) = [r for r in rows if r["kind"] == "entry"]
    assert (entry["node"], entry["chain"], entry["deltaPackets"]) == (sc.WORKER, "KUBE-NODEPORTS", 15)
    assert entry["service"] == "default/svc-nodeport:svc-webport"
    endpoints = {r["pod"].split("/", 1)[1]: r["deltaPackets"] for r in rows if r["kind"] == "endpoint"}
    assert endpoints == served and all(r["node"] == sc.WORKER for r in rows if r["kind"] == "endpoint")
