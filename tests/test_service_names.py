"""The names users hold (issue #11): svc/NAME, NS/NAME, -n, -A, an address or a node port, the `services` list, and
"did you mean" that names each service once."""

import pytest

from cli_run import run_cli
from svcdoctor.model.service_ref import ServiceRef, parse_service_ref


@pytest.mark.parametrize("text, ref", [
    ("web", ServiceRef(name="web")),
    ("shop/web", ServiceRef(name="web", namespace="shop")),
    ("svc/web", ServiceRef(name="web")),
    ("service/web", ServiceRef(name="web")),
    ("services/shop/web", ServiceRef(name="web", namespace="shop")),
    ("10.200.1.73", ServiceRef(host="10.200.1.73")),
    ("10.200.1.73:9000", ServiceRef(host="10.200.1.73", port=9000)),
    ("[fd00::1]:80", ServiceRef(host="fd00::1", port=80)),
    ("fd00::1", ServiceRef(host="fd00::1")),
    (":32624", ServiceRef(port=32624)),
])
def test_what_a_user_types_is_read_as_kubectl_reads_it(text, ref):
    assert parse_service_ref(text) == ref


@pytest.mark.parametrize("args, service, ports", [
    (["svc/svc-clusterip"], "svc-clusterip", ["svc-webport"]),
    (["default/svc-clusterip"], "svc-clusterip", ["svc-webport"]),
    (["10.200.1.73"], "svc-clusterip", ["svc-webport"]),
    (["10.200.1.73:9000"], "svc-clusterip", ["svc-webport"]),
    ([":32624"], "svc-nodeport", ["svc-webport"]),
    (["svc-nodeport", "--port", "32624"], "svc-nodeport", ["svc-webport"]),
    (["kube-dns", "-A"], "kube-dns", ["dns", "dns-tcp", "metrics"]),
    (["10.200.1.10:9153"], "kube-dns", ["metrics"]),
])
def test_explain_finds_the_service_by_what_the_user_holds(args, service, ports):
    r = run_cli("explain", *args, "--demo", "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["service"]["name"] == service
    assert [p["name"] for p in doc["ports"]] == ports


def test_an_unknown_address_or_no_argument_is_a_hint_and_exit_2():
    r = run_cli("explain", "10.9.9.9", "--demo")
    assert r.exit_code == 2 and "svcdoctor services" in r.stderr
    r = run_cli("explain", "--demo")
    assert r.exit_code == 2 and "svcdoctor services" in r.stderr and "NAMESPACE/NAME" in r.stderr


def test_did_you_mean_names_each_service_once():
    r = run_cli("explain", "svc-cluster", "--demo")
    assert r.exit_code == 2
    hint = r.stderr.split("did you mean ", 1)[1].rstrip("?\n")
    names = [n.strip() for n in hint.split(",")]
    assert "default/svc-clusterip" in names and len(names) == len(set(names))
    assert all("/" in n for n in names)  # full names, never "default/web, web"


def test_services_lists_what_the_rules_hold():
    r = run_cli("services", "--demo")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "PORT(S)", "ENTRIES", "ENDPOINTS", "NODES"]
    row = next(line for line in lines if " svc-nodeport " in line).split()
    assert row == ["default", "svc-nodeport", "NodePort", "9000:32624/TCP", "10.200.1.184:9000,:32624", "3", "4/4"]
    assert "kube-dns" not in r.stdout and "-A" in r.stderr  # kubectl's meaning: the default namespace
    every = run_cli("svc", "--demo", "-A", "-o", "json").json()
    assert every["kind"] == "ServiceList"
    assert {(s["namespace"], s["name"]) for s in every["items"]} >= {("kube-system", "kube-dns"),
                                                                     ("default", "svc-local")}


def test_check_says_the_namespaces_it_checked():
    assert "in every namespace" in run_cli("check", "--demo").stdout.splitlines()[0]
    assert "in every namespace" in run_cli("check", "--demo", "-A").stdout.splitlines()[0]
    r = run_cli("check", "--demo", "-n", "kube-system", "-o", "json")
    assert r.json()["namespace"] == "kube-system" and r.json()["services"] == 1
    assert run_cli("check", "--demo", "-n", "x", "-A").exit_code == 2
