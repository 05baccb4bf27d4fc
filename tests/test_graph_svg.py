"""`graph -o svg` (issue #12): a valid SVG naming the service and node, every chain and endpoint of the service,
the DROP that ends a dropped path, laid out without any external program."""

import xml.etree.ElementTree as ET

import pytest

from cli_run import run_cli
from svcdoctor.errors import ExitStatus

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(text: str) -> list[str]:
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg"
    return [t.text for t in root.iter(SVG + "text")]


def test_the_dropped_nodeport_ends_in_drop():
    r = run_cli("graph", "svc-local", "--demo", "--node", "myk8s-worker3", "-o", "svg")
    assert r.exit_code == 0, r.stderr
    texts = svg_texts(r.stdout)
    assert "default/svc-local on myk8s-worker3" in texts
    for name in ("KUBE-NODEPORTS", "KUBE-EXT-ZO52ZISLT5W6NVER", "KUBE-SVC-ZO52ZISLT5W6NVER",
                 "KUBE-SEP-W4ARRTAUZI2Y6XZG", "KUBE-SEP-IHVSOYSPNJGIENCB", "DNAT 10.10.2.5:80", "DNAT 10.10.3.5:80",
                 "DROP", "filter KUBE-EXTERNAL-SERVICES", "7 pkts"):
        assert name in texts, name
    assert any(t and "@ myk8s-worker" in t for t in texts)  # the endpoint's pod and node
    assert 'class="ends"' in r.stdout  # the path into the DROP is drawn as the end of the traffic


def test_every_chain_and_endpoint_of_the_json_graph_is_drawn():
    for service in ("svc-clusterip", "svc-nodeport", "svc-affinity", "svc-local"):
        doc = run_cli("graph", service, "--demo", "--node", "myk8s-worker", "-o", "json").json()
        texts = " ".join(t or "" for t in svg_texts(
            run_cli("graph", service, "--demo", "--node", "myk8s-worker", "-o", "svg").stdout))
        for chain in doc["nodes"]["myk8s-worker"]["chains"]:
            assert chain["name"].split(" (")[0] in texts, (service, chain["name"])


def test_without_node_the_busiest_is_drawn_and_named():
    r = run_cli("graph", "svc-local", "--demo", "-o", "svg")
    assert r.exit_code == 0
    assert "the node with the most traffic" in r.stderr
    chosen = r.stderr.split("drawing ", 1)[1].split(",", 1)[0]
    assert f"default/svc-local on {chosen}" in svg_texts(r.stdout)


def test_several_nodes_several_pictures_in_one_document():
    r = run_cli("graph", "svc-local", "--demo", "--node", "myk8s-worker", "--node", "myk8s-worker3", "-o", "svg")
    texts = svg_texts(r.stdout)
    assert "default/svc-local on myk8s-worker" in texts and "default/svc-local on myk8s-worker3" in texts


@pytest.mark.parametrize("fmt", ["table", "wide"])
def test_table_is_refused(fmt):
    r = run_cli("graph", "svc-local", "--demo", "-o", fmt)
    assert r.exit_code == ExitStatus.USAGE and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1


def test_names_from_the_input_are_escaped():
    import networkx as nx

    from svcdoctor.render.graph_svg import to_svg

    g = nx.MultiDiGraph()
    g.add_edge("KUBE-SVC-<script>", "DNAT 1.2.3.4:80", rule="-A x", packets=1, share=1.0, when="-s <a&b>")
    g.nodes["DNAT 1.2.3.4:80"]["kind"] = "verdict"
    texts = svg_texts(to_svg(g, "ns/<x> on n"))
    assert "KUBE-SVC-<script>" in texts and "ns/<x> on n" in texts
