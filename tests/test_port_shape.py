"""`PortShape`: small hand-written rule lines -> the shape of one service port -> what `compare_port` finds.

The lines are written the way `iptables-save -c` prints them (counters, `/32` masks, iptables' option order),
against kube-proxy's plan (its restore input order), so the tests also show that spelling never matters."""

from __future__ import annotations

from svcdoctor.checks.compare_api import PortContext, compare_port
from svcdoctor.checks.port_findings import UNEVEN_TOLERANCE, blackholes, check_split
from svcdoctor.model.cluster import Endpoint, ServicePort
from svcdoctor.model.expected import plan_service_port
from svcdoctor.model.hashes import chain_suffix, endpoint_chain, service_chain
from svcdoctor.model.port_shape import Addresses, expect_port, read_shape
from svcdoctor.model.proxy_settings import ProxySettings

SPN = "ns1/web:http"
SUFFIX = chain_suffix(service_chain("KUBE-SVC-", SPN, "tcp"))
SVC = "KUBE-SVC-" + SUFFIX
SEP1 = endpoint_chain(SPN, "tcp", "10.244.1.5:8080")
SEP2 = endpoint_chain(SPN, "tcp", "10.244.2.5:8080")
SETTINGS = ProxySettings(node_name="node-1", node_ips=("172.18.0.2",), cluster_cidr="10.244.0.0/16")


def _port(**kw) -> ServicePort:
    base = dict(namespace="ns1", name="web", port_name="http", protocol="TCP", port=80, target_port=8080,
                cluster_ips=["10.96.0.10"],
                endpoints=[Endpoint("10.244.1.5", 8080, node="node-1"), Endpoint("10.244.2.5", 8080, node="node-2")])
    base.update(kw)
    return ServicePort(**base)


def _node_chains(first_probability: str = "0.50000000000", second_sep: str = SEP2) -> dict[str, list[str]]:
    return {
        SVC: [
            f'[0:0] -A {SVC} ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "{SPN} cluster IP" '
            f"-m tcp --dport 80 -j KUBE-MARK-MASQ",
            f'[0:0] -A {SVC} -m comment --comment "{SPN} -> 10.244.1.5:8080" -m statistic --mode random '
            f"--probability {first_probability} -j {SEP1}",
            f'[0:0] -A {SVC} -m comment --comment "{SPN} -> 10.244.2.5:8080" -j {second_sep}',
        ],
        SEP1: [f'[0:0] -A {SEP1} -p tcp -m comment --comment "{SPN}" -m tcp -j DNAT --to-destination 10.244.1.5:8080'],
        SEP2: [f'[0:0] -A {SEP2} -p tcp -m comment --comment "{SPN}" -m tcp -j DNAT --to-destination 10.244.2.5:8080'],
        "KUBE-SEP-OLDOLDOLDOLDOLDO": ['[0:0] -A KUBE-SEP-OLDOLDOLDOLDOLDO -p tcp -m tcp -j DNAT '
                                      '--to-destination 10.244.9.9:8080'],
    }


ENTRY = (f'[5:300] -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "{SPN} cluster IP" -m tcp '
         f"--dport 80 -j {SVC}")


def _shape(chains: dict[str, list[str]], entries=(("KUBE-SERVICES", ENTRY),), filters=(), addrs=None):
    return read_shape(SUFFIX, list(entries), list(filters), chains.get, addrs or Addresses("10.96.0.10"))


def test_read_shape_of_a_cluster_ip_port():
    shape = _shape(_node_chains())
    hop = shape.nat[("clusterIP", "10.96.0.10", "80")]
    assert (hop.target, hop.packets) == (SVC, 5)
    assert [(j.sep, j.probability) for j in shape.balancers["svc"]] == [(SEP1, 0.5), (SEP2, None)]
    assert {sep: dest for sep, (dest, _) in shape.seps.items()} == {SEP1: "10.244.1.5:8080", SEP2: "10.244.2.5:8080"}
    assert shape.balancer_chains == {"svc": SVC} and shape.affinity == {"svc": False}
    assert shape.ext is None and shape.fw is None and not shape.filter


def test_read_shape_without_the_api_takes_kinds_from_comments():
    shape = _shape(_node_chains(), addrs=Addresses())
    assert ("clusterIP", "10.96.0.10", "80") in shape.nat


def test_the_plan_reads_into_the_same_shape_as_the_node():
    exp = expect_port(plan_service_port(_port(), SETTINGS))
    node = _shape(_node_chains())
    assert exp.shape.nat.keys() == node.nat.keys()
    assert [j.sep for j in exp.shape.balancers["svc"]] == [j.sep for j in node.balancers["svc"]]
    assert compare_port(PortContext("node-1", SPN, "ns1/web", "tcp"), exp, node) == []


