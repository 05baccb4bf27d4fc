"""kube-proxy's nftables mode: rulesets written in kube-proxy's shapes (tests/nft_rules.py), loaded into a real
kernel in a network namespace with `nft -f`, listed back with `nft -j list table` and `nft list table`, and read:
both listings give the same table, every hashed name checks, explain and trace give kube-proxy's answers.
Where the reference cases are on the machine (SVCDOCTOR_NFT_CASES, docs/explanation/kube-proxy-nftables.md) every
listing of theirs is read too."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from netns import Namespace, require_netns
from nft_rules import Svc, ruleset

from svcdoctor.model.nft import kube_proxy_tables, read_listing
from svcdoctor.model.nft.explain import explain_nft_entries
from svcdoctor.model.nft.layout import generation
from svcdoctor.model.nft.names import hash_and_truncate, parse_name
from svcdoctor.model.nft_trace import trace_nft_packet

NODE_IPS = ["192.168.0.2"]
SERVICES = [
    Svc("ns1", "web", "172.30.0.41", 80, ["10.180.0.1", "10.180.0.2", "10.180.0.3"], node_port=30080),
    Svc("ns1", "empty", "172.30.0.42", 80, [], node_port=30081),
    Svc("ns2", "sticky", "172.30.0.43", 8080, ["10.180.1.5"], affinity_seconds=10800,
        local_endpoints=["10.180.1.5"]),
]
LAYOUTS = ("v1.34-1.35", "v1.36")
CASES = Path(os.environ.get("SVCDOCTOR_NFT_CASES", "/work/shared/reference/kube-proxy-nft-cases"))


def _listings(text: str) -> tuple[str, str]:
    require_netns()
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (scripts/install-system-deps.sh installs nftables)")
    with Namespace() as ns:
        run = ["ip", "netns", "exec", ns.name, "nft"]
        subprocess.run(run + ["-f", "-"], input=text, text=True, check=True, capture_output=True)
        as_json = subprocess.run(run + ["-j", "list", "table", "ip", "kube-proxy"], text=True, check=True,
                                 capture_output=True).stdout
        as_text = subprocess.run(run + ["list", "table", "ip", "kube-proxy"], text=True, check=True,
                                 capture_output=True).stdout
    return as_json, as_text


@pytest.fixture(scope="module", params=LAYOUTS)
def listed(request):
    return request.param, *_listings(ruleset(SERVICES, request.param))


def _same(a, b) -> None:
    assert set(a.chains) == set(b.chains)
    for name, chain in a.chains.items():
        other = b.chains[name]
        assert (chain.hook, chain.priority, chain.type) == (other.hook, other.priority, other.type)
        assert [r.statements for r in chain.rules] == [r.statements for r in other.rules], name
        assert [r.text for r in chain.rules] == [r.text for r in other.rules], name  # JSON rendered as nft prints
    assert set(a.sets) == set(b.sets)
    for name, nset in a.sets.items():
        other = b.sets[name]
        assert (nset.type, nset.map_type, nset.timeout) == (other.type, other.map_type, other.timeout)
        assert sorted(map(repr, nset.elements)) == sorted(map(repr, other.elements)), name


def test_json_and_text_listings_read_the_same(listed):
    layout, as_json, as_text = listed
    (a,), (b,) = kube_proxy_tables(read_listing(as_json)), kube_proxy_tables(read_listing(as_text))
    assert a.listing == "json" and b.listing == "text"
    _same(a, b)
    assert generation(a) == generation(b) == layout


def test_every_hashed_name_checks(listed):
    _, as_json, _ = listed
    (rs,) = read_listing(as_json)
    names = [n for n in list(rs.chains) + list(rs.sets) if parse_name(n)]
    assert names and all(parse_name(n).verified for n in names)
    bad = parse_name("service-AAAAAAAA-ns1/web/tcp/p80")
    assert bad.verified is False


def test_truncated_names_are_not_checked_from_themselves():
    long = "n" * 60 + "/" + "s" * 60 + "/tcp/" + "p" * 120
    name = "service-" + hash_and_truncate(long)
    assert name.endswith("...") and parse_name(name).verified is None


@pytest.mark.parametrize("form", ["json", "text"])
def test_explain_entries(listed, form):
    layout, as_json, as_text = listed
    (rs,) = read_listing(as_json if form == "json" else as_text)
    web = explain_nft_entries(rs, "ns1/web/tcp/p80", "node")
    cluster, node_port = web
    assert (cluster.kind, cluster.destination, cluster.verdict) == ("clusterIP", "172.30.0.41:80", "dnat")
    assert [(e.ip, e.port, round(e.probability, 9)) for e in cluster.endpoints] == [
        ("10.180.0.1", 80, 0.333333333), ("10.180.0.2", 80, 0.333333333), ("10.180.0.3", 80, 0.333333333)]
    assert cluster.masquerade == "conditional" and "10.0.0.0/8" in cluster.masquerade_when[0]
    assert (node_port.kind, node_port.destination, node_port.masquerade) == ("nodePort", ":30080", "always")
    assert cluster.entry_rule.text.startswith("element ip kube-proxy service-ips")
    assert cluster.entry_rule.packets is None  # nftables keeps no counters
    empty = explain_nft_entries(rs, "ns1/empty/tcp/p80", "node")
    assert [(e.kind, e.destination, e.verdict) for e in empty] == [
        ("clusterIP", "172.30.0.42:80", "reject"), ("nodePort", ":30081", "reject")]
    (sticky,) = explain_nft_entries(rs, "ns2/sticky/tcp/p80", "node")
    assert sticky.session_affinity_seconds == 10800
    assert [(e.ip, e.port, e.probability) for e in sticky.endpoints] == [("10.180.1.5", 8080, 1.0)]


@pytest.mark.parametrize("form", ["json", "text"])
@pytest.mark.parametrize("src, dst, dport, protocol, output, masq", [
    ("10.180.0.9", "172.30.0.41", 80, "tcp", "10.180.0.1:80, 10.180.0.2:80, 10.180.0.3:80", False),
    ("203.0.113.2", "172.30.0.41", 80, "tcp", "10.180.0.1:80, 10.180.0.2:80, 10.180.0.3:80", True),
    ("203.0.113.2", "192.168.0.2", 30080, "tcp", "10.180.0.1:80, 10.180.0.2:80, 10.180.0.3:80", True),
    ("10.180.0.9", "172.30.0.42", 80, "tcp", "REJECT", False),
    ("203.0.113.2", "192.168.0.2", 30081, "tcp", "REJECT", False),
    ("10.180.0.9", "172.30.0.41", 81, "tcp", "REJECT", False),  # a cluster IP's other ports
    ("10.180.0.9", "172.30.0.99", 80, "tcp", "DROP", False),  # unallocated in the service CIDR
    ("10.180.0.9", "172.30.0.41", 80, "udp", "REJECT", False),
    ("10.180.1.5", "172.30.0.43", 8080, "tcp", "10.180.1.5:8080", True),  # hairpin
    ("10.180.0.9", "10.180.0.1", 80, "tcp", "", False),  # not a service
])
def test_trace(listed, form, src, dst, dport, protocol, output, masq):
    _, as_json, as_text = listed
    (rs,) = read_listing(as_json if form == "json" else as_text)
    result = trace_nft_packet(rs, src, dst, dport, protocol, NODE_IPS)
    assert _answer(result) == output
    assert result.masquerade == masq
    assert not result.uncertain


def _answer(result) -> str:
    """kube-proxy's tracer's form: the DNAT destinations, or DROP / REJECT, or ""."""
    if result.endpoints:
        return ", ".join(sorted(e.address for e in result.endpoints))
    return result.verdict.upper() if result.verdict in ("drop", "reject") else ""


def test_numgen_shares_are_exact(listed):
    _, as_json, _ = listed
    (rs,) = read_listing(as_json)
    result = trace_nft_packet(rs, "10.180.0.9", "172.30.0.41", 80, "tcp", NODE_IPS)
    assert [e.probability for e in result.endpoints] == [1 / 3] * 3


# --- the reference cases, when present ----------------------------------------------------------------------
def _reference_listings() -> list[str]:
    return sorted(glob.glob(str(CASES / "*" / "listed*.json")))


@pytest.mark.skipif(not CASES.is_dir(), reason=f"reference cases not on this machine ({CASES})")
def test_reference_listings_read_alike_and_check():
    listings = _reference_listings()
    assert listings
    for path in listings:
        (a,) = read_listing(Path(path).read_text(), path)
        (b,) = read_listing(Path(path[:-5] + ".txt").read_text(), path)
        _same(a, b)
        folder = Path(path).parent.name
        expected = next((g for g in ("v1.29-alpha", "v1.30-early", "v1.30-1.33", "v1.34-1.35", "v1.36")
                         if folder.endswith(g)), None)
        assert generation(a) == expected, path
        assert all(parse_name(n).verified is not False for n in list(a.chains) + list(a.sets) if parse_name(n))


@pytest.mark.skipif(not CASES.is_dir(), reason=f"reference cases not on this machine ({CASES})")
def test_reference_overall_rulesets_trace():
    """TestOverallNFTablesRules' services, every generation: answers as kube-proxy's tracer gives them."""
    nodes = ["192.168.0.2", "192.168.1.2", "192.168.99.11"]
    flows = [
        ("10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
        ("10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),
        ("203.0.113.2", "172.30.0.41", 80, "10.180.0.1:80", True),
        ("10.180.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80", False),
        ("203.0.113.2", "192.168.0.2", 3001, "DROP", False),  # eTP Local, no local endpoint
        ("10.180.0.2", "172.30.0.46", 80, "REJECT", False),
        ("203.0.113.130", "5.6.7.8", 80, "DROP", False),  # outside loadBalancerSourceRanges
        ("203.0.113.2", "5.6.7.8", 80, "10.180.0.3:80", True),
    ]
    for folder in sorted(CASES.glob("01-overall-*")):
        for name in ("listed.json", "listed.txt"):
            (rs,) = read_listing((folder / name).read_text())
            for src, dst, dport, output, masq in flows:
                result = trace_nft_packet(rs, src, dst, dport, "tcp", nodes)
                assert (_answer(result), result.masquerade) == (output, masq), (folder.name, name, src, dst, dport)


# --- the CLI, from a dump file and from a bundle ------------------------------------------------------------
def test_cli_explain_and_trace_an_nft_dump(listed, tmp_path):
    from cli_run import run_cli

    layout, as_json, as_text = listed
    dump = tmp_path / "node1.json"
    dump.write_text(as_json)
    out = run_cli("explain", "ns1/web", "--bundle", str(dump), "-o", "json")
    assert out.exit_code == 0, out.stderr
    doc = out.json()
    (node,) = doc["ports"][0]["nodes"]
    kinds = [(e["kind"], e["verdict"], len(e["endpoints"])) for e in node["entries"]]
    assert kinds == [("clusterIP", "dnat", 3), ("nodePort", "dnat", 3)]
    assert not [f for f in doc["findings"] if f["id"] == "proxy-mode-not-read"]
    text = tmp_path / "node1.nft"
    text.write_text(as_text)
    out = run_cli("trace", "--dst", "172.30.0.42:80", "--src", "10.180.0.9", "--bundle", str(text), "-o", "json")
    assert out.exit_code == 0, out.stderr
    assert out.json()["verdict"] == "reject"


def test_bundle_with_nftables_files_round_trips(listed, tmp_path):
    from cli_run import run_cli

    from svcdoctor.collect.bundle import load_input, write_bundle

    _, as_json, as_text = listed
    root = tmp_path / "b"
    (root / "nodes" / "w1").mkdir(parents=True)
    (root / "nodes" / "w1" / "nftables.json").write_text(as_json)
    (root / "nodes" / "w2").mkdir(parents=True)
    (root / "nodes" / "w2" / "nftables.txt").write_text(as_text)
    (root / "nodes" / "w2" / "node.json").write_text(json.dumps({"name": "w2", "proxyMode": "nftables"}))
    snapshot = load_input(root)
    assert [n.error for n in snapshot.nodes] == [None, None]
    again = tmp_path / "again.tar.gz"
    write_bundle(snapshot, again)
    out = run_cli("explain", "ns1/empty", "--bundle", str(again), "-o", "json")
    assert out.exit_code == 0, out.stderr
    nodes = out.json()["ports"][0]["nodes"]
    assert sorted(n["node"] for n in nodes) == ["w1", "w2"]
    assert all(e["verdict"] == "reject" for n in nodes for e in n["entries"])


def test_collection_reads_both_tables_and_falls_back_to_text():
    from svcdoctor.collect.nft_rules import read_nft_tables
    from svcdoctor.collect.snapshot import NodeCapture
    from svcdoctor.collect.nft_rules import attach_nftables

    calls = []

    def run(argv):
        calls.append(argv)
        if "-j" in argv:
            return 1, "", "Error: JSON support not compiled-in"
        if argv[-2] == "ip6":
            return 1, "", "Error: No such file or directory"
        return 0, "table ip kube-proxy {\n}\n", ""

    tables = read_nft_tables(run)
    assert tables.json is None and tables.text.startswith("table ip kube-proxy")
    assert calls[0] == ["nft", "list", "tables"]  # the names only: which families have kube-proxy's table
    assert all(a[:2] != ["nft", "list"] or a[2:] in (["tables"], ["table", "ip", "kube-proxy"],
                                                     ["table", "ip6", "kube-proxy"]) for a in calls)
    assert not any("ruleset" in a for a in calls)
    capture = NodeCapture(name="n")
    attach_nftables(capture, tables)
    assert capture.proxy_mode == "nftables" and capture.has_nftables


def test_affinity_is_shown_as_live_state(tmp_path):
    """The affinity set's elements are the clients pinned right now: kube-proxy's nft rules add them with the set's
    timeout; here one is added as those rules would, and listed back by the real nft (JSON and text)."""
    from cli_run import run_cli

    require_netns()
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (scripts/install-system-deps.sh installs nftables)")
    text = ruleset(SERVICES)
    with Namespace() as ns:
        run = ["ip", "netns", "exec", ns.name, "nft"]
        subprocess.run(run + ["-f", "-"], input=text, text=True, check=True, capture_output=True)
        listed = subprocess.run(run + ["-j", "list", "table", "ip", "kube-proxy"], text=True, check=True,
                                capture_output=True).stdout
        (rs,) = read_listing(listed)
        (affinity,) = [name for name in rs.sets if name.startswith("affinity-")]
        subprocess.run(run + ["add", "element", "ip", "kube-proxy", affinity, "{ 10.0.0.5 }"], check=True,
                       capture_output=True)
        dumps = {ext: subprocess.run(run + args + ["list", "table", "ip", "kube-proxy"], text=True, check=True,
                                     capture_output=True).stdout for ext, args in ((".json", ["-j"]), (".nft", []))}
    for ext, dump in dumps.items():
        path = tmp_path / f"node1{ext}"
        path.write_text(dump)
        r = run_cli("explain", "ns2/sticky", "--bundle", str(path), "-o", "json")
        assert r.exit_code == 0, r.stderr
        (entry,) = [e for e in r.json()["ports"][0]["nodes"][0]["entries"] if e["kind"] == "clusterIP"]
        (pinned,) = entry["affinityClients"]
        assert pinned["client"] == "10.0.0.5" and pinned["endpoint"] == "10.180.1.5:8080", ext
        assert 10000 < pinned["expiresSeconds"] <= 10800, ext
        view = " ".join(run_cli("explain", "ns2/sticky", "--bundle", str(path)).stdout.split())  # however wrapped
        # the time left as nft listed it: just under the 3h timeout, or all of it when listed in the same second
        assert re.search(r"client 10\.0\.0\.5 pinned to 10\.180\.1\.5:8080 for (2h5\dm(\d+s)?|3h(0m)?(0s)?) more",
                         view), (ext, view)


def test_nodes_counts_nft_rules_and_names_the_layout(listed, tmp_path):
    """`nodes` on nftables-mode nodes: rules and map/set elements of kube-proxy's table, its chains, and which of
    kube-proxy's layouts it is (-o wide, and in the JSON)."""
    from cli_run import run_cli

    layout, as_json, _ = listed
    (tmp_path / "nodes" / "w1").mkdir(parents=True)
    (tmp_path / "nodes" / "w1" / "nftables.json").write_text(as_json)
    (rs,) = kube_proxy_tables(read_listing(as_json))
    out = run_cli("nodes", "--bundle", str(tmp_path), "-o", "json")
    assert out.exit_code == 0, out.stderr
    (row,) = out.json()["nodes"]
    assert row["proxyMode"] == "nftables" and row["nftLayout"] == layout
    assert row["kubeChains"] == len(rs.chains)
    assert row["rules"] == sum(len(c.rules) for c in rs.chains.values()) + sum(len(s.elements) for s in rs.sets.values())
    wide = run_cli("nodes", "--bundle", str(tmp_path), "-o", "wide")
    assert "LAYOUT" in wide.stdout and layout in wide.stdout


