"""One engine per finding id: every finding `explain` shows for a service is one `check` reports for it.

`explain` takes its per-service findings from `check`'s engine run on that one service (commands/check.py:
check_service), so the two cannot disagree. This runs the real CLI on every service of the demo bundle, of the
bundles the other tests build (kube-proxy's own cases, clean and with each planted fault, on one node and two),
of pre-1.24 rules (KUBE-XLB), and of the real dumps in /work/shared/reference/real-dumps when that folder exists
(read in place, never copied here), with the API objects and without (`--no-api`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_check import CASES, NODE, PLANTS, make_bundle
from test_old_kube_proxy import old_rules

from cli_run import run_cli
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture
from svcdoctor.inputs import InputOptions, load
from svcdoctor.model.explain import known_services

REAL_DUMPS = Path("/work/shared/reference/real-dumps")

Key = tuple[str, str | None, str | None]


def _keys(doc: dict) -> set[Key]:
    return {(f["id"], f["node"], f["service"]) for f in doc["findings"]}


def _input_args(source: str) -> list[str]:
    return ["--demo"] if source == "demo" else ["--bundle", source]


def _services(source: str, no_api: bool) -> list[str]:
    options = InputOptions(demo=True, no_api=no_api) if source == "demo" else InputOptions(bundle=source, no_api=no_api)
    loaded = load(options)
    from svcdoctor.model.nft.view import nft_service_names

    return sorted(known_services(loaded.rules, loaded.cluster, loaded.rules6) | nft_service_names(loaded.nft))


def assert_explain_within_check(source: str) -> int:
    """Every (id, node, service) explain reports for each service is in check's report, with and without the
    API. Returns how many explain runs were compared."""
    runs = 0
    for no_api in (False, True):
        flags = ["--no-api"] if no_api else []
        result = run_cli("check", *_input_args(source), *flags, "-o", "json")
        assert result.exit_code in (0, 1), result.stderr
        reported = _keys(result.json())
        for service in _services(source, no_api):
            shown = run_cli("explain", service, *_input_args(source), *flags, "-o", "json")
            assert shown.exit_code in (0, 1), (service, shown.stderr)
            extra = _keys(shown.json()) - reported
            assert not extra, f"{service} ({'no API' if no_api else 'API'}): explain only: {sorted(extra)}"
            runs += 1
    return runs


def test_the_demo_bundle():
    assert assert_explain_within_check("demo") > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_kube_proxys_own_cases_on_one_and_two_nodes(tmp_path, name):
    case = CASES[name]
    assert_explain_within_check(make_bundle(tmp_path / "one", case))
    assert_explain_within_check(make_bundle(tmp_path / "two", case, {NODE: case.restore_text,
                                                                     "node-b": case.restore_text}))


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_faults_on_one_node_of_two(tmp_path, plant):
    name, edit, _ = PLANTS[plant]
    case = CASES[name]
    assert_explain_within_check(make_bundle(tmp_path / "b", case, {NODE: edit(case.restore_text),
                                                                   "node-b": case.restore_text}))


@pytest.mark.parametrize("local_pod", [True, False], ids=["local-pod", "no-local-pod"])
def test_pre_1_24_xlb_rules(tmp_path, local_pod):
    node = NodeCapture(name="kind-worker", iptables_save=old_rules(local_pod), backend="legacy",
                       proxy_mode="iptables")
    bundle = write_bundle(ClusterSnapshot(cluster="old", nodes=[node]), tmp_path / "b")
    assert_explain_within_check(bundle)
    if not local_pod:  # explain always said so; check says it too now
        result = run_cli("check", "--bundle", bundle, "-o", "json")
        assert "etp-local-no-local-endpoints" in {f["id"] for f in result.json()["findings"]}


def _real_dumps() -> list[Path]:
    if not REAL_DUMPS.is_dir():
        return []
    return sorted(REAL_DUMPS.glob("*/source.txt")) + sorted(REAL_DUMPS.glob("_cut-down/*.txt"))


@pytest.mark.skipif(not REAL_DUMPS.is_dir(), reason=f"{REAL_DUMPS} is not on this machine")
@pytest.mark.parametrize("dump", _real_dumps(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_dumps(dump):
    refused = run_cli("check", "--bundle", str(dump), "-o", "json")
    if refused.exit_code == 2:
        pytest.skip(f"check refuses this paste today (reading pastes is another issue): {refused.stderr.strip()[:120]}")
    assert_explain_within_check(str(dump))


def test_nftables_nodes_with_planted_faults(tmp_path):
    """nftables nodes, as the real nft lists kube-proxy's table back: one node as kube-proxy writes it, one with a
    stale endpoint and a renamed chain (tests/test_nft_check.py's shapes), with the API and without."""
    import copy

    from nft_rules import ruleset
    from test_nft import SERVICES, _listings
    from test_nft_check import _service, _slice

    from svcdoctor.collect.snapshot import ApiObjects

    stale = copy.deepcopy(SERVICES)
    stale[0].endpoints = stale[0].endpoints + ["10.180.0.9"]
    nodes = []
    for name, text in (("node-a", ruleset(SERVICES)), ("node-b", ruleset(stale).replace("LV5ZVUGQ", "LV5ZVUGX"))):
        as_json, _ = _listings(text)
        nodes.append(NodeCapture(name=name, iptables_save="", nftables_json=as_json, internal_ip="192.168.0.2",
                                 proxy_mode="nftables"))
    api = ApiObjects(services=[_service(s) for s in SERVICES], endpointslices=[_slice(s) for s in SERVICES],
                     status="ok")
    bundle = write_bundle(ClusterSnapshot(cluster="nft", nodes=nodes, api=api), tmp_path / "bundle")
    assert assert_explain_within_check(str(bundle)) == 6  # three services, with the API and without
