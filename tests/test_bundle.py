"""Bundles are untrusted input: read in memory, never extracted; traversal refused, links and devices ignored."""

import io
import json
import tarfile

import pytest

import svcdoctor.collect.bundle as bundle_mod
from cli_run import run_cli
from kube_proxy_cases import iter_cases
from svcdoctor.collect.bundle import load_input, write_bundle
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture
from svcdoctor.errors import InputError

CASE03 = next(c for c in iter_cases() if c.name.startswith("03-"))


def case_snapshot(case=CASE03) -> ClusterSnapshot:
    node = NodeCapture(name="node-a", iptables_save=case.restore_text, internal_ip=case.node_ip, backend="nft",
                       proxy_mode="iptables")
    return ClusterSnapshot(cluster="cases", nodes=[node], api=case.api_objects(), collected_at="2026-11-26T00:00:00Z")


def add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def good_members(tar, top="b/"):
    add(tar, top + "manifest.json", json.dumps({"format": "svcdoctor-bundle/v1", "cluster": "x",
                                                "nodes": ["node-a"]}).encode())
    add(tar, top + "nodes/node-a/iptables.txt", CASE03.restore_text.encode())


def test_directory_and_tar_gz_round_trip(tmp_path):
    for out in (tmp_path / "dir", tmp_path / "b.tar.gz"):
        write_bundle(case_snapshot(), out)
        snap = load_input(out)
        assert [n.name for n in snap.nodes] == ["node-a"]
        assert snap.nodes[0].iptables_save == CASE03.restore_text
        assert snap.nodes[0].internal_ip == CASE03.node_ip
        assert snap.api.services == CASE03.items("services")
        assert snap.cluster == "cases"


def test_explain_reads_same_from_directory_and_archive(tmp_path):
    write_bundle(case_snapshot(), tmp_path / "dir")
    write_bundle(case_snapshot(), tmp_path / "b.tar.gz")
    a = run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(tmp_path / "dir"), "-o", "json").json()
    b = run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(tmp_path / "b.tar.gz"), "-o", "json").json()
    a.pop("source"), b.pop("source")
    assert a == b


def test_path_traversal_is_refused(tmp_path):
    p = tmp_path / "evil.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        good_members(tar)
        add(tar, "b/../../etc/evil", b"x")
    with pytest.raises(InputError, match="unsafe path"):
        load_input(p)
    r = run_cli("nodes", "--bundle", str(p))
    assert r.exit_code == 2 and "unsafe path" in r.stderr and "Traceback" not in r.stderr


def test_absolute_path_is_refused(tmp_path):
    p = tmp_path / "evil.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        good_members(tar)
        add(tar, "/tmp/evil", b"x")
    with pytest.raises(InputError, match="unsafe path"):
        load_input(p)


def test_links_and_devices_are_not_honoured(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("*nat\n-A KUBE-SERVICES -j KUBE-SVC-STOLENSTOLENSTOL\nCOMMIT\n")
    p = tmp_path / "links.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        add(tar, "b/manifest.json", json.dumps({"format": "svcdoctor-bundle/v1", "nodes": ["n1", "n2"]}).encode())
        add(tar, "b/nodes/n1/iptables.txt", kind=tarfile.SYMTYPE, linkname=str(secret))
        add(tar, "b/nodes/n2/iptables.txt", kind=tarfile.LNKTYPE, linkname="b/manifest.json")
        add(tar, "b/nodes/n3/iptables.txt", kind=tarfile.CHRTYPE)
        add(tar, "b/nodes/n4/iptables.txt", CASE03.restore_text.encode())
    snap = load_input(p)
    by_name = {n.name: n for n in snap.nodes}
    assert by_name["n1"].error and "STOLEN" not in by_name["n1"].iptables_save
    assert by_name["n2"].error
    assert by_name["n4"].iptables_save == CASE03.restore_text
    # nothing was written next to the archive
    assert sorted(x.name for x in tmp_path.iterdir()) == ["links.tar.gz", "secret.txt"]


def test_symlink_in_bundle_directory_is_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CASE03.restore_text)
    root = tmp_path / "b"
    (root / "nodes" / "n1").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"format": "svcdoctor-bundle/v1", "nodes": ["n1"]}))
    (root / "nodes" / "n1" / "iptables.txt").symlink_to(secret)
    snap = load_input(root)
    assert snap.nodes[0].error and not snap.nodes[0].iptables_save


def test_oversized_member_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_FILE_BYTES", 1000)
    p = tmp_path / "big.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        good_members(tar)
    with pytest.raises(InputError, match="limit"):
        load_input(p)


def test_too_many_members_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_MEMBERS", 5)
    p = tmp_path / "many.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        good_members(tar)
        for i in range(10):
            add(tar, f"b/junk/{i}", b"x")
    with pytest.raises(InputError, match="more than 5 files"):
        load_input(p)


def test_not_a_tar(tmp_path):
    p = tmp_path / "junk.tar.gz"
    p.write_bytes(b"\x1f\x8b\x08garbage")
    r = run_cli("nodes", "--bundle", str(p))
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_failed_node_in_bundle_is_named_and_rest_reported(tmp_path):
    snap = case_snapshot()
    snap.nodes.append(NodeCapture(name="node-b", error="container is not running"))
    write_bundle(snap, tmp_path / "b")
    r = run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(tmp_path / "b"), "-o", "json")
    assert r.exit_code == 4
    assert "node-b" in r.stderr and "container is not running" in r.stderr
    doc = r.json()
    assert doc["failedNodes"] == [{"node": "node-b", "reason": "container is not running"}]
    assert [n["node"] for n in doc["ports"][0]["nodes"]] == ["node-a"]
