"""`explain SERVICE` reads only what the service needs (model/scoped_read.py): the answer must be exactly the one a
read of the whole dump gives, for every service of the demo bundle and of kube-proxy's own test cases (with and
without the API objects), and the short dump must really be short."""

from __future__ import annotations

import pytest

from kube_proxy_cases import case_bundle, iter_cases
from svcdoctor.collect.bundle import demo_bundle_path
from svcdoctor.commands.explain import explain
from svcdoctor.inputs import InputOptions, load
from svcdoctor.model.explain import known_services
from svcdoctor.model.scoped_read import scope_to_service
from svcdoctor.render.json_doc import explain_document

CASES = [c for c in iter_cases() if c.api_objects().services]


def _explained(bundle: str, service: str, no_api: bool, scoped: bool) -> dict:
    opts = InputOptions(bundle=bundle, no_api=no_api, service=service if scoped else None)
    return explain_document(explain(load(opts), service))


def _assert_same_for_every_service(bundle: str, no_api: bool) -> int:
    everything = load(InputOptions(bundle=bundle, no_api=no_api))
    services = sorted(known_services(everything.rules, everything.cluster, everything.rules6))
    assert services
    for service in services:
        whole = _explained(bundle, service, no_api, scoped=False)
        part = _explained(bundle, service, no_api, scoped=True)
        assert part == whole, service
    return len(services)


@pytest.mark.parametrize("no_api", [False, True], ids=["api", "no-api"])
def test_demo_every_service_same_as_whole_dump(no_api):
    assert _assert_same_for_every_service(str(demo_bundle_path()), no_api) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kube_proxy_cases_every_service_same_as_whole_dump(case, tmp_path):
    bundle = case_bundle(case, tmp_path / "b")
    _assert_same_for_every_service(bundle, no_api=False)
    _assert_same_for_every_service(bundle, no_api=True)


def test_the_scoped_dump_keeps_one_service_and_the_shared_chains():
    case = next(c for c in CASES if "ns1/svc1:" in c.restore_text and "ns2/svc2:" in c.restore_text)
    scoped = scope_to_service(case.restore_text, "ns1/svc1")
    assert scoped is not None and len(scoped) < len(case.restore_text)
    assert "ns1/svc1" in scoped
    # the other service's chains and the jumps to them are gone (its filter-table verdicts may stay: harmless)
    assert not [ln for ln in scoped.splitlines() if "ns2/svc2" in ln and ("-j KUBE-" in ln or "-A KUBE-S" in ln)]
    assert "-A KUBE-POSTROUTING" in scoped and "-A KUBE-MARK-MASQ" in scoped
    assert scope_to_service(case.restore_text, "nowhere/none") is None