def test_services_and_addresses_on_nft_nodes(listed, tmp_path):
    """`services` lists what an nftables node's table holds, and an address or node port finds its service."""
    from cli_run import run_cli

    _, as_json, _ = listed
    dump = tmp_path / "node1.json"
    dump.write_text(as_json)
    out = run_cli("services", "--bundle", str(dump), "-A", "-o", "json")
    assert out.exit_code == 0, out.stderr
    rows = {f"{s['namespace']}/{s['name']}": s for s in out.json()["items"]}
    assert set(rows) == {"ns1/web", "ns1/empty", "ns2/sticky"}
    assert sorted(rows["ns1/web"]["endpoints"]) == ["10.180.0.1:80", "10.180.0.2:80", "10.180.0.3:80"]
    assert rows["ns1/empty"]["endpoints"] == []
    assert {e["destination"] for e in rows["ns1/web"]["entries"]} == {"172.30.0.41:80", ":30080"}
    for address, service in (("172.30.0.41", "ns1/web"), (":30081", "ns1/empty"), ("172.30.0.43:8080", "ns2/sticky")):
        found = run_cli("explain", address, "--bundle", str(dump), "-o", "json")
        assert found.exit_code == 0, (address, found.stderr)
        assert "{namespace}/{name}".format(**found.json()["service"]) == service


