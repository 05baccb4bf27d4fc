"""Dumps people pasted in public write-ups, run verbatim as a support engineer would (`--bundle source.txt`).

They live outside the repository (public material to run, not to copy): /work/shared/reference/real-dumps, each
`<name>/source.txt` with `<name>/ORIGIN.md` holding the answer worked out by hand. The tests read the table of
service ports in ORIGIN.md (entry, chain, endpoints with their shares) and compare explain's answer with it; where
ORIGIN.md says "Expected findings: none", `check` must find nothing. Skipped (with the reason) where the folder is
absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_run import run_cli

REAL_DUMPS = Path("/work/shared/reference/real-dumps")
DUMPS = sorted(p.parent for p in REAL_DUMPS.glob("*/source.txt")) if REAL_DUMPS.is_dir() else []
pytestmark = pytest.mark.skipif(not DUMPS, reason=f"{REAL_DUMPS} is not on this machine")

_ROW = re.compile(r"^\| (\S+/\S+?)(?::(\S+))?(?: \(unnamed port\))? \| (\S+):(\d+)/(TCP|UDP|SCTP) \| (KUBE-SVC-\w{16}) \|"
                  r" ([^|]+) \|", re.M)
_SHARE = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+) (\d+)%")


def hand_answers(dump: Path) -> list[tuple]:
    text = (dump / "ORIGIN.md").read_text()
    return [(m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(6),
             {(ip, int(port)): int(pct) / 100 for ip, port, pct in _SHARE.findall(m.group(7))})
            for m in _ROW.finditer(text)]


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.name)
def test_read_verbatim_never_refused(dump):
    source = str(dump / "source.txt")
    for command in (["nodes"], ["check"]):
        r = run_cli(*command, "--bundle", source)
        assert r.exit_code in (0, 1), (command, r.stderr)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("dump", [d for d in DUMPS if hand_answers(d)], ids=lambda p: p.name)
def test_explain_ties_each_service_port_and_gives_the_hand_worked_shares(dump):
    for service, port_name, ip, port, chain, shares in hand_answers(dump):
        r = run_cli("explain", service, "--bundle", str(dump / "source.txt"), "-o", "json")
        assert r.exit_code == 0, (service, r.stderr)
        (found,) = [p for p in r.json()["ports"] if (p["name"] or None) == port_name]
        assert found["chains"]["svc"] == chain, service
        (entry,) = [e for n in found["nodes"] for e in n["entries"] if e["kind"] == "clusterIP"]
        assert entry["destination"] == f"{ip}:{port}"
        got = {(e["ip"], e["port"]): round(e["probability"], 2) for e in entry["endpoints"]}
        assert got == shares, service


@pytest.mark.parametrize("dump", [d for d in DUMPS if "Expected findings: none" in (d / "ORIGIN.md").read_text()],
                         ids=lambda p: p.name)
def test_check_finds_nothing_where_the_hand_answer_is_none(dump):
    r = run_cli("check", "--bundle", str(dump / "source.txt"), "-o", "json")
    assert r.exit_code == 0, r.stdout
    assert [f["id"] for f in r.json()["findings"] if f["severity"] != "info"] == []
