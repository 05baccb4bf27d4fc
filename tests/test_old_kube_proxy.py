"""Rules from kube-proxy before 1.24: externalTrafficPolicy Local lived in KUBE-XLB- chains that jumped straight
to the local endpoints (kubernetes PR #109060 replaced them by KUBE-EXT/KUBE-SVL), and a node without a local pod
sent external traffic to KUBE-MARK-DROP. Loaded into the kernel and dumped back, as a customer's node prints them."""

import pytest

from cli_run import run_cli
from netns import Namespace, require_netns
from svcdoctor.model.hashes import endpoint_chain, service_chain

SPN = "default/web:http"
SVC = service_chain("KUBE-SVC-", SPN, "tcp")
XLB = service_chain("KUBE-XLB-", SPN, "tcp")
SEP1 = endpoint_chain(SPN, "tcp", "10.244.1.5:8080")
SEP2 = endpoint_chain(SPN, "tcp", "10.244.2.6:8080")


def old_rules(local_pod: bool) -> str:
    last = (f'-A {XLB} -m comment --comment "Balancing rule 0 for {SPN}" -j {SEP1}' if local_pod else
            f'-A {XLB} -m comment --comment "{SPN} has no local endpoints" -j KUBE-MARK-DROP')
    return "\n".join([
        "*nat",
        ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-MARK-DROP - [0:0]",
        f":{SVC} - [0:0]", f":{XLB} - [0:0]", f":{SEP1} - [0:0]", f":{SEP2} - [0:0]",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000",
        f'-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "{SPN} cluster IP" -m tcp --dport 80 -j {SVC}',
        f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{SPN}" -m tcp --dport 30080 -j {XLB}',
        f'-A {SVC} ! -s 10.244.0.0/16 -d 10.96.0.20/32 -p tcp -m comment --comment "{SPN} cluster IP" -m tcp '
        f"--dport 80 -j KUBE-MARK-MASQ",
        f'-A {SVC} -m comment --comment "{SPN}" -m statistic --mode random --probability 0.5 -j {SEP1}',
        f'-A {SVC} -m comment --comment "{SPN}" -j {SEP2}',
        f'-A {XLB} -s 10.244.0.0/16 -m comment --comment "Redirect pods trying to reach external loadbalancer VIP '
        f'to clusterIP" -j {SVC}',
        f'-A {XLB} -m comment --comment "masquerade LOCAL traffic for {SPN} LB IP" -m addrtype --src-type LOCAL '
        f"-j KUBE-MARK-MASQ",
        f'-A {XLB} -m comment --comment "route LOCAL traffic for {SPN} LB IP to service chain" -m addrtype '
        f"--src-type LOCAL -j {SVC}",
        last,
        f'-A {SEP1} -s 10.244.1.5/32 -m comment --comment "{SPN}" -j KUBE-MARK-MASQ',
        f'-A {SEP1} -p tcp -m comment --comment "{SPN}" -m tcp -j DNAT --to-destination 10.244.1.5:8080',
        f'-A {SEP2} -s 10.244.2.6/32 -m comment --comment "{SPN}" -j KUBE-MARK-MASQ',
        f'-A {SEP2} -p tcp -m comment --comment "{SPN}" -m tcp -j DNAT --to-destination 10.244.2.6:8080',
        "COMMIT", "",
    ])


