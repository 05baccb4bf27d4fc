"""The model of what kube-proxy programs (svcdoctor.model.expected) against kube-proxy's own expected dumps,
and against the real iptables-restore in a network namespace."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import replace

import pytest
from kube_proxy_cases import FIXTURES, iter_cases

from svcdoctor.errors import InputError
from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.expected import (
    expected_chains,
    expected_restore_text,
    expected_service_ports,
    restore_input,
)
from svcdoctor.model.hashes import endpoint_chain, service_chain
from svcdoctor.model.proxy_settings import ProxySettings, infer_settings_from_rules, settings_from_kube_proxy_config

CASES = list(iter_cases())
BY_NAME = {case.name: case for case in CASES}

# every iptables case of kube-proxy-cases/ (not nft-01), case 10 as its four variants
EXPECTED_NAMES = [
    "01-overall-multiple-services",
    "02-loadbalancer-source-ranges",
    "03-etp-local-lb-session-affinity",
    "04-etp-local-nodeport",
    "04b-etp-local-nodeport-no-local-detector",
    "05-clusterip-no-endpoints",
    "06-sctp-clusterip-hairpin",
    "07a-itp-cluster",
    "07b-itp-local-with-local-endpoint",
    "07c-itp-local-no-local-endpoint",
    "08a-terminating-etp-local-ready-endpoints-exist",
    "08b-terminating-etp-local-only-terminating-endpoints",
    "08c-terminating-etp-local-terminating-on-remote-node",
    "08d-terminating-etp-local-no-usable-endpoints",
    "09-nodeport-cluster",
    "10-internal-external-masquerade/base",
    "10-internal-external-masquerade/no-local-detector",
    "10-internal-external-masquerade/masquerade-all",
    "10-internal-external-masquerade/masquerade-all-no-local-detector",
]


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_every_case_and_variant_is_there_with_its_169_flows():
    assert [case.name for case in CASES] == EXPECTED_NAMES
    assert sum(len(case.flows) for case in CASES) == 169  # 49 upstream + 4 x 30 for case 10
    assert [len(c.flows) for c in CASES if c.variant] == [30, 30, 30, 30]
    for case in CASES:
        assert case.nat_text.startswith("*nat\n") and case.filter_text.startswith("*filter\n")
        assert case.settings.node_name == "test-hostname"
        assert case.node_ip == "192.168.0.2"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture_objects_are_kubectl_lists(case):
    for kind, item_kind, api_version in (
        ("services", "Service", "v1"),
        ("endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
    ):
        doc = json.loads((case.cluster_dir / f"{kind}.json").read_text())
        assert doc["apiVersion"] == "v1" and doc["kind"] == "List"
        for item in doc["items"]:
            assert item["kind"] == item_kind and item["apiVersion"] == api_version
            assert item["metadata"]["name"] and item["metadata"]["namespace"]
            if item_kind == "EndpointSlice":
                assert item["metadata"]["labels"]["kubernetes.io/service-name"]
                assert item["addressType"] == "IPv4"
                for ep in item["endpoints"]:
                    assert ep["addresses"] and isinstance(ep["conditions"], dict)
            else:
                assert item["spec"]["ports"] and "status" in item
    model = case.cluster_model()
    assert model.service_ports, "build_cluster_model found no service port"


@pytest.mark.parametrize("table", ["nat", "filter"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_expected_text_equals_kube_proxy_dump(case, table):
    got = expected_restore_text(case.cluster_model(), case.settings)[table]
    want = case.nat_text if table == "nat" else case.filter_text
    assert _lines(got) == _lines(want)
    assert got == want  # and byte for byte (final newline included)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_expected_chains_is_the_text_by_chain(case):
    chains = expected_chains(case.cluster_model(), case.settings)
    texts = expected_restore_text(case.cluster_model(), case.settings)
    for table in ("filter", "nat"):
        declared = [ln[1:].split()[0] for ln in _lines(texts[table]) if ln.startswith(":")]
        assert declared == [chain for t, chain in chains if t == table]
        rules = [ln for ln in _lines(texts[table]) if ln.startswith("-A ")]
        assert rules == [ln for (t, _), lines in chains.items() if t == table for ln in lines]
        for (t, chain), lines in chains.items():
            assert all(ln.startswith(f"-A {chain} ") for ln in lines)


def test_the_comparison_would_catch_a_changed_setting():
    # guard against a test that cannot fail: other settings must give other text
    case = BY_NAME["10-internal-external-masquerade/base"]
    model = case.cluster_model()
    for change in (
        {"masquerade_all": True},
        {"cluster_cidr": None},
        {"random_fully": True},
        {"masquerade_mark": None},
        {"node_name": "other-node"},
    ):
        other = expected_restore_text(model, replace(case.settings, **change))
        assert other["nat"] != case.nat_text, change


# --- decisions, per service port --------------------------------------------------------------------------


def _port(case_name: str, service: str):
    case = BY_NAME[case_name]
    plans = {p.service_port.service_key: p for p in expected_service_ports(case.cluster_model(), case.settings)}
    return plans[service]


def test_etp_local_without_local_endpoints_is_the_blackhole_signature():
    svc2 = _port("01-overall-multiple-services", "ns2/svc2")
    assert svc2.has_endpoints and not svc2.has_external_endpoints
    assert svc2.external_filter == "DROP" and svc2.internal_filter is None
    assert svc2.chain_names() == {
        "svc": "KUBE-SVC-GNZBNJ2PO5MGZ6GT",
        "svl": None,
        "ext": "KUBE-EXT-GNZBNJ2PO5MGZ6GT",
        "fw": None,
    }
    ext_rules = [line for table, chain, line in svc2.rules if chain == svc2.ext_chain]
    assert not any(line.endswith("-j " + svc2.svl_chain) for line in ext_rules)  # no final jump to KUBE-SVL
    # the health check ACCEPT stays, so the load balancer learns this node has nothing to serve
    chain, rule = svc2.filter_rules()[-1]
    assert chain == "KUBE-NODEPORTS" and "health check node port" in rule and rule.endswith("-j ACCEPT")


def test_no_endpoints_rejects_and_itp_local_without_local_drops():
    svc6 = _port("01-overall-multiple-services", "ns6/svc6")
    assert (svc6.has_endpoints, svc6.internal_filter, svc6.chain_names()["svc"]) == (False, "REJECT", None)
    itp = _port("07c-itp-local-no-local-endpoint", "ns1/svc1")
    assert itp.has_endpoints and itp.internal_filter == "DROP" and not itp.nat_chains


def test_terminating_endpoints_are_a_fallback_per_policy():
    only_terminating = _port("08b-terminating-etp-local-only-terminating-endpoints", "ns1/svc1")
    assert [e.endpoint.ip for e in only_terminating.local_endpoints] == ["10.0.1.2", "10.0.1.3"]
    assert [e.endpoint.ip for e in only_terminating.cluster_endpoints] == ["10.0.1.5"]
    ready = _port("08a-terminating-etp-local-ready-endpoints-exist", "ns1/svc1")
    assert [e.endpoint.ip for e in ready.local_endpoints] == ["10.0.1.1", "10.0.1.2"]
    assert [e.endpoint.ip for e in ready.reachable_endpoints] == ["10.0.1.1", "10.0.1.2", "10.0.1.5"]
    none = _port("08d-terminating-etp-local-no-usable-endpoints", "ns1/svc1")
    assert not none.has_endpoints and none.external_filter == "REJECT" and none.health_check_node_port == 30000


def test_sep_chains_are_kube_proxy_hashes_of_the_target_port():
    svc4 = _port("01-overall-multiple-services", "ns4/svc4")
    assert svc4.svc_chain == service_chain("KUBE-SVC-", "ns4/svc4:p80", "tcp") == "KUBE-SVC-4SW47YFZTEDKD3PK"
    assert {e.endpoint.address: e.chain for e in svc4.reachable_endpoints} == {
        "10.180.0.4:80": "KUBE-SEP-UKSFD7AGPMPPLUHC",
        "10.180.0.5:80": "KUBE-SEP-C6EBXVWJJZMIWKLZ",
    }
    assert endpoint_chain("ns4/svc4:p80", "tcp", "10.180.0.5:80") == "KUBE-SEP-C6EBXVWJJZMIWKLZ"
    assert [e.local for e in svc4.reachable_endpoints] == [False, True]


# --- beyond the fake proxier: real kube-proxy and later versions ------------------------------------------


def _settings(**kw) -> ProxySettings:
    base = dict(node_name="kind-worker", node_ips=("172.18.0.3",), cluster_cidr="10.244.0.0/16")
    base.update(kw)
    return ProxySettings(**base)


def _svc(name="web", ns="default", svc_type="ClusterIP", ports=None, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": svc_type,
            "clusterIP": "10.96.0.10",
            "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}],
            **spec,
        },
        "status": {},
    }


def _slice(service="web", ns="default", endpoints=(), port_name="http", port=8080) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def _ep(ip, node="kind-worker", **conditions) -> dict:
    return {"addresses": [ip], "conditions": conditions, "nodeName": node}


def _nat(model, settings) -> list[str]:
    return _lines(expected_restore_text(model, settings)["nat"])


def test_real_kube_proxy_mark_and_random_fully():
    model = build_cluster_model([_svc()], [_slice(endpoints=[_ep("10.244.1.5")])])
    nat = _nat(model, _settings())
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000" in nat
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN" in nat
    snat = '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    assert nat.count(snat + " --random-fully") == 1
    nat15 = _nat(model, _settings(masquerade_bit=15, random_fully=False))
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00008000" in nat15


def test_invalid_drop_by_version_and_liberal_conntrack():
    model = build_cluster_model([], [])
    invalid = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"

    def filt(**kw):
        return _lines(expected_restore_text(model, _settings(**kw))["filter"])

    assert invalid in filt(kube_minor=28, conntrack_tcp_be_liberal=True)  # 1.28 always drops INVALID
    assert invalid in filt(kube_minor=30, conntrack_tcp_be_liberal=False)
    assert not any("INVALID" in ln for ln in filt(kube_minor=29, conntrack_tcp_be_liberal=True))
    assert (
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"
        in filt(kube_minor=31, nfacct=True)
    )


def test_localhost_nodeport_nfacct_rule_from_1_31():
    svc = _svc(svc_type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}])
    model = build_cluster_model([svc], [_slice(endpoints=[_ep("10.244.1.5")])])
    nat = _nat(model, _settings(kube_minor=31, nfacct=True))
    rules = [ln for ln in nat if ln.startswith("-A KUBE-NODEPORTS")]
    hashed = service_chain("KUBE-EXT-", "default/web:http", "tcp")
    assert rules == [
        f"-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp -d 127.0.0.0/8 --dport 30080 "
        f"-m nfacct --nfacct-name localhost_nps_accepted_pkts -j {hashed}",
        f"-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30080 -j {hashed}",
    ]
    assert len([ln for ln in _nat(model, _settings(kube_minor=30, nfacct=True)) if "KUBE-NODEPORTS -m" in ln]) == 1


def test_nodeport_addresses_and_localhost():
    model = build_cluster_model([], [])
    last = (
        "-A KUBE-SERVICES -m comment --comment "
        '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    )
    assert f"{last} -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in _nat(
        model, _settings(localhost_node_ports=False)
    )
    # 127.0.0.0/8 listed: the loopback gets its own jump and localhost NodePorts stay on (KUBE-FIREWALL written)
    settings = _settings(node_port_addresses=("172.18.0.0/16", "127.0.0.0/8"))
    assert [ln for ln in _nat(model, settings) if ln.startswith(last)] == [
        f"{last} -d 127.0.0.1 -j KUBE-NODEPORTS",
        f"{last} -d 172.18.0.3 -j KUBE-NODEPORTS",
    ]
    assert ":KUBE-FIREWALL - [0:0]" in expected_restore_text(model, settings)["filter"]
    # the loopback cannot match: kube-proxy turns localhostNodePorts off, so no KUBE-FIREWALL copy
    no_loopback = _settings(node_port_addresses=("172.18.0.0/16",))
    assert ":KUBE-FIREWALL" not in expected_restore_text(model, no_loopback)["filter"]
    v6 = _settings(node_ips=("fc00:f853:ccd:e793::3",), cluster_cidr="fd00:10:244::/56", ip_family="IPv6")
    assert f"{last} -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in _nat(model, v6)
    assert ":KUBE-FIREWALL" not in expected_restore_text(model, v6)["filter"]


def test_headless_externalname_and_other_family_services_get_no_rules():
    services = [
        _svc("headless", clusterIP="None"),
        {**_svc("ext", svc_type="ExternalName"), "spec": {"type": "ExternalName", "externalName": "example.com"}},
        _svc("v6only", clusterIP="fd00:10:96::10", clusterIPs=["fd00:10:96::10"]),
    ]
    slices = [_slice(s, endpoints=[_ep("10.244.1.7")]) for s in ("headless", "ext")]
    model = build_cluster_model(services, slices)
    assert expected_service_ports(model, _settings()) == []
    assert not any("KUBE-SVC-" in ln or "KUBE-SEP-" in ln for ln in _nat(model, _settings()))


def test_large_cluster_mode_drops_endpoint_comments():
    eps = [_ep(f"10.244.{i // 250}.{i % 250 + 1}", node=f"n{i % 7}") for i in range(1001)]
    model = build_cluster_model([_svc()], [_slice(endpoints=eps)])
    nat = _nat(model, _settings())
    sep_rules = [ln for ln in nat if ln.startswith("-A KUBE-SEP-")]
    assert len(sep_rules) == 2002 and not any("--comment" in ln for ln in sep_rules)
    svc_rules = [ln for ln in nat if ln.startswith("-A KUBE-SVC-")]
    assert svc_rules[0].count("--comment") == 1  # the ClusterIP masquerade rule keeps its comment
    assert not any("--comment" in ln for ln in svc_rules[1:])
    assert svc_rules[1].endswith(f"--probability {1 / 1001:0.10f} -j " + svc_rules[1].split()[-1])
    small = build_cluster_model([_svc()], [_slice(endpoints=eps[:1000])])
    assert all("--comment" in ln for ln in _nat(small, _settings()) if ln.startswith("-A KUBE-SEP-"))


def test_source_ranges_are_printed_parsed_from_1_30():
    svc = _svc(
        svc_type="LoadBalancer",
        loadBalancerSourceRanges=["203.0.113.7/24", "not-a-cidr", "2001:db8::/64"],
    )
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "172.18.255.200"}]}}
    model = build_cluster_model([svc], [_slice(endpoints=[_ep("10.244.1.5")])])
    fw = [ln for ln in _nat(model, _settings()) if ln.startswith("-A KUBE-FW-") and " -s " in ln]
    assert [ln.split(" -s ")[1].split()[0] for ln in fw] == ["203.0.113.7/24"]
    fw30 = [ln for ln in _nat(model, _settings(kube_minor=30)) if ln.startswith("-A KUBE-FW-") and " -s " in ln]
    assert [ln.split(" -s ")[1].split()[0] for ln in fw30] == ["203.0.113.0/24"]


def test_kube_proxy_reading_of_endpoint_slices():
    # serving unset means serving; only the first address of an endpoint counts
    eps = [
        {"addresses": ["10.244.1.5"], "conditions": {"ready": False, "terminating": True}, "nodeName": "n1"},
        {"addresses": ["10.244.2.5", "10.244.2.6"], "conditions": {"ready": False, "serving": False}},
    ]
    model = build_cluster_model([_svc()], [_slice(endpoints=eps)])
    [plan] = expected_service_ports(model, _settings())
    assert [e.endpoint.address for e in plan.cluster_endpoints] == ["10.244.1.5:8080"]
    assert [e.address for e in model.service_ports[0].endpoints] == ["10.244.1.5:8080", "10.244.2.5:8080"]


def test_interface_detector_and_ipv6_cluster_ip():
    svc = _svc(
        svc_type="NodePort",
        externalTrafficPolicy="Local",
        clusterIP="fd00:10:96:0::10",
        clusterIPs=["fd00:10:96:0::10"],
        ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
    )
    eps = _slice(endpoints=[_ep("fd00:10:244:1::5")])
    eps["addressType"] = "IPv6"
    model = build_cluster_model([svc], [eps])
    v6 = _settings(node_ips=("fc00::3",), cluster_cidr=None, local_interface="veth+", ip_family="IPv6")
    nat = _nat(model, v6)
    svc_chain = service_chain("KUBE-SVC-", "default/web:http", "tcp")
    assert (
        f'-A {svc_chain} -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d fd00:10:96::10 '
        f"--dport 80 ! -i veth+ -j KUBE-MARK-MASQ"
    ) in nat
    assert any('"pod traffic for default/web:http external destinations" -i veth+ -j' in ln for ln in nat)
    assert "-A KUBE-SEP-" in "\n".join(nat) and "--to-destination [fd00:10:244:1::5]:8080" in "\n".join(nat)
    inferred = infer_settings_from_rules(nat)
    assert (inferred.cluster_cidr, inferred.local_interface, inferred.ip_family) == (None, "veth+", "IPv6")
    assert _nat(model, replace(inferred, node_name="kind-worker", node_ips=("fc00::3",))) == nat


def test_settings_from_kind_kube_proxy_config():
    # kind's kube-proxy ConfigMap (config.conf), as the API returns it after YAML parsing
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "clusterCIDR": "10.244.0.0/16,fd00:10:244::/56",
        "conntrack": {"maxPerCore": 0},
        "detectLocalMode": "",
        "iptables": {"localhostNodePorts": None, "masqueradeAll": False, "masqueradeBit": None},
        "mode": "iptables",
        "nodePortAddresses": None,
    }
    settings = settings_from_kube_proxy_config(config, "kind-worker", ["172.18.0.3"], kube_minor=31)
    assert settings == ProxySettings(node_name="kind-worker", node_ips=("172.18.0.3",), cluster_cidr="10.244.0.0/16",
                                     kube_minor=31)  # fmt: skip
    v6 = settings_from_kube_proxy_config(config, "kind-worker", ["fc00::3"])
    assert v6.cluster_cidr == "fd00:10:244::/56" and v6.ipv6
    node_cidr = settings_from_kube_proxy_config(
        {**config, "detectLocalMode": "NodeCIDR", "iptables": {"masqueradeAll": True, "masqueradeBit": 15}},
        "kind-worker",
        ["172.18.0.3"],
        pod_cidrs=["10.244.1.0/24"],
    )
    assert (node_cidr.cluster_cidr, node_cidr.masquerade_all, node_cidr.mark) == ("10.244.1.0/24", True, "0x00008000")
    bridge = settings_from_kube_proxy_config(
        {"detectLocalMode": "InterfaceNamePrefix", "detectLocal": {"interfaceNamePrefix": "veth"}}, "n", []
    )
    assert bridge.local_detector == (("-i", "veth+"), ("!", "-i", "veth+"))
    assert settings_from_kube_proxy_config({}, "n", []).local_detector is None  # no clusterCIDR: no-op detector


def test_settings_json_round_trip():
    for case in CASES:
        assert ProxySettings.from_json(case.settings.to_json()) == case.settings
    with pytest.raises(InputError, match="nodeName"):
        ProxySettings.from_json({"clusterCIDR": "10.0.0.0/8"})
    with pytest.raises(InputError, match="clusterCIDR"):
        ProxySettings(node_name="n", cluster_cidr="10.0.0.0/88")
    with pytest.raises(InputError, match="node IP"):
        ProxySettings.from_json({"nodeName": "n", "nodeIPs": ["kind-worker"]})


# --- settings inferred from a node's rules ----------------------------------------------------------------


def _rule_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.lstrip("[0123456789:] ").startswith("-A ")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inferred_settings_regenerate_the_dump(case):
    inferred = infer_settings_from_rules(
        _rule_lines(case.restore_text), node_name=case.settings.node_name, node_ips=case.settings.node_ips
    )
    assert inferred.masquerade_mark == "0x4000" and inferred.random_fully is False
    assert inferred.kube_minor == 28 and not inferred.conntrack_tcp_be_liberal
    texts = expected_restore_text(case.cluster_model(), inferred)
    assert _lines(texts["nat"]) == _lines(case.nat_text)
    assert _lines(texts["filter"]) == _lines(case.filter_text)


def test_inference_of_the_masquerade_matrix():
    got = {
        c.variant: infer_settings_from_rules(_rule_lines(c.restore_text))
        for c in CASES
        if c.variant
    }
    assert (got["base"].cluster_cidr, got["base"].masquerade_all) == ("10.0.0.0/8", False)
    assert (got["no-local-detector"].cluster_cidr, got["no-local-detector"].masquerade_all) == (None, False)
    # masqueradeAll with a detector: the CIDR still shows in the ETP=Local "pod traffic" rule
    assert (got["masquerade-all"].cluster_cidr, got["masquerade-all"].masquerade_all) == ("10.0.0.0/8", True)
    mand = got["masquerade-all-no-local-detector"]
    assert (mand.cluster_cidr, mand.masquerade_all) == (None, True)
    np = infer_settings_from_rules(_rule_lines(BY_NAME["04-etp-local-nodeport"].restore_text))
    assert np.node_port_addresses == ("192.168.0.2/32",) and np.localhost_node_ports is False


def test_inference_reads_iptables_save_spelling():
    # what `iptables-save -c` prints on a kind node (normalised order, /32, --set-xmark, counters)
    save = """
