"""`check` spreads the per-node comparison over the cores (checks/engine.py: diff_nodes_in_parallel, forked
workers). Whatever the number of workers, the findings are the same as one process finds: every planted fault of
tests/test_check.py on one node of three, with the same evidence and order."""

from __future__ import annotations

import json

import pytest

import svcdoctor.checks.engine as engine
import svcdoctor.inputs as inputs
from cli_run import run_cli
from test_check import CASES, NODE, PLANTS, make_bundle
from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.commands.check import run_check
from svcdoctor.inputs import InputOptions, LoadedInput, load
from svcdoctor.results import CheckResult


def _findings(bundle: str) -> list[dict]:
    return [f.to_dict() for f in run_check(load(InputOptions(bundle=bundle))).findings]


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_forked_workers_find_what_one_process_finds(tmp_path, monkeypatch, plant):
    name, edit, _ = PLANTS[plant]
    case = CASES[name]
    bundle = make_bundle(tmp_path / "b", case, {NODE: edit(case.restore_text), "node-b": case.restore_text,
                                                "node-c": case.restore_text})
    monkeypatch.setattr(engine, "PARALLEL_MIN_RULES", 10**9)
    alone = _findings(bundle)
    monkeypatch.setattr(engine, "PARALLEL_MIN_RULES", 0)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 3)
    forked = _findings(bundle)
    assert forked == alone
    assert any(f["node"] == NODE for f in alone)


def test_small_inputs_stay_in_one_process(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("forked for a small input")
    monkeypatch.setattr(engine.multiprocessing, "get_context", refuse)
    assert run_check(load(InputOptions(demo=True))).findings


# --- a big bundle: each node read in the worker that checks it (inputs.load(defer=True), engine.check_deferred_nodes)

def _eager(monkeypatch):
    """load reads every node itself, as for any command but check."""
    monkeypatch.setattr(inputs, "_checked_iptables_nodes", lambda nodes: False)


def _read_here(monkeypatch):
    """load leaves the nodes unread, and check reads them in its own process (too small to fork for)."""
    monkeypatch.setattr(engine, "PARALLEL_MIN_RULES", 10**9)


def _read_in_workers(monkeypatch):
    monkeypatch.setattr(engine, "PARALLEL_MIN_RULES", 0)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 3)


WAYS = {"eager": _eager, "read here": _read_here, "read in workers": _read_in_workers}


def _every_way(monkeypatch, *args: str) -> dict[str, tuple[int, str, str]]:
    """`svcdoctor check ARGS` through the real command line, each way: (exit status, stdout, stderr)."""
    out = {}
    for way, setup in WAYS.items():
        with monkeypatch.context() as m:
            setup(m)
            r = run_cli("check", *args)
        out[way] = (r.exit_code, r.stdout, r.stderr)
    return out


def _result(bundle: str) -> tuple[CheckResult, LoadedInput]:
    loaded = load(InputOptions(bundle=bundle), defer=True)
    return run_check(loaded), loaded


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_nodes_read_in_workers_check_as_nodes_read_here(tmp_path, monkeypatch, plant):
    name, edit, _ = PLANTS[plant]
    case = CASES[name]
    bundle = make_bundle(tmp_path / "b", case, {NODE: edit(case.restore_text), "node-b": case.restore_text,
                                                "node-c": case.restore_text}, config=plant.startswith("orphan"))
    ways = _every_way(monkeypatch, "--bundle", bundle, "-o", "json")
    assert ways["read here"] == ways["eager"] and ways["read in workers"] == ways["eager"]
    assert any(f["node"] == NODE for f in json.loads(ways["eager"][1])["findings"])
    # the rest of check's result too, and the rules stayed in the workers
    with monkeypatch.context() as m:
        _read_here(m)
        here, loaded_here = _result(bundle)
    with monkeypatch.context() as m:
        _read_in_workers(m)
        workers, loaded_workers = _result(bundle)
    assert workers == here
    assert (loaded_workers.warnings, loaded_workers.failed) == (loaded_here.warnings, loaded_here.failed)
    assert sorted(loaded_here.rules) == sorted([NODE, "node-b", "node-c"]) and loaded_workers.rules == {}


