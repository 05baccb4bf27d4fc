"""Nodes read through the Kubernetes API: the real `kubernetes` client's WebSocket exec (and `kubectl`) against the
stand-in API server, whose `pods/exec` runs each argv in the lab node container of the kube-proxy pod (docker
exec, no shell), on the lab's real rules. The stand-in is not a kube-apiserver (tests/lab/standin_exec.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pytest
import yaml

from svcdoctor.collect import api_nodes, live, pod_exec
from svcdoctor.collect.kube_api import open_session
from svcdoctor.errors import ExitStatus

from . import scenario as sc
from .standin_apiserver import FORBIDDEN_TOKEN, StandinApiServer
from .standin_exec import CUT, HANG, NO_SHELL, V4, V5, docker_runner

from cli_run import run_cli  # noqa: E402 - tests/ is on sys.path (tests/conftest.py)


def _proxy_pod(node: str) -> str:
    return next(p["metadata"]["name"] for p in sc.kube_proxy_pods() if p["spec"]["nodeName"] == node)


def _kubeconfig(server: StandinApiServer, path, context: str = "standin", token: str | None = None) -> str:
    """A kubeconfig whose context is not kind-NAME: svcdoctor's auto choice then goes through the API."""
    server.write_kubeconfig(path, token=token) if token else server.write_kubeconfig(path)
    doc = yaml.safe_load(path.read_text())
    doc["contexts"][0]["name"] = context
    doc["current-context"] = context
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def standin_exec(lab, docker_client, tmp_path):
    """start(**kwargs) -> (server, kubeconfig path): the seed's objects, the kube-proxy pods, exec into the lab."""
    servers = []

    def start(extra=None, **kwargs):
        objects = sc.seed_scenario().api_objects() + (sc.kube_proxy_pods() if extra is None else extra)
        server = StandinApiServer(objects, exec_runner=docker_runner(docker_client), **kwargs).start()
        servers.append(server)
        return server, _kubeconfig(server, tmp_path / f"kubeconfig-{len(servers)}")

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("protocol", [V5, V4])
def test_exec_keeps_stdout_stderr_and_exit_status_apart(standin_exec, protocol):
    server, kubeconfig = standin_exec(exec_protocols=(protocol,))
    session = open_session(kubeconfig)
    pod = _proxy_pod(sc.WORKER)
    ok = pod_exec.exec_in_pod(session, "kube-system", pod, ["iptables-nft-save", "-c", "-t", "nat"], timeout=10)
    assert ok.exit_code == 0 and b"KUBE-SERVICES" in ok.output[0] and b"COMMIT" in ok.output[0]
    bad = pod_exec.exec_in_pod(session, "kube-system", pod, ["iptables-nft-save", "-t", "no-such-table"], timeout=10)
    assert bad.exit_code != 0 and bad.output[0] == b"" and b"no-such-table" in bad.output[1]
    assert server.exec_counter.total == 2 and _settles(lambda: server.exec_counter.active == 0)


def _settles(condition, seconds: float = 3.0) -> bool:
    """The stand-in finishes its side (the close handshake) a moment after the client has its answer."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_byte_limit(standin_exec):
    _server, kubeconfig = standin_exec()
    with pytest.raises(pod_exec.ExecFailed, match="more than 1000 bytes"):
        pod_exec.exec_in_pod(open_session(kubeconfig), "kube-system", _proxy_pod(sc.WORKER),
                             ["iptables-nft-save", "-c"], timeout=10, max_bytes=1000)


def _filler_services(count: int = 200) -> list[dict]:
    """Services of their own namespace, headless and without endpoints: they make the cluster big enough for
    `explain` to read each node's service chains only, and change no rule."""
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "filler", "name": f"filler-{i}"},
             "spec": {"type": "ClusterIP", "clusterIP": "None", "ports": [{"port": 80, "protocol": "TCP"}]}}
            for i in range(count)]


