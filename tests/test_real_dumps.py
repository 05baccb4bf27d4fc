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
                  r" ([^|]+) \| ([^|]+) \|", re.M)
_SHARE = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d+) (\d+)%")


def hand_answers(dump: Path) -> list[tuple]:
    text = (dump / "ORIGIN.md").read_text()
    rows, masquerade = [], None
    for m in _ROW.finditer(text):
        masquerade = _masquerade_words(m.group(8), masquerade)
        rows.append((m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(6),
                     {(ip, int(port)): int(pct) / 100 for ip, port, pct in _SHARE.findall(m.group(7))}, masquerade))
    return rows


def _masquerade_words(words: str, previous: str | None) -> str:
    """The table's masquerade column in explain's terms: "never", "when src ∉ CIDR" (conditional), "same"."""
    words = words.strip()
    if words.startswith("same"):
        return previous
    return "never" if words.startswith("never") else "conditional" if words.startswith("when src") else words


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: p.name)
def test_read_verbatim_never_refused(dump):
    source = str(dump / "source.txt")
    for command in (["nodes"], ["check"]):
        r = run_cli(*command, "--bundle", source)
        assert r.exit_code in (0, 1), (command, r.stderr)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("dump", [d for d in DUMPS if hand_answers(d)], ids=lambda p: p.name)
def test_explain_ties_each_service_port_and_gives_the_hand_worked_shares(dump):
    for service, port_name, ip, port, chain, shares, masquerade in hand_answers(dump):
        r = run_cli("explain", service, "--bundle", str(dump / "source.txt"), "-o", "json")
        assert r.exit_code == 0, (service, r.stderr)
        (found,) = [p for p in r.json()["ports"] if (p["name"] or None) == port_name]
        assert found["chains"]["svc"] == chain, service
        (entry,) = [e for n in found["nodes"] for e in n["entries"] if e["kind"] == "clusterIP"]
        assert entry["destination"] == f"{ip}:{port}"
        got = {(e["ip"], e["port"]): round(e["probability"], 2) for e in entry["endpoints"]}
        assert got == shares, service
        assert entry["masquerade"] == masquerade, service


@pytest.mark.parametrize("dump", [d for d in DUMPS if "Expected findings: none" in (d / "ORIGIN.md").read_text()],
                         ids=lambda p: p.name)
def test_check_finds_nothing_where_the_hand_answer_is_none(dump):
    r = run_cli("check", "--bundle", str(dump / "source.txt"), "-o", "json")
    assert r.exit_code == 0, r.stdout
    assert [f["id"] for f in r.json()["findings"] if f["severity"] != "info"] == []


def _dump(name: str) -> Path:
    path = REAL_DUMPS / name / "source.txt"
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    return path


def _entries(doc: dict) -> dict[str, dict]:
    return {e["kind"]: e for p in doc["ports"] for n in p["nodes"] for e in n["entries"]}


# The hand answers of the dumps whose ORIGIN.md says them in prose rather than in a table.
def test_kind_etp_local_grep_pre_124_layout():
    path = str(_dump("kind-etp-local-xlb-grep"))
    r = run_cli("explain", "test-svc", "--bundle", path, "-o", "json")
    assert r.exit_code == 0, r.stderr
    entries = _entries(r.json())
    cluster = entries["clusterIP"]
    assert cluster["destination"] == "10.96.115.88:80" and cluster["masquerade"] == "conditional"
    assert sorted((e["ip"], round(e["probability"], 2)) for e in cluster["endpoints"]) == [
        ("10.244.1.3", 0.5), ("10.244.2.3", 0.5)]
    node_port = entries["nodePort"]
    assert node_port["destination"] == ":32070" and node_port["verdict"] == "drop"
    by_class = {c["clients"]: c for c in node_port["clients"]}
    assert by_class["the node itself"]["masquerade"] and "localhost (127.0.0.0/8)" in by_class
    assert [f["id"] for f in r.json()["findings"]] == ["etp-local-no-local-endpoints"]
    checked = run_cli("check", "--bundle", path, "-o", "json").json()
    assert [f["id"] for f in checked["findings"]] == ["etp-local-no-local-endpoints"]
    trace = run_cli("trace", "--dst", "10.96.115.88:80", "--src", "192.168.1.5", "--bundle", path, "-o", "json").json()
    assert trace["masquerade"] is True and trace["partial"]  # never "no SNAT" from bodies it has not seen


def test_k3s_metallb_per_chain_listings():
    path = str(_dump("k3s-metallb-etp-local-S-v"))
    r = run_cli("explain", "nginx-mlb-l2-service", "--bundle", path, "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert "listed twice with different rules" in r.stderr and "a partial dump" in r.stderr
    entries = _entries(r.json())
    cluster = entries["clusterIP"]
    assert cluster["destination"] == "10.43.159.55:80" and cluster["masquerade"] == "conditional"
    assert sorted(e["ip"] for e in cluster["endpoints"]) == [
        "10.42.0.25", "10.42.0.26", "10.42.1.20", "10.42.1.21", "10.42.2.21", "10.42.2.22"]
    assert {round(e["probability"], 3) for e in cluster["endpoints"]} == {0.167}
    external = entries["external"]  # KUBE-EXT as last listed: Local policy, client IP kept, the two local pods
    assert external["masquerade"] == "never"
    assert sorted((e["ip"], round(e["probability"], 2)) for e in external["endpoints"]) == [
        ("10.42.0.25", 0.5), ("10.42.0.26", 0.5)]
    assert run_cli("check", "--bundle", path, "-o", "json").json()["findings"] == []


def test_k3s_grep_pastes_three_even_endpoints():
    r = run_cli("explain", "nginx-service", "--bundle", str(_dump("k3s-clusterip-grep-pastes")), "-o", "json")
    assert r.exit_code == 0, r.stderr
    cluster = _entries(r.json())["clusterIP"]
    assert cluster["destination"] == "10.43.180.238:80" and cluster["masquerade"] == "conditional"
    assert sorted((e["ip"], round(e["probability"], 3)) for e in cluster["endpoints"]) == [
        ("10.42.0.8", 0.333), ("10.42.1.2", 0.333), ("10.42.2.2", 0.333)]


def test_preflannel_dump_invents_no_kube_dns():
    path = str(_dump("kubeadm-preflannel-save-noheader"))
    r = run_cli("explain", "kube-dns", "-n", "kube-system", "--bundle", path)
    assert r.exit_code == 2 and "no service kube-system/kube-dns" in r.stderr
    doc = run_cli("explain", "kubernetes", "--bundle", path, "-o", "json").json()
    cluster = _entries(doc)["clusterIP"]
    assert [(e["ip"], e["port"], round(e["probability"], 2)) for e in cluster["endpoints"]] == [
        ("192.168.20.100", 6443, 1.0)]
    assert cluster["masquerade"] == "conditional"


def test_cilium_node_is_a_replaced_kube_proxy():
    path = str(_dump("cilium-kpr-nat-S"))
    doc = run_cli("check", "--bundle", path, "-o", "json").json()
    assert [(f["id"], f["severity"]) for f in doc["findings"]] == [("kube-proxy-replaced", "info")]
    r = run_cli("explain", "anything", "--bundle", path)
    assert r.exit_code == 2 and "kube-proxy is replaced (Cilium" in r.stderr
