"""Partial inputs, replaced kube-proxy, severity by impact (issue #9, items 2, 4, 5). The fixtures are made here
from the demo's kernel-made dump of myk8s-worker: a grep for one service, and per-chain `iptables -S CHAIN -v`
listings without KUBE-SERVICES; and a Cilium-shaped node of our own writing."""

from __future__ import annotations

from cli_run import run_cli
from svcdoctor.collect.bundle import demo_bundle_path
from svcdoctor.model.parse import parse_pasted_rules
from svcdoctor.model.partial import missing_pieces

CLEAN = (demo_bundle_path() / "nodes" / "myk8s-worker" / "iptables.txt").read_text()
LINES = [ln.split("] ", 1)[-1] for ln in CLEAN.splitlines()]
SVC = next(ln.split()[1] for ln in LINES if ln.startswith("-A KUBE-SVC-") and "svc-nodeport:" in ln)
EXT = SVC.replace("KUBE-SVC-", "KUBE-EXT-")


def _grep(word: str) -> str:
    return "\n".join(ln for ln in LINES if word in ln and not ln.startswith(("*", "#"))) + "\n"


def _listing(*chains: str) -> str:
    out = []
    for chain in chains:
        out.append(f"$ iptables -t nat -S {chain} -v")
        out.append(f"-N {chain}")
        out += [ln.replace(" -j ", " -c 0 0 -j ") for ln in LINES if ln.startswith(f"-A {chain} ")]
    return "\n".join(out) + "\n"


def test_a_whole_dump_is_not_partial_and_a_grep_is():
    assert missing_pieces(parse_pasted_rules(CLEAN)) == []
    missing = missing_pieces(parse_pasted_rules(_grep("svc-nodeport")))
    assert any("PREROUTING" in m for m in missing) and any("KUBE-POSTROUTING" in m for m in missing)


def test_per_chain_listings_are_explained_from_the_chains_that_are_there(tmp_path):
    path = tmp_path / "listing.txt"
    path.write_text(_listing(EXT, SVC))
    r = run_cli("explain", "svc-nodeport", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert "a partial dump" in r.stderr
    entries = {e["kind"]: e for p in r.json()["ports"] for n in p["nodes"] for e in n["entries"]}
    cluster = entries["clusterIP"]
    assert cluster["destination"] == "10.200.1.184:9000" and cluster["masquerade"] == "conditional"
    assert [round(e["probability"], 3) for e in cluster["endpoints"]] == [0.333, 0.333, 0.333]
    assert "is not in this input" in cluster["notes"][0]
    assert entries["external"]["verdict"] == "dnat" and entries["external"]["masquerade"] == "always"


def test_no_orphan_chain_is_claimed_in_a_partial_input(tmp_path):
    path = tmp_path / "listing.txt"
    path.write_text(_listing(EXT, SVC))
    r = run_cli("check", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stdout
    assert [f["id"] for f in r.json()["findings"]] == []


def test_trace_on_a_grep_names_what_is_missing_and_never_concludes_no_snat(tmp_path):
    path = tmp_path / "grep.txt"
    path.write_text(_grep("svc-nodeport"))
    r = run_cli("trace", "--dst", "10.200.1.184:9000", "--src", "172.18.0.100", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["verdict"] == "dnat" and doc["masquerade"] is True  # outside the pod CIDR: marked, so masqueraded
    assert any("KUBE-POSTROUTING is not in this input" in note for note in doc["partial"])
    r = run_cli("trace", "--dst", "172.18.0.3:32624", "--src", "172.18.0.100", "--bundle", str(path), "-o", "json")
    doc = r.json()
    assert doc["verdict"] == "none"
    assert "the jump from KUBE-SERVICES to KUBE-NODEPORTS is not in this input" in doc["partial"]


CILIUM = """$ iptables -t nat -S
-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N CILIUM_OUTPUT_nat
-N CILIUM_POST_nat
-N CILIUM_PRE_nat
-N KUBE-KUBELET-CANARY
-A PREROUTING -m comment --comment "cilium-feeder: CILIUM_PRE_nat" -j CILIUM_PRE_nat
-A OUTPUT -m comment --comment "cilium-feeder: CILIUM_OUTPUT_nat" -j CILIUM_OUTPUT_nat
-A POSTROUTING -m comment --comment "cilium-feeder: CILIUM_POST_nat" -j CILIUM_POST_nat
"""


def test_a_node_where_cilium_replaces_kube_proxy_is_info_not_an_error(tmp_path):
    path = tmp_path / "cilium-node.txt"
    path.write_text(CILIUM)
    r = run_cli("check", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stdout
    assert [(f["id"], f["severity"]) for f in r.json()["findings"]] == [("kube-proxy-replaced", "info")]
    assert "Cilium" in r.json()["findings"][0]["message"]
    r = run_cli("explain", "web", "--bundle", str(path))
    assert r.exit_code == 2 and "not programmed in iptables where kube-proxy is replaced (Cilium" in r.stderr


def test_no_endpoints_for_the_cluster_dns_is_an_error(tmp_path):
    dns = [ln for ln in LINES if "kube-system/kube-dns:dns " in ln or "kube-system/kube-dns:dns\"" in ln]
    assert dns
    cut = [ln for ln in CLEAN.splitlines() if not any(d in ln for d in dns) and "KUBE-SVC-TCOU7JCQXEZGVUNU" not in ln]
    # kube-proxy's rule for a port without endpoints: REJECT in filter KUBE-SERVICES
    reject = ('-A KUBE-SERVICES -d 10.200.1.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns has no '
              'endpoints" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable')
    at = next(i for i, ln in enumerate(cut) if ln.startswith("*filter"))
    at = next(i for i in range(at, len(cut)) if cut[i] == "COMMIT")
    path = tmp_path / "node.txt"
    path.write_text("\n".join(cut[:at] + [reject] + cut[at:]) + "\n")
    r = run_cli("check", "--bundle", str(path), "-o", "json")
    (f,) = [f for f in r.json()["findings"] if f["id"] == "no-endpoints"]
    assert f["severity"] == "error" and f["service"] == "kube-system/kube-dns"
    assert r.exit_code == 1


def test_an_unknown_namespace_is_refused_with_the_namespaces_seen():
    r = run_cli("check", "--demo", "-n", "all")
    assert r.exit_code == 2
    assert "namespaces with services: default, kube-system" in r.stderr
