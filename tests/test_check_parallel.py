"""`check` spreads the per-node comparison over the cores (checks/engine.py: diff_nodes_in_parallel, forked
workers). Whatever the number of workers, the findings are the same as one process finds: every planted fault of
tests/test_check.py on one node of three, with the same evidence and order."""

from __future__ import annotations

import pytest

import svcdoctor.checks.engine as engine
from test_check import CASES, NODE, PLANTS, make_bundle
from svcdoctor.commands.check import run_check
from svcdoctor.inputs import InputOptions, load


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