def test_uneven_split_is_found_by_both_paths():
    exp = expect_port(plan_service_port(_port(), SETTINGS))
    node = _shape(_node_chains(first_probability="0.90000000000"))
    found = compare_port(PortContext("node-1", SPN, "ns1/web", "tcp"), exp, node)
    assert [f.id for f in found] == ["uneven-split"]
    assert check_split("node-1", "ns1/web", SPN, SVC, node.balancers["svc"], node.seps).id == "uneven-split"
    # the kernel's rounding of 1/2 is not a finding
    nearly = _shape(_node_chains(first_probability=str(0.5 + UNEVEN_TOLERANCE / 2)))
    assert check_split("node-1", "ns1/web", SPN, SVC, nearly.balancers["svc"], nearly.seps) is None


def test_stale_and_missing_endpoints():
    exp = expect_port(plan_service_port(_port(), SETTINGS))
    node = _shape(_node_chains(second_sep="KUBE-SEP-OLDOLDOLDOLDOLDO"))
    found = compare_port(PortContext("node-1", SPN, "ns1/web", "tcp"), exp, node)
    assert sorted(f.id for f in found) == ["missing-endpoint", "stale-endpoint"]
    stale = next(f for f in found if f.id == "stale-endpoint")
    assert "10.244.9.9:8080" in stale.message and stale.node == "node-1" and stale.service == "ns1/web"


def test_no_rules_at_all_for_a_port_with_endpoints():
    exp = expect_port(plan_service_port(_port(), SETTINGS))
    found = compare_port(PortContext("node-1", SPN, "ns1/web", "tcp"), exp, _shape({}, entries=()))
    assert [f.id for f in found] == ["missing-service-rules"]


def test_itp_local_drop_on_a_node_without_a_local_pod():
    sp = _port(internal_traffic_policy="Local", endpoints=[Endpoint("10.244.2.5", 8080, node="node-2")])
    exp = expect_port(plan_service_port(sp, SETTINGS))
    drop = (f'[3:180] -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "{SPN} has no local endpoints" '
            f"-m tcp --dport 80 -j DROP")
    node = _shape({}, entries=(), filters=(("KUBE-SERVICES", drop),))
    assert node.filter[("clusterIP", "10.96.0.10", "80")].target == "DROP"
    found = compare_port(PortContext("node-1", SPN, "ns1/web", "tcp"), exp, node)
    assert [(f.id, f.severity) for f in found] == [("itp-local-no-local-endpoints", "error")]  # 3 packets dropped


def test_pre_1_24_xlb_drop_is_an_etp_local_drop():
    xlb = "KUBE-XLB-" + SUFFIX
    entry = f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{SPN}" -m tcp --dport 30080 -j {xlb}'
    chains = {xlb: [
        f'-A {xlb} -m comment --comment "masquerade LOCAL traffic for {SPN} LB IP" -m addrtype --src-type LOCAL '
        f"-j KUBE-MARK-MASQ",
        f'-A {xlb} -m comment --comment "{SPN} has no local endpoints" -j KUBE-MARK-DROP',
    ]}
    shape = _shape(chains, entries=(("KUBE-NODEPORTS", entry),), addrs=Addresses())
    assert shape.xlb == xlb and len(shape.xlb_drops) == 1
    rejects, drops = blackholes(shape)
    assert rejects == [] and [d for d, _ in drops] == [("nodePort", "", "30080")]


# --- kube-proxy's plan: the shape from its decisions equals the shape read from its written rules --------------

def _comparable(shape) -> dict:
    """Everything of a shape but its evidence lines (and rule counters: a plan has none), in order."""
    return {
        "nat": [(dest, hop.target, hop.packets) for dest, hop in shape.nat.items()],
        "filter": [(dest, hop.target, hop.packets) for dest, hop in shape.filter.items()],
        "balancers": {role: [(j.sep, j.probability) for j in jumps] for role, jumps in shape.balancers.items()},
        "balancer_chains": shape.balancer_chains,
        "affinity": shape.affinity,
        "seps": [(sep, dest) for sep, (dest, _) in shape.seps.items()],
        "ext": (shape.ext, shape.ext_final, shape.ext_masquerade),
        "fw": (shape.fw, shape.fw_sources),
        "xlb": (shape.xlb, shape.xlb_drops),
    }


def _settings_variants(settings: ProxySettings) -> list[ProxySettings]:
    """The case's settings, on another node (other endpoints are local), for no node in particular (how `check`
    plans ports whose rules are the same on every node), and as 1.30 (parsed addresses) and 1.31 (nfacct) write."""
    from dataclasses import replace

    return [settings, replace(settings, node_name="some-other-node"), replace(settings, node_name="-", node_ips=()),
            replace(settings, kube_minor=30), replace(settings, kube_minor=31, nfacct=True)]


