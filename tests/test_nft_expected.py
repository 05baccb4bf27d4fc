"""kube-proxy's nftables proxier as svcdoctor models it (svcdoctor/model/nft/expected.py), checked against kube-proxy's
own tests (pkg/proxy/nftables/proxier_test.go, v1.34–1.35 layout; the rulesets of every layout are
tests/test_nft_generations.py's):

* The flows-only tests (TestNoEndpointsReject … TestInternalExternalMasquerade): each test's Services and
  EndpointSlices (written here as API objects) → generated ruleset → loaded into a real kernel with `nft -f` →
  listed back as JSON and as text → every packet flow of the test traced, with kube-proxy's answer (endpoint set or
  DROP / REJECT, and masquerade), by the tracer and by `svcdoctor trace` as a user runs it on each listing.

The flows come from the reference cases (SVCDOCTOR_NFT_CASES, docs/explanation/kube-proxy-nftables.md); without
them these tests skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nft_cases import (
    CASES,
    TRACER_NODE_IPS,
    endpoint_slice,
    ep,
    eport,
    fake_settings,
    kernel_listings,
    needs_cases,
    port,
    service,
    trace_answer,
)

from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.nft import kube_proxy_tables, read_listing
from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset
from svcdoctor.model.nft_trace import trace_nft_packet


def run_flows(services: list[dict], slices: list[dict], settings: NftProxySettings, flows: list[dict]) -> int:
    model = build_cluster_model(services, slices)
    assert not model.warnings
    text = expected_ruleset(model.service_ports, settings)
    as_json, as_text = kernel_listings(text, settings.ip_family)
    failures = []
    for form, listing in (("json", as_json), ("text", as_text)):
        (rs,) = kube_proxy_tables(read_listing(listing))
        for flow in flows:
            result = trace_nft_packet(rs, flow["sourceIP"], flow["destIP"], flow["destPort"], flow["protocol"],
                                      TRACER_NODE_IPS)
            want = ", ".join(sorted(x.strip() for x in flow["output"].split(","))) if flow["output"] else ""
            got = (trace_answer(result), result.masquerade)
            if result.uncertain:
                failures.append(f"{form}: {flow['name']}: uncertain rules {result.uncertain}")
            if got != (want, flow["masq"]):
                failures.append(f"{form}: {flow['name']}: got {got}, kube-proxy {(want, flow['masq'])}")
    failures += _cli_flows(as_json, as_text, flows)
    from test_nft_generations import assert_names_verified

    assert_names_verified(text, as_json, as_text)  # every hashed name, in the text and as nft lists it
    assert not failures, "\n".join(failures) + "\n" + text
    return len(flows)


def _cli_flows(as_json: str, as_text: str, flows: list[dict]) -> list[str]:
    """The same flows through `svcdoctor trace` as a user runs it, on each listing given as a single-file bundle."""
    import tempfile

    from cli_run import run_cli

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for form, listing in (("json", as_json), ("text", as_text)):
            dump = Path(tmp) / f"node.{'json' if form == 'json' else 'nft'}"
            dump.write_text(listing)
            node_ips = [a for ip in TRACER_NODE_IPS for a in ("--node-ip", ip)]
            for flow in flows:
                dst = f"[{flow['destIP']}]" if ":" in flow["destIP"] else flow["destIP"]
                r = run_cli("trace", "--dst", f"{dst}:{flow['destPort']}", "--src", flow["sourceIP"], "--proto",
                            flow["protocol"], *node_ips, "--bundle", str(dump), "-o", "json")
                if r.exit_code != 0:
                    failures.append(f"cli {form}: {flow['name']}: exit {r.exit_code}: {r.stderr.strip()}")
                    continue
                doc = r.json()
                doc = doc["items"][0] if "items" in doc else doc
                if doc["endpoints"]:
                    got = ", ".join(sorted(e["ip"] + ":" + str(e["port"]) if ":" not in e["ip"]
                                           else f"[{e['ip']}]:{e['port']}" for e in doc["endpoints"]))
                else:
                    got = doc["verdict"].upper() if doc["verdict"] in ("drop", "reject") else ""
                want = ", ".join(sorted(x.strip() for x in flow["output"].split(","))) if flow["output"] else ""
                if (got, doc["masquerade"]) != (want, flow["masq"]):
                    failures.append(f"cli {form}: {flow['name']}: got {(got, doc['masquerade'])}, "
                                    f"kube-proxy {(want, flow['masq'])}")
    return failures


def _flows(case: str) -> dict:
    return json.loads((CASES / case / "flows.json").read_text())


# --- 02 … 11 -----------------------------------------------------------------------------------------------
@needs_cases
def test_every_flow_of_the_cases_is_run():
    """The tests below take variants by index: every variant and flow of the cases is one of theirs (207 flows)."""
    total = 0
    for folder in sorted(CASES.glob("[01][0-9]-*")):
        if not "02" <= folder.name[:2] <= "11":
            continue
        doc = _flows(folder.name)
        variants = doc.get("variants") or [{"flows": doc["flows"]}]
        assert len(variants) == (4 if folder.name[:2] in ("05", "08", "09", "10", "11") else 1), folder.name
        total += sum(len(v["flows"]) + len(v.get("afterEndpointSliceDeleted", [])) for v in variants)
    assert total == 207


@needs_cases
def test_02_no_endpoints_reject():
    svcs = [service("ns1", "svc1", "172.30.0.41", [port(node_port=3001)], "LoadBalancer", ["1.2.3.4"],
                    externalIPs=["192.168.99.11"])]
    run_flows(svcs, [], fake_settings(), _flows("02-no-endpoints-reject")["flows"])


@needs_cases
def test_03_clusterip_general():
    svcs = [
        service("ns1", "svc1", "172.30.0.41", [port("http")]),
        service("ns2", "svc2", "172.30.0.42", [port("http"), port("https", 443, target=8443),
                                               port("dns-udp", 53, "UDP"), port("dns-tcp", 53, target=5353),
                                               port("dns-sctp", 53, "SCTP")]),
    ]
    slices = [
        endpoint_slice("ns1", "svc1", [ep("10.180.0.1", "test-node")], [eport("http")]),
        endpoint_slice("ns2", "svc2", [ep("10.180.0.1", "test-node"), ep("10.180.2.1", "node2")],
                       [eport("http"), eport("https", 8443), eport("dns-udp", 53, "UDP"),
                        eport("dns-tcp", 5353), eport("dns-sctp", 53, "SCTP")]),
    ]
    run_flows(svcs, slices, fake_settings(), _flows("03-clusterip-general")["flows"])


@needs_cases
@pytest.mark.parametrize("index", range(4))
def test_05_nodeports(index):
    variant = _flows("05-nodeports")["variants"][index]
    ipv6 = variant["family"] == "IPv6"
    if ipv6:
        svcs = [service("ns1", "svc1", "fd00:172:30::41", [port(node_port=3001)], "NodePort",
                        ipFamilies=["IPv6"])]
        eps = [ep("fd00:10:180::1"), ep("fd00:10:180::2:1", "test-node")]
    else:
        svcs = [service("ns1", "svc1", "172.30.0.41", [port(node_port=3001)], "NodePort")]
        eps = [ep("10.180.0.1"), ep("10.180.2.1", "test-node")]
    slices = [endpoint_slice("ns1", "svc1", eps, [eport()], "IPv6" if ipv6 else "IPv4")]
    settings = fake_settings(variant["family"], variant["nodePortAddresses"])
    run_flows(svcs, slices, settings, variant["flows"])


def _lb_svc1(etp: str | None, health: int | None = 30000) -> dict:
    extra = {"externalTrafficPolicy": etp} if etp else {}
    if etp == "Local" and health:
        extra["healthCheckNodePort"] = health
    return service("ns1", "svc1", "172.30.0.41", [port(node_port=3001)], "LoadBalancer", ["1.2.3.4"],
                   externalIPs=["192.168.99.11"], **extra)


@needs_cases
def test_06_etp_local():
    slices = [endpoint_slice("ns1", "svc1", [ep("10.180.0.1"), ep("10.180.2.1", "test-node")], [eport()])]
    run_flows([_lb_svc1("Local")], slices, fake_settings(), _flows("06-etp-local")["flows"])


@needs_cases
def test_07_etp_cluster():
    slices = [endpoint_slice("ns1", "svc1", [ep("10.180.0.1"), ep("10.180.2.1", "test-node")], [eport()])]
    run_flows([_lb_svc1("Cluster")], slices, fake_settings(), _flows("07-etp-cluster")["flows"])


@needs_cases
def test_04_loadbalancer_source_ranges():
    svcs = [service("ns1", "svc1", "172.30.0.41", [port(node_port=3001)], "LoadBalancer", ["1.2.3.4", "5.6.7.8"],
                    loadBalancerSourceRanges=["192.168.0.0/24", " 203.0.113.0/25"])]
    slices = [endpoint_slice("ns1", "svc1", [ep("10.180.0.1")], [eport()])]
    run_flows(svcs, slices, fake_settings(), _flows("04-loadbalancer-source-ranges")["flows"])


def _variant_endpoints(variant: dict) -> list[dict]:
    return [ep(e["ip"], e.get("nodeName"), e.get("ready"), e.get("serving"), e.get("terminating"))
            for e in variant["endpoints"]]


@needs_cases
@pytest.mark.parametrize("index", range(4))
def test_08_internal_traffic_policy(index):
    variant = _flows("08-internal-traffic-policy")["variants"][index]
    svcs = [service("ns1", "svc1", "172.30.1.1", [port("")], selector={"foo": "bar"},
                    internalTrafficPolicy=variant["internalTrafficPolicy"])]
    slices = [endpoint_slice("ns1", "svc1", _variant_endpoints(variant), [eport("")])]
    run_flows(svcs, slices, fake_settings(), variant["flows"])
    run_flows(svcs, [], fake_settings(), variant["afterEndpointSliceDeleted"])


@needs_cases
@pytest.mark.parametrize("case", ["09-terminating-etp-local", "10-terminating-etp-cluster"])
@pytest.mark.parametrize("index", range(4))
def test_09_10_terminating_endpoints(case, index):
    variant = _flows(case)["variants"][index]
    etp = "Local" if case.startswith("09") else "Cluster"
    extra = {"healthCheckNodePort": 30000} if etp == "Local" else {}
    svcs = [service("ns1", "svc1", "172.30.1.1", [port("")], "LoadBalancer", ["1.2.3.4"],
                    externalTrafficPolicy=etp, **extra)]
    slices = [endpoint_slice("ns1", "svc1", _variant_endpoints(variant), [eport("")])]
    run_flows(svcs, slices, fake_settings(), variant["flows"])
    run_flows(svcs, [], fake_settings(), variant["afterEndpointSliceDeleted"])


@needs_cases
@pytest.mark.parametrize("index", range(4))
def test_11_internal_external_masquerade(index):
    variant = _flows("11-internal-external-masquerade")["variants"][index]
    svcs = [
        service("ns1", "svc1", "172.30.0.41", [port(node_port=3001)], "LoadBalancer", ["1.2.3.4"],
                healthCheckNodePort=30001),
        service("ns2", "svc2", "172.30.0.42", [port(node_port=3002)], "LoadBalancer", ["5.6.7.8"],
                healthCheckNodePort=30002, externalTrafficPolicy="Local"),
        service("ns3", "svc3", "172.30.0.43", [port(node_port=3003)], "LoadBalancer", ["9.10.11.12"],
                healthCheckNodePort=30003, internalTrafficPolicy="Local"),
    ]
    slices = [endpoint_slice(f"ns{i}", f"svc{i}", [ep(f"10.180.0.{i}", "test-node"), ep(f"10.180.1.{i}", "remote")],
                             [eport()]) for i in (1, 2, 3)]
    settings = fake_settings(masquerade_all=variant["masqueradeAll"], local_detector=variant["localDetector"])
    run_flows(svcs, slices, settings, variant["flows"])


# --- 01: the whole ruleset of every layout is tests/test_nft_generations.py's test_01_overall_ruleset_of_each_generation
