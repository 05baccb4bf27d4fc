"""What makes `report` of a big cluster fast (issue #12, benchmarks/bench_report.py) must not change what it says:
each shortcut here is checked against the slow way on every rule and service of the demo, kube-proxy's own test
cases and the real dumps."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from kube_proxy_cases import FIXTURES
from svcdoctor.model.parse import parse_rules
from svcdoctor.model.rules import Rule
from svcdoctor.model.service_rules import rule_comment, rule_protocol

DEMO = Path(__file__).resolve().parent.parent / "svcdoctor" / "demo" / "myk8s"
REAL_DUMPS = Path("/work/shared/reference/real-dumps")


def rule_files() -> list[Path]:
    files = sorted(DEMO.glob("nodes/*/iptables*.txt")) + sorted(FIXTURES.glob("**/*.txt"))
    if REAL_DUMPS.is_dir():
        files += sorted(REAL_DUMPS.glob("*/source.txt")) + sorted(REAL_DUMPS.glob("_cut-down/*.txt"))
    return files


def all_rules(path: Path) -> list[Rule]:
    from svcdoctor.model.parse import parse_pasted_rules

    text = path.read_text(errors="replace")
    try:
        rules = parse_rules(text, str(path))
    except Exception:  # noqa: BLE001 - a terminal session pasted, or a file that is not a dump
        try:
            rules = parse_pasted_rules(text, str(path))
        except Exception:  # noqa: BLE001
            return []
    return [r for t in rules.tables.values() for c in t.chains.values() for r in c.rules]


TRICKY = [
    '-m comment --comment "a \\"quoted\\" word" -j KUBE-SVC-AAAAAAAAAAAAAAAA',
    '-m comment --comment "ns/a:p cluster IP" extra -j KUBE-SVC-AAAAAAAAAAAAAAAA',
    "-m comment --comment ns/a:p -j KUBE-SVC-AAAAAAAAAAAAAAAA",
    '--comment "not under -m comment" -j ACCEPT',
    '-m comment --comment "one" -m comment --comment "two" -j ACCEPT',
    '-m comment --comment "has --comment inside" -j ACCEPT',
    '-m comment --comment "x" ! -s 10.0.0.0/8 -j ACCEPT',
    "--protocol udp -m comment --comment \"a\" -j ACCEPT",
    "! -p tcp -j ACCEPT",
    '-p sctp -m comment --comment "ns/s:p -> -p udp" -j DNAT --to-destination 10.0.0.1:80',
    "-j ACCEPT",
]


@pytest.mark.parametrize("spec", TRICKY)
def test_comment_and_protocol_from_the_text_are_the_parsers(spec):
    quick, slow = Rule("nat", "X", 1, spec), Rule("nat", "X", 1, spec)
    assert (rule_comment(quick), rule_protocol(quick)) == (slow.comment, slow.value("-p"))


def test_comment_and_protocol_from_the_text_on_every_rule_of_every_dump():
    seen = 0
    for path in rule_files():
        for rule in all_rules(path):
            fresh = Rule(rule.table, rule.chain, rule.position, rule.spec)
            assert rule_comment(fresh) == rule.comment, rule.text
            fresh = Rule(rule.table, rule.chain, rule.position, rule.spec)
            assert rule_protocol(fresh) == rule.value("-p"), rule.text
            seen += 1
    assert seen > 1000


# --- the quick view of a service is explain's ----------------------------------------------------------------

def plain(value):
    """A view as nested tuples and dicts, its Rule objects as their table, chain, position, text and counters."""
    if isinstance(value, Rule):
        return ("rule", value.table, value.chain, value.position, value.spec, value.packets, value.bytes)
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def compare_every_service(node_rules: dict, cluster) -> tuple[int, int]:
    """For every service and node: the quick view, when there is one, is build_service_view's. Returns (quick,
    services x nodes)."""
    from svcdoctor.commands.report import _only_service
    from svcdoctor.model.explain import build_service_view
    from svcdoctor.model.quick_explain import QuickNode, quick_service_view
    from svcdoctor.model.service_rules import index_node_services

    indexes = {n: index_node_services(r) for n, r in node_rules.items()}
    quick = {n: QuickNode(n, r, indexes[n]) for n, r in node_rules.items()}
    api = cluster.services() if cluster is not None else {}
    keys = set(api) | {k for ix in indexes.values() for k in ix.service_names() if "/" in k}
    hits = total = 0
    for key in sorted(keys):
        ns, name = key.split("/", 1)
        for node, rules in node_rules.items():
            total += 1
            got = quick_service_view(ns, name, quick[node], cluster, api.get(key, []))
            if got is None:
                continue
            want = build_service_view(ns, name, {node: rules}, _only_service(cluster, api.get(key, [])),
                                      indexes={node: indexes[node]})
            assert plain(got) == plain(want), (key, node)
            hits += 1
    return hits, total


def test_quick_views_are_explains_on_the_demo():
    from svcdoctor.inputs import InputOptions, load

    loaded = load(InputOptions(demo=True))
    hits, total = compare_every_service(loaded.rules, loaded.cluster)
    assert hits >= 3 and total > hits  # the plain ClusterIP services; NodePort, Local and affinity ones are not


def test_quick_views_are_explains_on_kube_proxys_cases():
    from kube_proxy_cases import iter_cases

    hits = 0
    for case in iter_cases():
        rules = parse_rules(case.restore_text, case.name)
        hits += compare_every_service({"node": rules}, case.cluster_model())[0]
        hits += compare_every_service({"node": rules}, None)[0]


@pytest.fixture(scope="module")
def scale_cluster():
    """The benchmark's cluster (benchmarks/bench_check.py), 300 services, as the parser reads it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_check import api_objects
    from scale_dump import restore_text

    from svcdoctor.model.cluster import build_cluster_model

    services, slices = api_objects(300)
    return parse_rules(restore_text(300), "scale"), build_cluster_model(services, slices)


