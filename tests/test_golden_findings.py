"""`check`'s findings pinned per input, with the exit code: the demo bundle (with and without the API objects) and a
bundle of each of kube-proxy's own test cases. A change to the finding engine that changes what check reports on
any of them shows here as a diff. Refresh after an intended change with:
SVCDOCTOR_UPDATE_GOLDEN=1 pytest tests/test_golden_findings.py"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_run import run_cli
from kube_proxy_cases import case_bundle, iter_cases

GOLDEN = Path(__file__).resolve().parent / "golden" / "check-findings.json"
UPDATE = os.environ.get("SVCDOCTOR_UPDATE_GOLDEN") == "1"
CASES = [c for c in iter_cases() if c.api_objects().services]


def _checked(*args: str) -> dict:
    r = run_cli("check", *args, "-o", "json")
    assert r.exit_code in (0, 1), r.stderr
    findings = sorted((f["id"], f["severity"], f["node"] or "", f["service"] or "") for f in r.json()["findings"])
    return {"exit": r.exit_code, "findings": [list(f) for f in findings]}


def test_check_findings_match_golden(tmp_path):
    got = {"demo": _checked("--demo"), "demo --no-api": _checked("--demo", "--no-api")}
    for case in CASES:
        bundle = case_bundle(case, tmp_path / case.name)
        got[case.name] = _checked("--bundle", bundle)
        got[f"{case.name} --no-api"] = _checked("--bundle", bundle, "--no-api")
    if UPDATE or not GOLDEN.exists():
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        if not UPDATE:
            pytest.fail(f"{GOLDEN.name} was missing and has been written; check it and commit it")
    assert got == json.loads(GOLDEN.read_text())