def test_a_node_with_pinned_clients_is_not_folded_with_the_others(tmp_path):
    """explain folds nodes with the same rules into one block; a node whose affinity sets pin clients (live state
    of that node) is shown apart, with its pinned clients."""
    from cli_run import run_cli

    require_netns()
    with Namespace() as ns:
        run = ["ip", "netns", "exec", ns.name, "nft"]
        subprocess.run(run + ["-f", "-"], input=ruleset(SERVICES), text=True, check=True, capture_output=True)
        listed = lambda: subprocess.run(run + ["-j", "list", "table", "ip", "kube-proxy"], text=True, check=True,  # noqa: E731
                                        capture_output=True).stdout
        plain = listed()
        (affinity,) = [name for name in read_listing(plain)[0].sets if name.startswith("affinity-")]
        subprocess.run(run + ["add", "element", "ip", "kube-proxy", affinity, "{ 10.0.0.5 }"], check=True,
                       capture_output=True)
        pinned = listed()
    for node, dump in (("w1", plain), ("w2", pinned), ("w3", plain)):
        (tmp_path / "nodes" / node).mkdir(parents=True)
        (tmp_path / "nodes" / node / "nftables.json").write_text(dump)
    view = run_cli("explain", "ns2/sticky", "--bundle", str(tmp_path)).stdout
    assert "w1, w3: same rules" in view
    block = view[view.index("\n  w2"):]
    assert "client 10.0.0.5 pinned to 10.180.1.5:8080" in " ".join(block.split())
    assert view.count("pinned to") == 1


def test_the_terminal_view_says_numgen_shares_as_nftables_writes_them(listed, tmp_path):
    """`numgen random mod 3`: each branch is exactly 1/3, said as such (not as an iptables probability)."""
    from cli_run import run_cli

    _, as_json, _ = listed
    dump = tmp_path / "node1.json"
    dump.write_text(as_json)
    view = run_cli("explain", "ns1/web", "--bundle", str(dump)).stdout
    assert view.count("(numgen 1/3)") == 6 and "p=0." not in view  # cluster IP and node port, 3 endpoints each