def _explain(kubeconfig: str, via: str, service: str = "svc-nodeport") -> dict:
    result = run_cli("explain", service, "--kubeconfig", kubeconfig, "--via", via, "-o", "json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_explain_through_the_api_equals_explain_through_docker(standin_exec, tmp_path):
    server, kubeconfig = standin_exec()
    kind_config = str(server.write_kubeconfig(tmp_path / "kind-kubeconfig"))  # context kind-myk8s
    # svc-nodeport is the default; svc-nodeport-local has no pod on worker3 (its NodePort drops there)
    for service in ("svc-nodeport", "svc-nodeport-local", "svc-affinity"):
        through_api = _explain(kubeconfig, "api", service)
        through_docker = _explain(kind_config, "docker", service)
        assert through_api["ports"] == through_docker["ports"], service
    assert server.exec_counter.total >= len(sc.NODES) * 2  # nft and legacy per node at least


def test_auto_choice_and_nodes_show_how_each_node_was_read(standin_exec, tmp_path):
    server, kubeconfig = standin_exec()
    via_api = run_cli("nodes", "--kubeconfig", kubeconfig, "-o", "json")  # context "standin": not kind
    assert via_api.exit_code == 0, via_api.stderr
    rows = {r["name"]: r for r in via_api.json()["nodes"]}
    assert set(rows) == {n.name for n in sc.NODES}
    assert all(r["readVia"] == "pods/exec" and r["readFrom"].startswith("pod kube-system/kube-proxy-")
               for r in rows.values())
    assert all(r["backend"] == "nft" and r["rules"] > 20 for r in rows.values())
    kind_config = str(server.write_kubeconfig(tmp_path / "kind-kubeconfig"))  # kind-myk8s, running here
    via_docker = run_cli("nodes", "--kubeconfig", kind_config, "-o", "json")
    assert {r["readVia"] for r in via_docker.json()["nodes"]} == {"docker exec"}


def test_collect_through_the_api_writes_how_each_node_was_read(standin_exec, tmp_path):
    _server, kubeconfig = standin_exec()
    out = tmp_path / "bundle"
    result = run_cli("collect", "--kubeconfig", kubeconfig, "--out", str(out))
    assert result.exit_code == 0, result.stderr
    meta = json.loads((out / "nodes" / sc.WORKER2 / "node.json").read_text())
    assert meta["readVia"] == "pods/exec" and meta["readFrom"] == f"pod kube-system/{_proxy_pod(sc.WORKER2)}"
    assert meta["backend"] == "nft" and (out / "nodes" / sc.WORKER2 / "iptables.txt").read_text().count("KUBE-SEP") > 5
    again = run_cli("nodes", "--bundle", str(out), "-o", "json")
    assert {r["readVia"] for r in again.json()["nodes"]} == {"bundle (pods/exec)"}


def test_legacy_node_through_the_api(standin_exec, planted):
    planted(sc.WORKER3, sc.LEGACY)
    _server, kubeconfig = standin_exec()
    result = run_cli("nodes", "--kubeconfig", kubeconfig, "-o", "json")
    rows = {r["name"]: r for r in result.json()["nodes"]}
    assert rows[sc.WORKER3]["backend"] == "legacy" and rows[sc.WORKER]["backend"] == "nft"


# --- faults: the node named, the others reported, the right exit status ----------------------------------------
def _read(kubeconfig: str, timeout: float = 2.0, **kwargs):
    return live.collect_live(kubeconfig=kubeconfig, via="api", timeout=timeout,
                             api_read=live.ApiReadOptions(**kwargs))


def _errors(snapshot) -> dict[str, str]:
    return {n.name: n.error for n in snapshot.nodes if n.error}


def test_exec_forbidden_on_one_node_names_the_grant(standin_exec):
    server, kubeconfig = standin_exec()
    server.exec_faults.forbidden.add(_proxy_pod(sc.WORKER))
    errors = _errors(_read(kubeconfig))
    assert list(errors) == [sc.WORKER]
    assert "`get and create` on `pods/exec`" in errors[sc.WORKER] and 'resources: ["pods/exec"]' in errors[sc.WORKER]
    result = run_cli("nodes", "--kubeconfig", kubeconfig)
    assert result.exit_code == ExitStatus.PARTIAL and sc.WORKER in result.stderr


def test_user_who_may_not_list_nodes_gets_the_manifest_line(standin_exec, tmp_path):
    server, _ = standin_exec()
    kubeconfig = _kubeconfig(server, tmp_path / "nobody", token=FORBIDDEN_TOKEN)
    result = run_cli("nodes", "--kubeconfig", kubeconfig)
    assert result.exit_code == ExitStatus.UNREACHABLE, result.stderr
    assert "`list` on `nodes`" in result.stderr and 'resources: ["nodes"], verbs: ["list"]' in result.stderr


def test_hung_exec_times_out_and_the_others_are_read(standin_exec):
    server, kubeconfig = standin_exec(hang_seconds=30)
    server.exec_faults.by_pod[_proxy_pod(sc.WORKER2)] = HANG
    snapshot = _read(kubeconfig, timeout=1.0)
    errors = _errors(snapshot)
    assert list(errors) == [sc.WORKER2] and "did not answer within 1s" in errors[sc.WORKER2]
    assert all(n.iptables_save for n in snapshot.nodes if n.name != sc.WORKER2)


def test_websocket_cut_mid_stream(standin_exec):
    server, kubeconfig = standin_exec()
    server.exec_faults.by_pod[_proxy_pod(sc.WORKER3)] = CUT
    errors = _errors(_read(kubeconfig))
    assert list(errors) == [sc.WORKER3] and "tried twice" in errors[sc.WORKER3]
    assert "broke" in errors[sc.WORKER3] or "without an exit status" in errors[sc.WORKER3]


def test_image_without_a_shell_is_read_with_argv_alone(standin_exec):
    server, kubeconfig = standin_exec()
    pod = _proxy_pod(sc.WORKER)
    server.exec_faults.by_pod[pod] = NO_SHELL
    with pytest.raises(pod_exec.ExecFailed, match="executable file not found"):  # the fault is real
        pod_exec.exec_in_pod(open_session(kubeconfig), "kube-system", pod, ["sh", "-c", "true"])
    assert not _errors(_read(kubeconfig))


def test_pod_not_running_and_kube_proxy_replaced_by_cilium(standin_exec):
    pods = sc.kube_proxy_pods(skip=(sc.WORKER3,), phases={sc.WORKER2: "Pending"}, cilium_on=(sc.WORKER3,))
    _server, kubeconfig = standin_exec(extra=pods)
    errors = _errors(_read(kubeconfig))
    assert set(errors) == {sc.WORKER2, sc.WORKER3}
    assert "is Pending" in errors[sc.WORKER2]
    assert "Cilium" in errors[sc.WORKER3]
    result = run_cli("explain", "svc-clusterip", "--kubeconfig", kubeconfig, "-o", "json")
    assert result.exit_code == ExitStatus.PARTIAL and "Cilium" in result.stderr
    assert {n["node"] for n in result.json()["ports"][0]["nodes"]} >= {sc.CONTROL_PLANE, sc.WORKER}


def test_never_more_open_execs_than_parallel(standin_exec):
    server, kubeconfig = standin_exec(exec_latency=0.2)
    _read(kubeconfig, parallel=2)
    assert server.exec_counter.peak <= 2 and server.exec_counter.total >= 8  # nft + ip6 per node


def test_node_selector_and_sample(standin_exec):
    _server, kubeconfig = standin_exec()
    only_cp = _read(kubeconfig, node_selector="node-role.kubernetes.io/control-plane")
    assert [n.name for n in only_cp.nodes] == [sc.CONTROL_PLANE]
    sampled = _read(kubeconfig, sample=2)
    roles = {n.role for n in sampled.nodes}
    assert len(sampled.nodes) == 2 and roles == {"control-plane", "worker"}  # one of each group


# --- kubectl, a second real client ----------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_lists_and_execs_against_the_standin(standin_exec):
    # kubectl sends its token over HTTPS only; it execs over WebSocket (v5) from 1.31 on, over SPDY before, which
    # the stand-in does not speak; this machine's kubectl picks its version from the server's /version
    _server, kubeconfig = standin_exec(tls=True, git_version="v1.32.0")
    env = {"KUBECONFIG": kubeconfig, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    listed = subprocess.run(["kubectl", "get", "pods", "-n", "kube-system", "-o", "name"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f"pod/{_proxy_pod(sc.WORKER)}" in listed.stdout.split()
    run = subprocess.run(["kubectl", "exec", "-n", "kube-system", _proxy_pod(sc.WORKER), "--",
                          "iptables-save", "-t", "nat"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "KUBE-SERVICES" in run.stdout and run.stdout.rstrip().endswith(("COMMIT", "")) and "*nat" in run.stdout


def test_interrupt_leaves_nothing_open(standin_exec):
    server, kubeconfig = standin_exec(exec_latency=0.3)
    session = open_session(kubeconfig)
    nodes = api_nodes.list_nodes(session, None)
    found = api_nodes.find_proxy_pods(session, nodes, "kube-system", "k8s-app=kube-proxy")
    cancel = threading.Event()
    cancel.set()  # as Ctrl-C leaves it: workers stop between execs
    captures = api_nodes.capture_nodes(session, nodes, found, parallel=4, timeout=5, cancel=cancel)
    assert all(c.error == "interrupted" for c in captures)
    assert _settles(lambda: server.exec_counter.active == 0)


def test_explain_reads_only_the_service_chains_through_the_api(standin_exec, tmp_path):
    """explain SERVICE moves the service's chains, not the whole dump (collect/api_scoped.py): no whole
    `iptables-nft-save -c`, a chain per exec, and the same explanation as through docker."""
    # 200 more Services (no endpoints, no rules): a cluster too big to read each node whole (live._few_services)
    server, kubeconfig = standin_exec(extra=sc.kube_proxy_pods() + _filler_services())
    kind_config = str(server.write_kubeconfig(tmp_path / "kind-kubeconfig"))
    through_api = _explain(kubeconfig, "api", "svc-nodeport")
    through_docker = _explain(kind_config, "docker", "svc-nodeport")
    commands = [r.query["command"] for r in server.requests if r.path.endswith("/exec")]
    assert "iptables-nft-save -c" not in commands and "iptables-legacy-save -c" not in commands
    assert sum(c == "iptables-nft -w 5 -t nat -S KUBE-SERVICES -v" for c in commands) == len(sc.NODES)
    assert any(c.startswith("iptables-nft -w 5 -t nat -S KUBE-SEP-") for c in commands)
    assert through_api["ports"] == through_docker["ports"]
    assert {k: v for k, v in through_api.items() if k not in ("ports", "source", "cluster", "collectedAt")} == {
        k: v for k, v in through_docker.items() if k not in ("ports", "source", "cluster", "collectedAt")}


def test_a_small_cluster_is_read_whole_one_exec_a_node(standin_exec, tmp_path):
    """A few Services: each node's whole dump is small, and one exec beats a dozen on thousands of nodes."""
    server, kubeconfig = standin_exec()
    through_api = _explain(kubeconfig, "api", "svc-nodeport")
    commands = [r.query["command"] for r in server.requests if r.path.endswith("/exec")]
    assert sum(c == "iptables-nft-save -c" for c in commands) == len(sc.NODES)
    assert not any(" -S KUBE-" in c for c in commands)
    assert through_api["ports"]


def test_a_legacy_node_is_read_whole_for_explain(standin_exec, planted):
    planted(sc.WORKER3, sc.LEGACY)
    server, kubeconfig = standin_exec(extra=sc.kube_proxy_pods() + _filler_services())
    result = run_cli("explain", "svc-nodeport", "--kubeconfig", kubeconfig, "-o", "json")
    assert result.exit_code == 0, result.stderr
    commands = [(r.path.split("/")[-2], r.query["command"]) for r in server.requests if r.path.endswith("/exec")]
    assert (_proxy_pod(sc.WORKER3), "iptables-legacy-save -c") in commands  # legacy tables: the whole read
    assert (_proxy_pod(sc.WORKER), "iptables-nft-save -c") not in commands
    assert sc.WORKER3 in {n["node"] for n in result.json()["ports"][0]["nodes"]}