@pytest.mark.netns
@pytest.mark.parametrize("local_pod", [True, False], ids=["local-pod", "no-local-pod"])
def test_old_xlb_chains_explain(tmp_path, local_pod):
    require_netns()
    with Namespace() as ns:
        ns.restore(old_rules(local_pod))
        dump = ns.save(counters=True)
    path = tmp_path / "old-node.txt"
    path.write_text(dump)
    r = run_cli("explain", "web", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    entries = {e["kind"]: e for n in doc["ports"][0]["nodes"] for e in n["entries"]}
    assert [x["ip"] for x in entries["clusterIP"]["endpoints"]] == ["10.244.1.5", "10.244.2.6"]
    node_port = entries["nodePort"]
    assert node_port["path"] == ["KUBE-SERVICES", "KUBE-NODEPORTS", XLB]
    if local_pod:
        assert node_port["verdict"] == "dnat" and node_port["masquerade"] == "never"
        assert [x["ip"] for x in node_port["endpoints"]] == ["10.244.1.5"]
    else:
        assert node_port["verdict"] == "drop" and node_port["endpoints"] == []
        assert "KUBE-MARK-DROP" in node_port["blackholeRule"]
        assert [f["id"] for f in doc["findings"]] == ["etp-local-no-local-endpoints"]
    assert not [f for f in doc["findings"] if f["id"] == "hash-mismatch"]


def older_rules() -> str:
    """Before 1.24 the ClusterIP masquerade rule sat in KUBE-SERVICES, just ahead of the jump to KUBE-SVC (and the
    localhost NodePort one in KUBE-NODEPORTS), not inside KUBE-SVC."""
    text = old_rules(local_pod=False)
    inside = next(ln for ln in text.splitlines() if ln.startswith(f"-A {SVC} ! -s"))
    ahead = inside.replace(f"-A {SVC} ", "-A KUBE-SERVICES ", 1)
    jump = next(ln for ln in text.splitlines() if ln.startswith("-A KUBE-SERVICES -d 10.96.0.20/32"))
    local_masq = (f'-A KUBE-NODEPORTS -s 127.0.0.0/8 -p tcp -m comment --comment "{SPN}" -m tcp --dport 30080 '
                  "-j KUBE-MARK-MASQ")
    node_port = next(ln for ln in text.splitlines() if ln.startswith("-A KUBE-NODEPORTS"))
    text = text.replace(inside + "\n", "").replace(jump, ahead + "\n" + jump)
    return text.replace(node_port, local_masq + "\n" + node_port)


@pytest.mark.netns
def test_the_same_situation_explains_the_same_in_the_older_layout(tmp_path):
    require_netns()
    answers = {}
    for name, text in (("1.23", old_rules(local_pod=False)), ("older", older_rules())):
        with Namespace() as ns:
            ns.restore(text)
            dump = ns.save(counters=True)
        path = tmp_path / f"{name}.txt"
        path.write_text(dump)
        r = run_cli("explain", "web", "--bundle", str(path), "-o", "json")
        assert r.exit_code == 0, r.stderr
        entries = {e["kind"]: e for n in r.json()["ports"][0]["nodes"] for e in n["entries"]}
        answers[name] = entries
        checked = run_cli("check", "--bundle", str(path), "-o", "json")
        assert [f["id"] for f in checked.json()["findings"]] == ["etp-local-no-local-endpoints"]
    for entries in answers.values():
        assert entries["clusterIP"]["masquerade"] == "conditional"  # for clients outside the pod CIDR
        node_port = entries["nodePort"]
        assert node_port["verdict"] == "drop"  # outside clients of a pod-less Local node
        by_class = {c["clients"]: c for c in node_port["clients"]}
        assert by_class["the node itself"]["target"] == SVC and by_class["the node itself"]["masquerade"]
        assert by_class["pods (10.244.0.0/16)"]["target"] == SVC
    assert {c["clients"] for c in answers["older"]["nodePort"]["clients"]} >= {"localhost (127.0.0.0/8)"}


@pytest.mark.netns
def test_the_drop_is_shown_in_the_table_that_holds_it(tmp_path, monkeypatch):
    require_netns()
    with Namespace() as ns:
        ns.restore(old_rules(local_pod=False))
        dump = ns.save(counters=True)
    path = tmp_path / "old.txt"
    path.write_text(dump)
    monkeypatch.setenv("COLUMNS", "200")
    out = run_cli("explain", "web", "--bundle", str(path)).stdout
    assert f"nat {XLB}: {SPN} has no local endpoints → KUBE-MARK-DROP" in out
    assert "the node itself → " + SVC + ", masqueraded" in out
