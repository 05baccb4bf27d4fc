"""`svcdoctor watch --via api` against the stand-in API server (not a kube-apiserver): every sample execs the iptables
binaries, argv only and a chain per exec, in each node's kube-proxy pod over `pods/exec`, which the stand-in runs in
the lab node container; the per-endpoint deltas equal what each pod served (as tests/lab/test_watch_lab.py checks
for the docker path). The kube-proxy pods here have no shell, as distroless images have none."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from . import scenario as sc
from .harness import REPO_ROOT
from .standin_apiserver import StandinApiServer
from .standin_exec import NO_SHELL, SHELLS, docker_runner
from .test_watch_lab import Watch, endpoint_rows, sample_time, served_between

import time


class ApiWatch(Watch):
    """The same reader of samples, for `watch --via api` (no --cluster: that names a kind cluster)."""

    def __init__(self, kubeconfig: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "svcdoctor", "watch", *args, "-o", "json", "--via", "api", "--kubeconfig",
             kubeconfig], cwd=REPO_ROOT, env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def standin(lab, docker_client, tmp_path):
    pods = sc.kube_proxy_pods()
    server = StandinApiServer(sc.seed_scenario().api_objects() + pods, exec_runner=docker_runner(docker_client))
    for pod in pods:  # distroless kube-proxy images: no shell to run a script in
        server.exec_faults.by_pod[pod["metadata"]["name"]] = NO_SHELL
    server.start()
    path = tmp_path / "kubeconfig"
    server.write_kubeconfig(path)
    doc = yaml.safe_load(path.read_text())
    doc["contexts"][0]["name"] = doc["current-context"] = "standin"
    path.write_text(yaml.safe_dump(doc))
    yield server, str(path)
    server.stop()


def test_watch_through_the_api_shows_what_each_pod_served(lab, standin):
    server, kubeconfig = standin
    pods_before = lab.pod_counts()
    with ApiWatch(kubeconfig, "svc-clusterip", "--count", "2", "--interval", "2") as watch:
        first = watch.sample()
        answers = lab.hit("net-pod", "http://10.200.1.10:9000/", 24)
        traffic_done = time.time()
        second = watch.sample()
        code, err = watch.finish()
    served = served_between(pods_before, lab.pod_counts())
    assert code == 0, err
    assert "ERROR" not in answers and sum(served.values()) == 24 and len(served) == 3
    assert traffic_done <= sample_time(second), "the requests took longer than the interval: the test cannot tell"
    assert all(r["deltaPackets"] == 0 for r in first["rows"])  # the baseline
    shown = endpoint_rows(second, sc.CONTROL_PLANE)  # net-pod runs on the control plane
    assert set(shown) == {"webpod-1", "webpod-2", "webpod-3"}
    assert {pod: row["deltaPackets"] for pod, row in shown.items() if row["deltaPackets"]} == served
    for node in (sc.WORKER, sc.WORKER2, sc.WORKER3):
        assert all(r["deltaPackets"] == 0 for r in endpoint_rows(second, node).values())
    execs = [r for r in server.requests if r.path.endswith("/exec")]
    assert execs and not any(r.query["command"].split()[0] in SHELLS for r in execs)  # argv only, never a shell
    samples = [r for r in execs if " -S " in r.query["command"]]
    assert samples and all(r.query["command"].startswith("iptables-nft -w 5 -t ") and r.query["command"].endswith(" -v")
                           for r in samples)
