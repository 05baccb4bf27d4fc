"""--debug-pod's pure parts: the helper pod's manifest (least privilege, pinned, every taint tolerated, argv), its
name, which pods are leftovers, the separate RBAC block, and that without the flag nothing is asked for. The real
create/exec/delete against the stand-in API server is tests/lab/test_api_debug_pod.py."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from svcdoctor.collect import debug_pods, rbac
from svcdoctor.collect.debug_pods import DebugPodOptions

from cli_run import run_cli  # noqa: E402 - tests/ is on sys.path (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_the_helper_pod_has_the_least_privilege_that_reads_rules():
    pod = debug_pods.manifest("svcdoctor-debug-n1-abcde", "n1", DebugPodOptions("img:1", "tools", "regcred"), 120, NOW)
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["namespace"] == "tools"
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "svcdoctor",
                                         "app.kubernetes.io/component": "debug-pod"}
    assert pod["metadata"]["annotations"][debug_pods.LEASE_ANNOTATION] == "2024-05-01T12:02:00Z"
    assert spec["nodeName"] == "n1" and spec["hostNetwork"] is True and spec["restartPolicy"] == "Never"
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every taint, NoExecute included
    assert spec["activeDeadlineSeconds"] == 120 and spec["automountServiceAccountToken"] is False
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["image"] == "img:1" and container["command"] == ["sleep", "120"]  # argv, no shell
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert "hostPID" not in spec and "volumes" not in spec
    plain = debug_pods.manifest("x", "n1", DebugPodOptions("img:1"), 120, NOW)
    assert "imagePullSecrets" not in plain["spec"] and plain["metadata"]["namespace"] == "default"


def test_names_are_dns_labels_and_unique():
    names = {debug_pods.pod_name("Node_With.Odd-NAME-" + "x" * 80) for _ in range(20)}
    assert len(names) == 20
    assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", n) for n in names)


def _pod(created: datetime, lease: datetime | None) -> dict:
    annotations = {debug_pods.LEASE_ANNOTATION: lease.strftime("%Y-%m-%dT%H:%M:%SZ")} if lease else {}
    return {"metadata": {"name": "p", "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "annotations": annotations}}


def test_leftovers_are_older_than_the_run_and_past_their_lease():
    assert debug_pods.is_leftover(_pod(NOW - timedelta(hours=1), NOW - timedelta(minutes=58)), NOW)
    assert debug_pods.is_leftover(_pod(NOW - timedelta(hours=1), None), NOW)  # no lease: an old pod is a leftover
    # another run's pod, still within its lease: maybe in use
    assert not debug_pods.is_leftover(_pod(NOW - timedelta(seconds=20), NOW + timedelta(seconds=100)), NOW)
    assert not debug_pods.is_leftover(_pod(NOW + timedelta(seconds=1), None), NOW)  # this run's own


def test_start_problems_are_named():
    pulling = {"status": {"phase": "Pending", "containerStatuses": [
        {"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}
    assert debug_pods.start_problem(pulling) == "ErrImagePull: not found"
    assert debug_pods.start_problem({"status": {"phase": "Pending"}}) is None
    assert debug_pods.start_problem({"status": {"phase": "Failed", "reason": "DeadlineExceeded"}}).startswith("it ended")
    running = {"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}}
    assert debug_pods.is_running(running) and not debug_pods.is_running(pulling)


def test_the_debug_grants_are_a_separate_block_of_the_rbac_page():
    page = (ROOT / "docs/reference/rbac.md").read_text()
    read_only, debug = page.split("## Only for --debug-pod", 1)
    block = debug.split("```yaml", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("- {apiGroups")]
    assert sorted(lines) == sorted(line for _verbs, line, _scope in rbac.DEBUG_GRANTS.values())
    assert '"delete"' not in read_only and '"create"' not in read_only.split("```yaml", 1)[1].split("```")[0].replace(
        '["get", "create"]', "")  # the read-only manifest's only `create` is pods/exec's (SPDY)
    text = rbac.forbidden("create", "pods", namespace="default", server_message="no")
    assert 'verbs: ["create", "delete", "get"]' in text and "svcdoctor-debug" in text


def test_debug_options_need_the_flag_and_the_api():
    result = run_cli("nodes", "--demo", "--image-pull-secret", "x")
    assert result.exit_code == 2 and "go with --debug-pod" in result.stderr
    from svcdoctor.collect import live
    from svcdoctor.errors import UsageError

    import pytest

    with pytest.raises(UsageError, match="--debug-pod reads nodes through the API"):
        live.collect_live(cluster="nope", via="docker",
                          api_read=live.ApiReadOptions(debug_pod=DebugPodOptions("img")))