KUBELET_ONLY = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
"""


def test_what_the_workers_read_is_said_as_load_says_it(tmp_path, monkeypatch):
    """A partial dump (a warning), an unreadable one (a node that could not be read: exit status 4), a node without
    kube-proxy's rules, the ConfigMap saying another mode, filters and a usage error after reading: the same lines
    on stderr, in the same order, and the same document."""
    case = CASES["01-overall-multiple-services"]
    partial = "".join(ln + "\n" for ln in case.nat_text.splitlines() if "KUBE-SVC-" in ln or ln.startswith("*")
                      or ln == "COMMIT")
    dumps = {NODE: case.restore_text, "node-b": partial, "node-c": "this is not a dump\n", "node-d": KUBELET_ONLY}
    bundle = make_bundle(tmp_path / "b", case, dumps)
    for args in (("-o", "json"), ("-n", "ns2", "-o", "json"), ("-l", "app=none"), ("-n", "ns2", "-A")):
        ways = _every_way(monkeypatch, "--bundle", bundle, *args)
        assert ways["read here"] == ways["eager"] and ways["read in workers"] == ways["eager"], args
    code, _, err = ways["eager"]
    assert code == 2 and "partial dump" in err and "node-c could not be read" in err
    code, out, _ = _every_way(monkeypatch, "--bundle", bundle, "-o", "json")["eager"]
    assert {f["id"] for f in json.loads(out)["findings"] if f["node"] == "node-d"} == {"no-kube-proxy-rules"}

    nftables = make_bundle(tmp_path / "nft", case, dumps, config=True)
    config = tmp_path / "nft" / "cluster" / "kube-proxy-config.json"
    config.write_text(config.read_text().replace('"iptables"', '"nftables"', 1))
    ways = _every_way(monkeypatch, "--bundle", nftables, "-o", "json")
    assert ways["read here"] == ways["eager"] and ways["read in workers"] == ways["eager"]
    mismatched = {f["node"] for f in json.loads(ways["eager"][1])["findings"] if f["id"] == "proxy-mode-mismatch"}
    assert mismatched == {NODE, "node-b"}  # the nodes with kube-proxy's iptables rules


def test_dual_stack_nodes_read_in_workers(tmp_path, monkeypatch):
    """ip6tables beside iptables: both families compared in the worker, a stale IPv6 endpoint found on its node."""
    from test_dual_stack import SERVICE, SLICES, endpoint_slice

    from svcdoctor.model.cluster import build_cluster_model
    from svcdoctor.model.expected import ProxySettings, expected_restore_text

    def dumps(slices, family):
        settings = ProxySettings(node_name="node-a", cluster_cidr="fd00:10:244::/56" if family == "IPv6"
                                 else "10.244.0.0/16", ip_family=family)
        text = expected_restore_text(build_cluster_model([SERVICE], slices), settings)
        return text["filter"] + text["nat"]

    stale = [SLICES[0], endpoint_slice("IPv6", ["fd00:10:244:1::5", "fd00:10:244:3::9"])]
    nodes = [NodeCapture(name=n, iptables_save=dumps(SLICES, "IPv4"), proxy_mode="iptables",
                         ip6tables_save=dumps(stale if n == "node-c" else SLICES, "IPv6"))
             for n in ("node-a", "node-b", "node-c")]
    bundle = str(tmp_path / "b")
    write_bundle(ClusterSnapshot(cluster="dual", nodes=nodes, api=ApiObjects(services=[SERVICE],
                                                                             endpointslices=SLICES, status="ok")),
                 bundle)
    ways = _every_way(monkeypatch, "--bundle", bundle, "-o", "json")
    assert ways["read here"] == ways["eager"] and ways["read in workers"] == ways["eager"]
    (stale_endpoint,) = [f for f in json.loads(ways["eager"][1])["findings"] if f["id"] == "stale-endpoint"]
    assert stale_endpoint["node"] == "node-c" and "fd00:10:244:3::9" in stale_endpoint["message"]