def test_quick_views_are_explains_on_the_benchmarks_cluster(scale_cluster):
    rules, cluster = scale_cluster
    assert compare_every_service({"node-1": rules}, cluster) == (300, 300)
    assert compare_every_service({"node-1": rules}, None) == (300, 300)


@pytest.mark.parametrize("change", [
    ("-m statistic --mode random --probability 0.5000000000 -j", "-m recent --name X --rcheck --seconds 10800 "
     "--reap -j"),  # affinity
    ("! -s 10.10.0.0/16 -d", "-d"),  # masquerade-all
    ("-m tcp -j DNAT", "-m tcp -j DNAT --random-fully"),
    ("-j KUBE-SVC-", "-j KUBE-EXT-"),
])
def test_another_shape_is_left_to_explain(scale_cluster, change):
    from svcdoctor.model.quick_explain import QuickNode, quick_service_view
    from svcdoctor.model.service_rules import index_node_services

    _, cluster = scale_cluster
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from scale_dump import restore_text

    rules = parse_rules(restore_text(3).replace(*change), "scale")
    quick = QuickNode("n", rules, index_node_services(rules))
    views = [quick_service_view("scale", f"svc-{i}", quick, cluster, cluster.services()[f"scale/svc-{i}"])
             for i in range(3)]
    assert None in views
    compare_every_service({"n": rules}, cluster)


@pytest.mark.skipif(not REAL_DUMPS.is_dir(), reason="the real dumps are not on this machine")
def test_quick_views_are_explains_on_the_real_dumps():
    from svcdoctor.model.parse import parse_pasted_rules

    hits = 0
    for path in sorted(REAL_DUMPS.glob("*/source.txt")):
        text = path.read_text(errors="replace")
        try:
            rules = parse_rules(text, str(path))
        except Exception:  # noqa: BLE001 - a terminal session pasted: the prompts and commands around the rules
            rules = parse_pasted_rules(text, str(path))
        hits += compare_every_service({"node": rules}, None)[0]
    assert hits > 0


# --- a big cluster's report ------------------------------------------------------------------------------------

def test_a_big_report_draws_the_services_with_findings_and_lists_every_other(tmp_path):
    """301 services (above ALL_NODES_UP_TO): the one with a finding is explained on every node and drawn; the
    others are explained on their busiest node, their table packed, without a picture."""
    import base64
    import gzip
    import json
    import re

    from cli_run import run_cli

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_check import make_bundle
    from scale_dump import restore_text

    n = 301
    make_bundle(str(tmp_path), restore_text(n), n)
    slices = tmp_path / "cluster" / "endpointslices.json"
    doc = json.loads(slices.read_text())
    doc["items"][7]["endpoints"] = doc["items"][7]["endpoints"][:2]  # svc-7: the nodes send to a pod that is gone
    slices.write_text(json.dumps(doc))
    findings = run_cli("check", "--bundle", str(tmp_path), "-o", "json").json()["findings"]
    assert findings and {f["service"].split(":")[0] for f in findings} == {"scale/svc-7"}

    out = tmp_path / "r.html"
    r = run_cli("report", "--bundle", str(tmp_path), "--out", str(out))
    assert r.exit_code == 0, r.stderr
    page = out.read_text()
    sections = re.findall(r'<details class="svc" id="s-([^"]+)"', page)
    assert len(sections) == n and sections[0] == "scale--svc-7"
    first = page.split('id="s-scale--svc-7"', 1)[1].split('<details class="svc"', 1)[0]
    assert "<svg" in first and all(f">{node}</td>" in first for node in ("node-1", "node-2", "node-3"))
    bodies = [b for pack in re.findall(r'<script type="application/gzip" id="pack-\d+">([^<]*)</script>', page)
              for b in gzip.decompress(base64.b64decode(pack)).decode().split("\0")]
    assert len(bodies) == n - 1
    for body in bodies:
        assert "<svg" not in body and "Not drawn" in body and "svcdoctor graph scale/svc-" in body
        assert body.count("% 10.10.") == 3  # three endpoints and their shares
    # the filter still finds a quiet service by its chains
    quiet = page.split('id="s-scale--svc-8"', 1)[1].split("</summary>", 1)[0]
    assert "kube-svc-" in quiet