def _ports_of_every_kind() -> list[ServicePort]:
    """What kube-proxy's cases lack: IPv6 and dual-stack ports, a source range holding the node's IP (KUBE-FW
    lets the node's own VIP traffic in), affinity with only local endpoints, an endpoint listed twice."""
    ready = [Endpoint("10.244.1.5", 8080, node="node-1"), Endpoint("10.244.2.5", 8080, node="node-2")]
    v6 = [Endpoint("fd00:10:244::5", 8080, node="node-1"), Endpoint("fd00:10:244:1::5", 8080, node="node-2")]
    lb = dict(type="LoadBalancer", node_port=30080, load_balancer_ips=["203.0.113.7", "2001:db8::7"],
              load_balancer_source_ranges=["172.18.0.0/16", "2001:db8::/64", "198.51.100.0/24"])
    return [
        _port(cluster_ips=["fd00:10:96::a"], endpoints=v6, external_ips=["FD00:0:0:0::0001", "2001:db8::5"]),
        _port(cluster_ips=["10.96.0.10", "fd00:10:96::a"], endpoints=ready + v6, **lb),
        _port(external_traffic_policy="Local", session_affinity="ClientIP", health_check_node_port=32000,
              endpoints=ready + v6, **lb),
        _port(internal_traffic_policy="Local", external_traffic_policy="Local", type="NodePort", node_port=30081,
              session_affinity="ClientIP", endpoints=ready + [Endpoint("10.244.1.5", 8080, node="node-1")]),
        _port(type="NodePort", node_port=30082, external_ips=["10.96.0.10", "192.0.2.9"],
              endpoints=[Endpoint("10.244.1.5", 8080, node="node-1", ready=False, serving=True, terminating=True)]),
        _port(external_traffic_policy="Local", endpoints=[Endpoint("10.244.2.5", 8080, node="node-2", ready=False)],
              **lb),
    ]


def _every_plan():
    from kube_proxy_cases import iter_cases

    for case in iter_cases():
        for settings in _settings_variants(case.settings):
            for sp in case.cluster_model().service_ports:
                yield case.name, sp, settings
    v6 = ProxySettings(node_name="node-1", node_ips=("fd00:172:18::2", "172.18.0.2"), cluster_cidr="fd00:10:244::/56",
                       ip_family="IPv6")
    for settings in _settings_variants(SETTINGS) + _settings_variants(v6):
        for sp in _ports_of_every_kind():
            yield "every kind", sp, settings


def test_the_plan_from_kube_proxys_decisions_is_the_plan_read_from_its_rules():
    from svcdoctor.model.expected import decide_service_port
    from svcdoctor.model.port_shape import expect_decisions

    compared = 0
    for name, sp, settings in _every_plan():
        for large in (False, True):
            written = plan_service_port(sp, settings, large)
            decided = decide_service_port(sp, settings)
            assert (written is None) == (decided is None), (name, sp.svc_port_name)
            if written is None:
                continue
            read, quick = expect_port(written), expect_decisions(decided, large)
            where = (name, sp.svc_port_name, settings.node_name, settings.kube_minor, large)
            assert _comparable(quick.shape) == _comparable(read.shape), where
            assert (quick.suffix, quick.chains) == (read.suffix, read.chains), where
            # the rules written for a finding's evidence are those the plan reads from
            assert quick.written(settings).expected_lines == read.expected_lines, where
            compared += 1
    assert compared > 300  # every case's ports, on five settings each, with and without large-cluster mode


def test_a_shared_plan_is_every_node_plan_it_is_shared_with():
    """check plans a port whose policies are Cluster once for every node with the same `_shared_key` (address
    family, and 1.30's parsed addresses where the port has any), before reading any node (checks/compare_api.py:
    Planner): the plan with any other such node's settings must be the same."""
    from dataclasses import replace

    from svcdoctor.checks.compare_api import _node_dependent, _shared_key
    from svcdoctor.model.expected import decide_service_port
    from svcdoctor.model.port_shape import expect_decisions

    def planned(sp, settings):
        plan = decide_service_port(sp, replace(settings, node_name="-", node_ips=()))
        if plan is None:
            return None
        exp = expect_decisions(plan)
        return _comparable(exp.shape), exp.chains, exp.suffix, (exp.addrs.cluster_ip, exp.addrs.external,
                                                               exp.addrs.load_balancer)

    others = [ProxySettings(node_name="other", node_ips=("192.0.2.1",), masquerade_all=True, random_fully=False,
                            masquerade_bit=5, node_port_addresses=("192.0.2.0/24",)),
              ProxySettings(node_name="other", kube_minor=29, conntrack_tcp_be_liberal=True, local_interface="cbr0")]
    compared = 0
    for name, sp, settings in _every_plan():
        if _node_dependent(sp):
            continue
        for other in others:
            for minor in (28, 29, 30, 31):  # either side of 1.30's parsed addresses
                other = replace(other, ip_family=settings.ip_family, kube_minor=minor, nfacct=minor >= 31)
                if _shared_key(sp, other) == _shared_key(sp, settings):
                    assert planned(sp, other) == planned(sp, settings), (name, sp.svc_port_name, minor)
                    compared += 1
    assert compared > 400  # the ports of every case that are not node-dependent, on five settings each
