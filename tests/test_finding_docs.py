"""Findings say the fix (issue #11): every catalogued id has a one-line fix and a section in
docs/reference/findings.md, shown in the human views and in JSON (`fix`, `doc`, `runbook`)."""

from pathlib import Path

from cli_run import run_cli
from svcdoctor.checks.findings import CATALOGUE
from svcdoctor.finding_docs import FIXES, doc_of, fix_of, runbook_of

ROOT = Path(__file__).resolve().parent.parent


def test_every_catalogued_finding_has_a_fix_and_a_section():
    page = (ROOT / "docs" / "reference" / "findings.md").read_text()
    for fid in CATALOGUE:
        assert fix_of(fid), fid
        assert f'<a id="{fid}"></a>' in page, fid
        assert doc_of(fid) == f"docs/reference/findings.md#{fid}"
    assert set(FIXES) <= set(CATALOGUE)  # no fix for an id that does not exist


def test_every_runbook_named_exists():
    for fid in FIXES:
        runbook = runbook_of(fid)
        assert runbook is None or (ROOT / runbook).is_file(), runbook


def test_fixes_are_one_line():
    assert all("\n" not in fix and len(fix) < 220 for fix, _ in FIXES.values())


def test_check_and_explain_say_the_fix():
    check = run_cli("check", "--demo")
    line = next(x for x in check.stdout.splitlines() if "etp-local-no-local-endpoints" in x)
    assert "→ fix: " in line and "docs/reference/findings.md#etp-local-no-local-endpoints" in line
    explain = run_cli("explain", "svc-local", "--demo").stdout
    assert "      fix: send external clients" in explain
    for args in (["check"], ["explain", "svc-local"]):
        for f in run_cli(*args, "--demo", "-o", "json").json()["findings"]:
            assert f["fix"] == fix_of(f["id"]) and f["doc"] == doc_of(f["id"])
            assert f["runbook"] == "docs/runbooks/nodeport-works-on-some-nodes-only.md"
