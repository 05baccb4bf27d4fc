"""The pure parts of reading nodes through the Kubernetes API: the RBAC page against the code's grants, finding each
node's kube-proxy pod (and naming why there is none), sampling nodes, the exec status, the auto choice of door.
The real exec path (the kubernetes client's WebSocket against the stand-in API server) is tests/lab/test_api_exec.py."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from svcdoctor.collect import api_nodes, live, pod_exec, proxy_pods, rbac
from svcdoctor.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_every_grant_is_a_line_of_the_manifest_and_nothing_more():
    page = (ROOT / "docs/reference/rbac.md").read_text()
    manifest = page.split("```yaml", 1)[1].split("```", 1)[0]
    rules = [line for line in manifest.splitlines() if line.startswith("- {apiGroups")]
    assert sorted(rules) == sorted(line for _verbs, line, _scope in rbac.GRANTS.values())
    assert "nodes/proxy" not in manifest and not re.search(r'"(update|patch|delete|deletecollection)"', manifest)


def test_forbidden_names_verb_resource_and_manifest_line():
    text = rbac.forbidden("list", "nodes", server_message="nodes is forbidden")
    assert "`list` on `nodes`" in text and 'resources: ["nodes"], verbs: ["list"]' in text
    assert "nodes is forbidden" in text


def _pod(name, node, phase="Running", waiting=None, containers=("kube-proxy",)):
    status = {"phase": phase}
    if waiting:
        status["containerStatuses"] = [{"name": "kube-proxy", "state": {"waiting": {"reason": waiting}}}]
    return {"metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"nodeName": node, "containers": [{"name": c} for c in containers]}, "status": status}


def test_proxy_pods_and_reasons():
    pods = [_pod("kp-a", "a"), _pod("kp-b", "b", phase="Pending"), _pod("kp-c", "c", waiting="CrashLoopBackOff"),
            _pod("kp-f", "f", containers=("sidecar", "kube-proxy"))]
    cilium = [_pod("cilium-x1", "d"), _pod("anetd-9", "e")]
    found = proxy_pods.proxy_pods_by_node(pods, cilium, ["a", "b", "c", "d", "e", "f", "g"])
    assert found["a"].pod.name == "kp-a" and found["a"].pod.container == "kube-proxy"
    assert found["f"].pod.container == "kube-proxy"
    assert "is Pending" in found["b"].reason and "CrashLoopBackOff" in found["c"].reason
    assert "Cilium" in found["d"].reason and "GKE Dataplane V2" in found["e"].reason
    assert "no kube-proxy pod is scheduled" in found["g"].reason and "k3s" in found["g"].reason


def _nodes(spec: dict[tuple[str, str], int]) -> list[api_nodes.ApiNode]:
    out = []
    for (role, zone), count in spec.items():
        out += [api_nodes.ApiNode(f"{role}-{zone}-{i}", role, None, zone) for i in range(count)]
    return out


def test_sample_is_spread_over_role_and_zone():
    nodes = _nodes({("control-plane", "a"): 3, ("worker", "a"): 60, ("worker", "b"): 30, ("worker", "c"): 7})
    picked = api_nodes.select(nodes, None, 10, random.Random(1))
    assert len(picked) == 10
    groups = {(n.role, n.zone) for n in picked}
    assert groups == {("control-plane", "a"), ("worker", "a"), ("worker", "b"), ("worker", "c")}
    by_group = {g: sum((n.role, n.zone) == g for n in picked) for g in groups}
    assert by_group[("worker", "a")] > by_group[("worker", "b")] > by_group[("worker", "c")]
    assert api_nodes.select(nodes, None, 500) == nodes
    with pytest.raises(UsageError):
        api_nodes.select(nodes, ["nope"], None)


def test_exit_status_from_the_status_channel():
    assert pod_exec.exit_code(b'{"metadata":{},"status":"Success"}', "p") == 0
    failure = (b'{"status":"Failure","reason":"NonZeroExitCode",'
               b'"details":{"causes":[{"reason":"ExitCode","message":"3"}]}}')
    assert pod_exec.exit_code(failure, "p") == 3
    with pytest.raises(pod_exec.ExecFailed, match="without an exit status"):
        pod_exec.exit_code(b"", "p")
    with pytest.raises(pod_exec.ExecFailed, match="not found"):
        pod_exec.exit_code(b'{"status":"Failure","message":"exec: \\"sh\\": executable file not found"}', "p")


def test_exec_url_passes_argv_as_repeated_command_parameters():
    url = pod_exec.exec_url("https://h:6443", "kube-system", "kp", ["iptables-nft-save", "-c"], "kube-proxy")
    assert url.startswith("wss://h:6443/api/v1/namespaces/kube-system/pods/kp/exec?")
    assert "command=iptables-nft-save&command=-c" in url and "container=kube-proxy" in url


def test_auto_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert live.choose_via("auto", None, None, None) == "docker"  # no kubeconfig: the only kind cluster, as before
    assert live.choose_via("api", None, None, None) == "api"
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: prod\ncontexts: [{name: prod, context: {}}]\n")
    assert live.choose_via("auto", None, str(config), None) == "api"
    assert live.choose_via("auto", "myk8s", str(config), None) == "docker"