[0:0] -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
[12:720] -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
[3:180] -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
[0:0] -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
[0:0] -A KUBE-SVC-NPX46M4PTMTKRN6Y ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
"""
    inferred = infer_settings_from_rules(save.splitlines(), node_name="kind-control-plane")
    assert inferred.cluster_cidr == "10.244.0.0/16" and not inferred.masquerade_all
    assert inferred.random_fully and inferred.masquerade_bit == 14 and inferred.masquerade_mark is None
    assert inferred.conntrack_tcp_be_liberal and inferred.kube_minor == 29  # no INVALID drop: liberal, 1.29+
    assert inferred.localhost_node_ports and inferred.node_port_addresses == ()
    # the same rules from `iptables -S -v`: counters inline
    inline = [
        "-A KUBE-SVC-NPX46M4PTMTKRN6Y -d 10.96.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" "
        "-m tcp --dport 443 -c 5 300 -j KUBE-MARK-MASQ"
    ]
    assert infer_settings_from_rules(inline).masquerade_all


# --- the real iptables-restore ----------------------------------------------------------------------------

BACKENDS = ["nft", "legacy"]


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables-nft-restore", "iptables-legacy-restore"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


@pytest.fixture
def netns():
    reason = _netns_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"netns test cannot run in CI: {reason}")
        pytest.skip(reason)
    name = f"svcd-exp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _in_netns(ns: str, *argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, text=True, capture_output=True)
    assert result.returncode == 0, f"{' '.join(argv)} failed: {result.stderr.strip()}"
    return result.stdout


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_expected_text_loads_into_real_iptables(netns, case, backend):
    chains = expected_chains(case.cluster_model(), case.settings)
    texts = expected_restore_text(case.cluster_model(), case.settings)
    _in_netns(netns, f"iptables-{backend}-restore", stdin=restore_input(texts))
    saved = _in_netns(netns, f"iptables-{backend}-save")
    # every chain is there with as many rules as kube-proxy would have written
    counts: dict[tuple[str, str], int] = {}
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and table:
            counts.setdefault((table, line[1:].split()[0]), 0)
        elif line.startswith("-A ") and table:
            key = (table, line.split()[1])
            counts[key] = counts.get(key, 0) + 1
    for (tbl, chain), lines in chains.items():
        assert counts.get((tbl, chain)) == len(lines), f"{tbl}/{chain}: {counts.get((tbl, chain))} != {len(lines)}"
    # and the settings read back from iptables-save's own spelling are the ones the rules came from
    from_save = infer_settings_from_rules(saved.splitlines())
    from_restore = infer_settings_from_rules(_rule_lines(case.restore_text))
    for attr in ("cluster_cidr", "masquerade_all", "random_fully", "masquerade_bit", "localhost_node_ports",
                 "node_port_addresses", "conntrack_tcp_be_liberal"):  # fmt: skip
        assert getattr(from_save, attr) == getattr(from_restore, attr), attr


def test_fixture_directory_holds_only_known_cases():
    dirs = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert dirs == sorted({name.split("/")[0] for name in EXPECTED_NAMES})


def test_cluster_model_is_not_shared_between_calls():
    # expected_* must not mutate the model it is given
    case = BY_NAME["01-overall-multiple-services"]
    model = case.cluster_model()
    before = copy.deepcopy(model)
    expected_restore_text(model, case.settings)
    assert model == before
