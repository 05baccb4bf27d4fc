"""backend-mismatch and no-kube-proxy-rules from what collection recorded of both iptables backends."""

from cli_run import run_cli
from kube_proxy_cases import iter_cases
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture

CASE = next(c for c in iter_cases() if c.name.startswith("01-"))
KUBELET_ONLY = """*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
"""
EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


def check(tmp_path, main_text, other_text, backend="legacy", warnings=()):
    node = NodeCapture(name="n1", iptables_save=main_text, other_backend_save=other_text, backend=backend,
                       proxy_mode="iptables", warnings=list(warnings))
    write_bundle(ClusterSnapshot(cluster="c", nodes=[node]), tmp_path / "b")
    r = run_cli("check", "--bundle", str(tmp_path / "b"), "-o", "json")
    return r, {(f["id"], f["node"]) for f in r.json()["findings"]}


def test_kube_proxy_in_legacy_while_kubelet_is_in_nft(tmp_path):
    r, found = check(tmp_path, CASE.restore_text, KUBELET_ONLY,
                     warnings=["kube-proxy's rules are in the iptables-legacy backend"])
    assert ("backend-mismatch", "n1") in found and r.exit_code == 1


def test_kube_proxy_rules_in_both_backends(tmp_path):
    _, found = check(tmp_path, CASE.restore_text, CASE.restore_text, backend="nft")
    assert ("backend-mismatch", "n1") in found


def test_kube_proxy_rules_only_in_the_backend_not_used(tmp_path):
    _, found = check(tmp_path, EMPTY, CASE.restore_text, backend="nft")
    assert ("backend-mismatch", "n1") in found and ("no-kube-proxy-rules", "n1") not in found


def test_one_backend_everything_in_it_is_sound(tmp_path):
    _, found = check(tmp_path, CASE.restore_text + KUBELET_ONLY.replace("*nat", "*raw"), EMPTY, backend="nft")
    assert ("backend-mismatch", "n1") not in found


def test_no_rules_anywhere(tmp_path):
    _, found = check(tmp_path, EMPTY, EMPTY, backend="nft")
    assert ("no-kube-proxy-rules", "n1") in found and ("backend-mismatch", "n1") not in found
