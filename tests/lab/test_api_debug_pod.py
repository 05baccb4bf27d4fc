"""--debug-pod against the stand-in API server (not a kube-apiserver): a node without a kube-proxy pod is read
through a helper pod the stand-in "schedules" on that lab node container (an exec into it runs there, on the
node's real rules), and the pod is gone afterwards — after success, after an error, and after Ctrl-C (SIGINT to a
real `python -m svcdoctor`); a leftover of a killed run is removed by the next run; without the flag nothing is
created (the stand-in records every create and delete)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from svcdoctor.collect import debug_pods
from svcdoctor.errors import ExitStatus

from . import scenario as sc
from .harness import REPO_ROOT
from .standin_apiserver import StandinApiServer
from .standin_exec import CUT, HANG, docker_runner

from cli_run import run_cli  # noqa: E402 - tests/ is on sys.path (tests/conftest.py)

IMAGE = "registry.k8s.io/kube-proxy:v1.28.0"
NO_PROXY_ON = sc.WORKER3  # the node whose kube-proxy pod is missing


@pytest.fixture
def standin(lab, docker_client, tmp_path):
    """start(**kwargs) -> (server, kubeconfig): the seed's objects, kube-proxy pods on every node but worker3."""
    servers = []

    def start(extra: list[dict] = (), **kwargs):
        objects = sc.seed_scenario().api_objects() + sc.kube_proxy_pods(skip=(NO_PROXY_ON,)) + list(extra)
        server = StandinApiServer(objects, exec_runner=docker_runner(docker_client), **kwargs).start()
        servers.append(server)
        path = tmp_path / f"kubeconfig-{len(servers)}"
        server.write_kubeconfig(path)
        doc = yaml.safe_load(path.read_text())
        doc["contexts"][0]["name"] = doc["current-context"] = "standin"  # not kind-NAME: read through the API
        path.write_text(yaml.safe_dump(doc))
        return server, str(path)

    yield start
    for server in servers:
        server.stop()


def _helpers(server) -> list[dict]:
    return server.pods_labelled(debug_pods.SELECTOR)


def _nodes(kubeconfig: str, *args: str):
    return run_cli("nodes", "--kubeconfig", kubeconfig, "-o", "json", *args)


