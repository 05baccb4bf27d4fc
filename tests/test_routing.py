"""The routing model's two sides agree on kube-proxy's own test cases: the routes read from kube-proxy's expected
dumps (the explain walk over the rules) equal the routes worked out from the API objects and the settings
(model/routing.py: expected_routes, from kube-proxy's decisions, no rule text). And where a node's rules are
broken on purpose, the routes say how."""

from __future__ import annotations

import pytest

from kube_proxy_cases import iter_cases
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture
from svcdoctor.inputs import LoadedInput, build_view
from svcdoctor.model.expected import plan_service_port
from svcdoctor.model.parse import parse_rules
from svcdoctor.model.routing import expected_routes, route_differences, routes_from_view

CASES = [c for c in iter_cases() if c.api_objects().services]


def _loaded(case, text: str) -> LoadedInput:
    node = case.settings.node_name
    capture = NodeCapture(name=node, iptables_save=text, internal_ip=case.node_ip, backend="nft",
                          proxy_mode="iptables")
    snapshot = ClusterSnapshot(cluster="cases", nodes=[capture], api=case.api_objects())
    return LoadedInput(snapshot, {node: parse_rules(text)}, {}, {}, case.cluster_model(), [])


def _both_sides(case, text: str):
    """[(service port name, expected routes, routes on the node)] for every port kube-proxy proxies."""
    loaded = _loaded(case, text)
    model = loaded.cluster
    large = sum(len(sp.endpoints) for sp in model.service_ports) > 1000
    out = []
    for sp in model.service_ports:
        plan = plan_service_port(sp, case.settings, large)
        if plan is None:
            continue
        view = build_view(loaded, sp.namespace, sp.name)
        (pv,) = [p for p in view.ports if p.svc_port_name == sp.svc_port_name]
        (nv,) = pv.nodes
        out.append((sp.svc_port_name, expected_routes(plan, case.settings), routes_from_view(nv.entries)))
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_routes_from_kube_proxys_rules_equal_routes_from_its_decisions(case):
    for name, want, have in _both_sides(case, case.restore_text):
        assert set(have) == set(want), name
        for key in want:
            assert route_differences(want[key], have[key]) == [], (name, key)


def test_a_stale_endpoint_shows_as_a_route_difference():
    case = next(c for c in CASES if c.name.startswith("01-"))
    (name, want, have), *_ = _both_sides(case, case.restore_text)
    key = next(k for k, r in want.items() if r.verdict == "dnat")
    address, share = want[key].endpoints[0]
    broken = type(want[key])("dnat", (("10.9.9.9:80", share),) + want[key].endpoints[1:], want[key].masquerade,
                             want[key].affinity_seconds)
    words = route_differences(want[key], broken)
    assert any("10.9.9.9:80" in w and "not expected" in w for w in words)
    assert any(address in w and "missing" in w for w in words)


# Faults planted on kube-proxy's dumps (tests/test_check.py) that change what the node does, not only names (a
# renamed chain, KUBE-SVC in place of KUBE-SVL over the same endpoint, is for the line-by-line comparison): the route
# comparison finds each, with the id the line-by-line comparison gives.
SEMANTIC_PLANTS = ("stale-endpoint", "stale-and-missing", "missing-endpoint", "uneven-split",
                   "etp-local-acting-cluster", "affinity-lost", "old-node-port")


@pytest.mark.parametrize("plant", SEMANTIC_PLANTS)
def test_route_comparison_finds_each_planted_fault_that_changes_routing(plant):
    from test_check import CASES as CHECK_CASES
    from test_check import PLANTS

    from svcdoctor.checks.compare_routes import compare_routes

    name, edit, expected = PLANTS[plant]
    case = CHECK_CASES[name]
    found = []
    for port_name, want, have in _both_sides(case, edit(case.restore_text)):
        found += compare_routes(case.settings.node_name, port_name.split(":", 1)[0], port_name, want, have)
    assert {f.id for f in found} & {fid for fid, _ in expected}, [f.message for f in found]
    clean = []
    for port_name, want, have in _both_sides(case, case.restore_text):
        clean += compare_routes(case.settings.node_name, port_name.split(":", 1)[0], port_name, want, have)
    assert clean == []
