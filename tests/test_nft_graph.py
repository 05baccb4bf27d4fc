"""`graph` of nftables-mode nodes (svcdoctor/model/nft/graph.py): rulesets in kube-proxy's shapes (tests/nft_rules.py,
both the ≤1.35 per-endpoint-chain layout and 1.36's numgen DNAT map), loaded into a real kernel with `nft -f`,
listed back as JSON and as text, read, and drawn: the service's dispatch map elements, its chains, each endpoint's
share and DNAT, masquerade, the no-endpoint verdicts, and nothing of the other services."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cli_run import run_cli
from netns import Namespace, require_netns
from nft_rules import Svc, ruleset

from svcdoctor.model.nft import kube_proxy_tables, read_listing
from svcdoctor.model.nft.graph import service_graph, table_graph
from svcdoctor.model.nft.view import service_ports

SERVICES = [
    Svc("ns1", "web", "172.30.0.41", 80, ["10.180.0.1", "10.180.0.2", "10.180.0.3"], node_port=30080),
    Svc("ns1", "empty", "172.30.0.42", 80, [], node_port=30081),
    Svc("ns2", "sticky", "172.30.0.43", 8080, ["10.180.1.5"], affinity_seconds=10800,
        local_endpoints=["10.180.1.5"]),
]


@pytest.fixture(scope="module", params=[(layout, form) for layout in ("v1.34-1.35", "v1.36") for form in ("json", "text")],
                ids=lambda p: "-".join(p))
def table(request):
    layout, form = request.param
    (rs,) = kube_proxy_tables(read_listing(_listing(layout, form)))
    return layout, rs


def _listing(layout: str, form: str) -> str:
    """The services' ruleset loaded into a real kernel and listed back by nft, as JSON or as text."""
    require_netns()
    if shutil.which("nft") is None:
        pytest.fail("nft is not installed (scripts/install-system-deps.sh installs nftables)")
    with Namespace() as ns:
        run = ["ip", "netns", "exec", ns.name, "nft"]
        subprocess.run(run + ["-f", "-"], input=ruleset(SERVICES, layout), text=True, check=True, capture_output=True)
        return subprocess.run(run + (["-j"] if form == "json" else []) + ["list", "table", "ip", "kube-proxy"],
                              text=True, check=True, capture_output=True).stdout


def _graph_of(rs, service: str):
    ports = [h for h in service_ports(rs).values() if h.service_key == service]
    return service_graph(rs, {h.port_base for h in ports}, {h.svc_port_name for h in ports})


def _dnat_shares(g) -> dict[str, float]:
    """Each DNAT leaf with the share of a cluster-IP connection that reaches it (the product along the way)."""
    out = {}
    for leaf in (n for n in g if n.startswith("DNAT ")):
        paths = [p for p in _edge_paths(g, "@service-ips", leaf)]
        out[leaf] = round(sum(_product(g, p) for p in paths), 6)
    return out


def _edge_paths(g, start, end):
    import networkx as nx

    return nx.all_simple_edge_paths(g, start, end)


def _product(g, path) -> float:
    share = 1.0
    for hop in path:
        data = g.edges[hop]
        if data["conditional"]:
            return 0.0  # affinity and source-only branches: not the random split
        share *= data["share"]
    return share


def test_a_service_is_its_map_elements_chains_and_endpoints(table):
    layout, rs = table
    g = _graph_of(rs, "ns1/web")
    assert _dnat_shares(g) == {"DNAT 10.180.0.1:80": 0.333333, "DNAT 10.180.0.2:80": 0.333333,
                               "DNAT 10.180.0.3:80": 0.333333}
    # the map elements that lead to it, labelled with their keys
    keys = {d["note"] for a, _, d in g.edges(data=True) if a.startswith("@")}
    assert keys == {"172.30.0.41 . tcp . 80", "tcp . 30080"}
    kinds = {kind for _, kind in g.nodes(data="kind")}
    assert {"svc", "ext", "map", "verdict"} <= kinds
    assert ("sep" in kinds) == (layout == "v1.34-1.35")  # 1.36 DNATs from the service chain
    # nothing of the other services
    assert not [n for n in g if "empty" in n or "sticky" in n]
    if layout == "v1.34-1.35":  # 1.36 masquerades from `services` and the hairpin set, outside the service's way
        assert "mark-for-masquerade" in g


def test_a_service_without_endpoints_ends_in_its_no_endpoint_verdict(table):
    _, rs = table
    g = _graph_of(rs, "ns1/empty")
    leaves = [n for n, kind in g.nodes(data="kind") if kind == "verdict"]
    assert leaves and all(leaf.startswith(("REJECT", "DROP")) for leaf in leaves)
    keys = {d["note"] for a, _, d in g.edges(data=True) if a.startswith("@")}
    assert keys == {"172.30.0.42 . tcp . 80", "tcp . 30081"}
    assert not [n for n in g if "web" in n or "sticky" in n]


def test_affinity_is_a_conditional_branch(table):
    layout, rs = table
    g = _graph_of(rs, "ns2/sticky")
    whens = {d.get("when") for *_, d in g.edges(data=True) if d["conditional"]}
    if layout == "v1.34-1.35":
        assert "affinity" in whens
    assert [n for n in g if n.startswith("DNAT ")] == ["DNAT 10.180.1.5:8080"]


def test_the_whole_table_reaches_every_service(table):
    _, rs = table
    g = table_graph(rs)
    assert {"DNAT 10.180.0.1:80", "DNAT 10.180.1.5:8080"} <= set(g)
    assert all(g.nodes[n]["exists"] for n in g)


def test_cli_draws_nft_nodes_of_a_bundle(tmp_path):
    listing = _listing("v1.34-1.35", "json")
    for node in ("w1", "w2"):
        (tmp_path / "nodes" / node).mkdir(parents=True)
        (tmp_path / "nodes" / node / "nftables.json").write_text(listing)
    out = run_cli("graph", "ns1/web", "--bundle", str(tmp_path), "-o", "json")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert sorted(doc["nodes"]) == ["w1", "w2"]
    assert any(c["name"] == "DNAT 10.180.0.2:80" for c in doc["nodes"]["w1"]["chains"])
    dot = run_cli("graph", "ns1/web", "--bundle", str(tmp_path))
    assert dot.exit_code == 0 and '"@service-ips" -> "service-' in dot.stdout
    assert "no counters to choose by" in dot.stderr
    svg = run_cli("graph", "--bundle", str(tmp_path), "-o", "svg", "--node", "w1")
    assert svg.exit_code == 0 and svg.stdout.startswith("<svg") and "@service-nodeports" in svg.stdout


def test_report_explains_and_draws_nft_nodes(tmp_path):
    """`report` on nftables nodes: every service's paths per node from the tables, and its pictures."""
    listing = _listing("v1.34-1.35", "json")
    for node in ("w1", "w2"):
        (tmp_path / "b" / "nodes" / node).mkdir(parents=True)
        (tmp_path / "b" / "nodes" / node / "nftables.json").write_text(listing)
    out = run_cli("report", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "r.html"))
    assert out.exit_code == 0, out.stderr
    html = (tmp_path / "r.html").read_text()
    assert "no rules for this port" not in html
    assert html.count("<svg") >= 3 and "@service-ips" in html
    assert "10.180.0.3:80" in html and "ns2/sticky" in html