def test_a_node_without_kube_proxy_is_read_through_a_debug_pod_that_is_then_deleted(standin):
    server, kubeconfig = standin(pod_start_seconds=0.3)
    result = _nodes(kubeconfig, "--debug-pod", IMAGE)
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in result.json()["nodes"]}
    row = rows[NO_PROXY_ON]
    assert row["readFrom"].startswith("debug pod default/svcdoctor-debug-myk8s-worker3-") and IMAGE in row["readFrom"]
    assert row["readVia"] == "pods/exec" and row["backend"] == "nft" and row["rules"] > 20
    assert all(r["readFrom"].startswith("pod kube-system/kube-proxy-") for n, r in rows.items() if n != NO_PROXY_ON)
    (created,) = server.created
    assert created["spec"]["nodeName"] == NO_PROXY_ON and created["spec"]["hostNetwork"] is True
    assert created["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert server.deleted == [f"default/{created['metadata']['name']}"] and not _helpers(server)


def test_explain_through_a_debug_pod_equals_explain_through_docker(standin, tmp_path):
    server, kubeconfig = standin()
    kind_config = str(server.write_kubeconfig(tmp_path / "kind-kubeconfig"))
    for service in ("svc-nodeport", "svc-nodeport-local"):
        api = run_cli("explain", service, "--kubeconfig", kubeconfig, "--debug-pod", IMAGE, "-o", "json")
        docker = run_cli("explain", service, "--kubeconfig", kind_config, "--via", "docker", "-o", "json")
        assert api.exit_code == docker.exit_code == 0, api.stderr + docker.stderr
        assert api.json()["ports"] == docker.json()["ports"], service
    assert len(server.created) == 2 and not _helpers(server)


def test_without_the_flag_nothing_is_created(standin):
    server, kubeconfig = standin()
    result = _nodes(kubeconfig)
    assert result.exit_code == ExitStatus.PARTIAL and "no kube-proxy pod is scheduled" in result.stderr
    assert server.created == [] and server.deleted == []
    assert {r.method for r in server.requests} == {"GET"}  # not one write of any kind


def test_the_pod_is_deleted_after_an_error(standin):
    server, kubeconfig = standin()
    server.exec_faults.by_node[NO_PROXY_ON] = CUT  # the exec into the debug pod breaks, twice
    result = _nodes(kubeconfig, "--debug-pod", IMAGE)
    assert result.exit_code == ExitStatus.PARTIAL and NO_PROXY_ON in result.stderr
    assert len(server.created) == 1 and len(server.deleted) == 1 and not _helpers(server)


def test_an_image_that_cannot_be_pulled_is_named_and_the_pod_deleted(standin):
    server, kubeconfig = standin()
    result = _nodes(kubeconfig, "--debug-pod", "standin.invalid/pull-fails")
    assert result.exit_code == ExitStatus.PARTIAL
    assert "ErrImagePull" in result.stderr and "no kube-proxy pod is scheduled" in result.stderr
    assert len(server.created) == 1 and len(server.deleted) == 1 and not _helpers(server)


def test_ctrl_c_deletes_the_pod(standin):
    server, kubeconfig = standin(hang_seconds=30)
    server.exec_faults.by_node[NO_PROXY_ON] = HANG  # the read through the debug pod never ends by itself
    proc = subprocess.Popen([sys.executable, "-m", "svcdoctor", "nodes", "--kubeconfig", kubeconfig, "--debug-pod",
                             IMAGE, "-o", "json"], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _exec_into_helper(server):  # the pod exists and is being read
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        while server.deleted == [] and time.monotonic() - interrupted < 5:
            time.sleep(0.05)
        deleted_after = time.monotonic() - interrupted
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert deleted_after < 3, "the pod was not deleted at once on Ctrl-C"
    assert server.deleted == [f"default/{server.created[0]['metadata']['name']}"] and not _helpers(server)
    assert "Traceback" not in err


def _exec_into_helper(server) -> bool:
    names = {p["metadata"]["name"] for p in server.created}
    return any(r.path.endswith("/exec") and r.path.split("/")[-2] in names for r in list(server.requests))


def _leftover(name: str, age: timedelta, lease_left: timedelta) -> dict:
    now = datetime.now(timezone.utc)
    pod = debug_pods.manifest(name, sc.WORKER, debug_pods.DebugPodOptions(IMAGE), 60, now - age)
    pod["metadata"]["creationTimestamp"] = (now - age).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["metadata"]["annotations"][debug_pods.LEASE_ANNOTATION] = (now + lease_left).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["status"] = {"phase": "Failed", "reason": "DeadlineExceeded"}
    return pod


def test_a_leftover_of_a_killed_run_is_removed_by_the_next_run(standin):
    killed = _leftover("svcdoctor-debug-myk8s-worker-old01", timedelta(hours=2), -timedelta(hours=1))
    in_use = _leftover("svcdoctor-debug-myk8s-worker-busy1", timedelta(seconds=20), timedelta(minutes=2))
    server, kubeconfig = standin(extra=[killed, in_use])
    result = _nodes(kubeconfig, "--debug-pod", IMAGE)
    assert result.exit_code == 0, result.stderr
    assert "removed leftover debug pod default/svcdoctor-debug-myk8s-worker-old01" in result.stderr
    assert "svcdoctor-debug-myk8s-worker-busy1 of another svcdoctor run is still within its lease" in result.stderr
    assert [p["metadata"]["name"] for p in _helpers(server)] == ["svcdoctor-debug-myk8s-worker-busy1"]
    assert "default/svcdoctor-debug-myk8s-worker-old01" in server.deleted
