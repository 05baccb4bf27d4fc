"""svcdoctor.collect.kube_api with the real kubernetes client against the stand-in API server (real HTTP)."""

from __future__ import annotations

import time

import pytest

from svcdoctor.collect import kube_api
from svcdoctor.errors import ExitStatus, InputError, UsageError

from . import scenario as sc
from .standin_apiserver import FORBIDDEN_TOKEN, StandinApiServer


def _names(items):
    return sorted(f"{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items)


def _without_type(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def test_reads_the_scenarios_objects_page_by_page(standin, kubeconfig):
    expected = sc.seed_scenario()
    before = len(standin.requests)
    api = kube_api.fetch_api_objects(kubeconfig=kubeconfig, cluster=sc.CLUSTER)

    assert api.status == "ok" and api.available
    for kind, got in (("Service", api.services), ("EndpointSlice", api.endpointslices), ("Pod", api.pods),
                      ("Node", api.nodes)):
        want = expected.objects_of(kind)
        assert _names(got) == _names(want), kind
        # the API's own camelCase JSON, with kind/apiVersion added back as `kubectl get -o json` does
        by_name = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in want}
        for item in got:
            original = by_name[(item["metadata"].get("namespace"), item["metadata"]["name"])]
            assert item["kind"] == kind and item["apiVersion"] == original["apiVersion"]
            assert _without_type(item) == _without_type(original)
    assert api.kube_proxy_config["mode"] == "iptables"
    assert api.kube_proxy_config["clusterCIDR"] == sc.CLUSTER_CIDR
    assert kube_api.proxy_mode(api.kube_proxy_config) == "iptables"

    # the stand-in answers 2 items a page: 9 pods take 5 requests, each after the first carrying `continue`
    pod_lists = [r for r in standin.requests[before:] if r.path == "/api/v1/pods"]
    assert len(pod_lists) == 5
    assert "continue" not in pod_lists[0].query and all("continue" in r.query for r in pod_lists[1:])
    assert all(r.query.get("limit") == str(kube_api.DEFAULT_PAGE_SIZE) for r in pod_lists)


def test_client_page_size_is_sent_as_limit(tmp_path):
    with StandinApiServer(sc.seed_scenario().api_objects() + sc.filler_services(7)) as server:
        path = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = kube_api.fetch_api_objects(kubeconfig=str(path), cluster=sc.CLUSTER, page_size=3)
        assert api.status == "ok"
        assert len(api.services) == 6 + 7
        lists = server.list_requests("services")
        assert [r.query.get("limit") for r in lists] == ["3"] * 5  # 13 services, 3 a page


def test_explain_reads_one_service_and_its_slices_by_label(standin, kubeconfig):
    before = len(standin.requests)
    api = kube_api.fetch_service_objects("default", "svc-nodeport-local", kubeconfig=kubeconfig, cluster=sc.CLUSTER)
    assert api.status == "ok"
    assert _names(api.services) == ["default/svc-nodeport-local"]
    assert len(api.endpointslices) == 1
    assert api.endpointslices[0]["metadata"]["labels"]["kubernetes.io/service-name"] == "svc-nodeport-local"
    assert _names(api.pods) == ["default/echo-local-1", "default/echo-local-2"]
    assert len(api.nodes) == 4
    slice_requests = [r for r in standin.requests[before:] if r.path.endswith("/endpointslices")]
    assert slice_requests[0].path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert slice_requests[0].query["labelSelector"] == "kubernetes.io/service-name=svc-nodeport-local"


def test_unknown_service_returns_all_services_for_close_matches(kubeconfig):
    api = kube_api.fetch_service_objects("default", "svc-nodeprot", kubeconfig=kubeconfig, cluster=sc.CLUSTER)
    assert api.status == "ok"
    assert "default/svc-nodeport" in _names(api.services)
    assert "default/svc-nodeprot" not in _names(api.services)
    assert api.endpointslices == [] and api.pods == []


def test_401_becomes_a_status(standin, tmp_path):
    path = standin.write_kubeconfig(tmp_path / "kubeconfig", token="not-a-known-token")
    api = kube_api.fetch_api_objects(kubeconfig=str(path), cluster=sc.CLUSTER)
    assert not api.available and api.services is None and api.pods is None
    assert "401" in api.status and "unauthorized" in api.status and standin.url in api.status


def test_403_becomes_a_status_with_the_servers_message(standin, tmp_path):
    path = standin.write_kubeconfig(tmp_path / "kubeconfig", token=FORBIDDEN_TOKEN)
    api = kube_api.fetch_api_objects(kubeconfig=str(path), cluster=sc.CLUSTER)
    assert not api.available
    assert "403" in api.status and "cannot list resource" in api.status


@pytest.mark.parametrize("fault", ["401", "403"])
def test_server_wide_auth_faults(fault, tmp_path):
    with StandinApiServer(sc.seed_scenario().api_objects(), fault=fault) as server:
        path = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = kube_api.fetch_service_objects("default", "svc-clusterip", kubeconfig=str(path), cluster=sc.CLUSTER)
        assert not api.available and f"HTTP {fault}" in api.status


def test_hung_api_server_costs_one_timeout(tmp_path):
    with StandinApiServer(sc.seed_scenario().api_objects(), fault="hang") as server:
        path = server.write_kubeconfig(tmp_path / "kubeconfig")
        start = time.monotonic()
        api = kube_api.fetch_api_objects(kubeconfig=str(path), cluster=sc.CLUSTER, timeout=1.0)
        elapsed = time.monotonic() - start
    assert not api.available
    assert "no answer" in api.status and "within 1s" in api.status
    assert elapsed < 2.5, f"a hung API server took {elapsed:.1f}s (client retries?)"


def test_unreachable_api_server(tmp_path):
    server = StandinApiServer([]).start()
    path = server.write_kubeconfig(tmp_path / "kubeconfig")
    server.stop()  # nothing listens on that port any more
    api = kube_api.fetch_api_objects(kubeconfig=str(path), cluster=sc.CLUSTER, timeout=2.0)
    assert not api.available and "cannot reach" in api.status


def test_no_api_is_skipped_without_touching_anything(standin):
    before = len(standin.requests)
    api = kube_api.fetch_api_objects(kubeconfig="/nonexistent/kubeconfig", cluster=sc.CLUSTER, no_api=True)
    assert api.status == kube_api.SKIPPED and api.services is None
    assert len(standin.requests) == before


def test_missing_kubeconfig_flag_is_a_usage_error():
    with pytest.raises(InputError) as info:
        kube_api.fetch_api_objects(kubeconfig="/nonexistent/kubeconfig", cluster=sc.CLUSTER)
    assert info.value.exit_status == ExitStatus.USAGE and "/nonexistent/kubeconfig" in str(info.value)


def test_unknown_context_flag_is_a_usage_error(kubeconfig):
    with pytest.raises(UsageError) as info:
        kube_api.fetch_api_objects(kubeconfig=kubeconfig, context="kind-nope")
    assert "kind-nope" in str(info.value) and "kind-myk8s" in str(info.value)


def test_cluster_without_its_kind_context_is_a_status(kubeconfig):
    # never fall back to whatever the current context is: that may be another cluster entirely
    api = kube_api.fetch_api_objects(kubeconfig=kubeconfig, cluster="other")
    assert not api.available and "kind-other" in api.status


def test_no_kubeconfig_at_all_is_a_status(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    api = kube_api.fetch_api_objects(cluster=sc.CLUSTER)
    assert not api.available and "no kubeconfig" in api.status


def test_kubeconfig_from_env_and_current_context(standin, kubeconfig, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    api = kube_api.fetch_api_objects()  # no flags at all: $KUBECONFIG, its current context
    assert api.status == "ok" and len(api.nodes) == 4
