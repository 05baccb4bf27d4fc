"""Golden files for what users read: the human views on the demo bundle, exactly as printed (120 columns, no
colour). Refresh after an intended change with: SVCDOCTOR_UPDATE_GOLDEN=1 pytest tests/test_golden.py"""

import os
from pathlib import Path

import pytest

from cli_run import run_cli

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("SVCDOCTOR_UPDATE_GOLDEN") == "1"

VIEWS = {
    "explain-svc-clusterip": ["explain", "svc-clusterip", "--demo"],
    "explain-svc-nodeport": ["explain", "svc-nodeport", "--demo"],
    "explain-svc-local": ["explain", "svc-local", "--demo"],
    "explain-svc-affinity-wide": ["explain", "svc-affinity", "--demo", "-o", "wide"],
    "explain-kube-dns-one-node": ["explain", "kube-dns", "-n", "kube-system", "--demo", "--node", "myk8s-worker"],
    "nodes": ["nodes", "--demo"],
    "check": ["check", "--demo"],
    "trace-nodeport-from-mypc": ["trace", "--dst", "172.18.0.3:32624", "--src", "172.18.0.100", "--node",
                                 "myk8s-worker", "--demo"],
    "graph-svc-clusterip-dot": ["graph", "svc-clusterip", "--demo", "--node", "myk8s-control-plane"],
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_view_matches_golden(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    result = run_cli(*VIEWS[name])
    assert "\x1b[" not in result.stdout
    path, exit_path = GOLDEN / f"{name}.txt", GOLDEN / f"{name}.exit"  # the view and the exit code it comes with
    if UPDATE or not path.exists() or not exit_path.exists():
        path.write_text(result.stdout)
        exit_path.write_text(f"{result.exit_code}\n")
        if not UPDATE:
            pytest.fail(f"golden file {path.name} was missing and has been written; check it and commit it")
    assert result.stdout == path.read_text()
    assert result.exit_code == int(exit_path.read_text()), result.stderr
