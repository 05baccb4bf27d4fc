"""The chain-graph questions of model/graph.py on small real rule sets: loaded into a kernel (a throw-away network
namespace, nft and legacy backends) and dumped back, plus parse-only cases for what a kernel will not hold."""

from __future__ import annotations

import pytest
from netns import BACKENDS, Namespace, require_netns
from test_trace_cases import case_text, rule_sets

from svcdoctor.model.graph import (
    build_chain_graph,
    endpoint_chains,
    entry_paths,
    hook_chains,
    jump_graph,
    missing_chains,
    reachable_chains,
    rule_loops,
    unreachable_kube_chains,
)
from svcdoctor.model.parse import parse_rules

SVC = "KUBE-SVC-WEB0000000000000"
SEP_A, SEP_B, SEP_C = "KUBE-SEP-WEBA000000000000", "KUBE-SEP-WEBB000000000000", "KUBE-SEP-WEBC000000000000"
OLD_SVC, OLD_SEP = "KUBE-SVC-OLD0000000000000", "KUBE-SEP-OLDA000000000000"
EXT = "KUBE-EXT-WEB0000000000000"

# A node's nat table as kube-proxy leaves it after a service was deleted but its chains were not (yet): the hooks
# lead to one live service of three endpoints; an old service and its endpoint are left over; the canary and a
# non-kube chain are unreferenced too. NodePort traffic *goes* (-g) to the EXT chain, to cover gotos.
NODE_NAT = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SERVICES - [0:0]
:{SVC} - [0:0]
:{EXT} - [0:0]
:{SEP_A} - [0:0]
:{SEP_B} - [0:0]
:{SEP_C} - [0:0]
:{OLD_SVC} - [0:0]
:{OLD_SEP} - [0:0]
:SOMEONE-ELSES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j {SVC}
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30080 -g {EXT}
-A {EXT} -m comment --comment "masquerade traffic for default/web:http external destinations" -j KUBE-MARK-MASQ
-A {EXT} -j {SVC}
-A {SVC} -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A {SVC} -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.3333333333 -j {SEP_A}
-A {SVC} -m comment --comment "default/web:http -> 10.244.2.2:8080" -m statistic --mode random --probability 0.5000000000 -j {SEP_B}
-A {SVC} -m comment --comment "default/web:http -> 10.244.3.2:8080" -j {SEP_C}
-A {SEP_A} -m comment --comment default/web:http -s 10.244.1.2 -j KUBE-MARK-MASQ
-A {SEP_A} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
-A {SEP_B} -m comment --comment default/web:http -s 10.244.2.2 -j KUBE-MARK-MASQ
-A {SEP_B} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.2:8080
-A {SEP_C} -m comment --comment default/web:http -s 10.244.3.2 -j KUBE-MARK-MASQ
-A {SEP_C} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.3.2:8080
-A {OLD_SVC} -m comment --comment "default/old:http -> 10.244.9.9:8080" -j {OLD_SEP}
-A {OLD_SEP} -m comment --comment default/old:http -m tcp -p tcp -j DNAT --to-destination 10.244.9.9:8080
-A SOMEONE-ELSES -j RETURN
COMMIT
"""

LIVE_CHAINS = {"PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
               "KUBE-MARK-MASQ", SVC, EXT, SEP_A, SEP_B, SEP_C}

# Two chains that jump to each other. The kernel keeps them while nothing hooks them (left-over chains can loop);
# hooked, iptables-restore refuses them (test below).
UNHOOKED_LOOP = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-LOOP-A - [0:0]
:KUBE-LOOP-B - [0:0]
-A KUBE-LOOP-A -j KUBE-LOOP-B
-A KUBE-LOOP-B -j KUBE-LOOP-A
COMMIT
"""


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def kernel(request):
    """(backend, NODE_NAT as the kernel prints it back, `iptables -t nat -S SVC -v`: a one-chain partial dump)."""
    require_netns()
    backend = request.param
    with Namespace() as ns:
        ns.restore(NODE_NAT, backend)
        full = ns.save(backend, counters=True)
        one_chain = ns.run(BACKENDS[backend].iptables, "-t", "nat", "-S", SVC, "-v").stdout
    return backend, parse_rules(full, f"{backend}-save"), parse_rules(one_chain, f"{backend}-S")


# ------------------------------------------------------------------------------------------ through a kernel
@pytest.mark.netns
def test_the_hooks_reach_the_live_service_and_nothing_left_over(kernel):
    _, rules, _ = kernel
    assert hook_chains(rules, "nat") == ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
    assert reachable_chains(rules, "nat") == LIVE_CHAINS


@pytest.mark.netns
def test_left_over_kube_chains_are_unreachable(kernel):
    _, rules, _ = kernel
    # the canary is unreferenced by design, SOMEONE-ELSES is not kube-proxy's
    assert unreachable_kube_chains(rules, "nat") == [OLD_SEP, OLD_SVC]


@pytest.mark.netns
def test_a_whole_dump_misses_no_chain_and_has_no_loop(kernel):
    _, rules, _ = kernel
    g = jump_graph(rules, "nat")
    assert missing_chains(rules, "nat", g) == {}
    assert rule_loops(rules, "nat", g) == []
    assert g.edges["KUBE-NODEPORTS", EXT]["rules"][0].goto  # the -g survived the kernel


@pytest.mark.netns
def test_one_chain_dump_names_the_chains_it_lacks(kernel):
    _, _, one_chain = kernel
    missing = missing_chains(one_chain, "nat")
    assert list(missing) == ["KUBE-MARK-MASQ", SEP_A, SEP_B, SEP_C]
    assert [r.chain for r in missing[SEP_A]] == [SVC]
    assert "10.244.1.2:8080" in missing[SEP_A][0].comment
    assert reachable_chains(one_chain, "nat") == set()  # no hook and no kube-proxy entry chain in the dump


@pytest.mark.netns
def test_entry_paths_carry_the_endpoint_shares(kernel):
    _, rules, _ = kernel
    g = build_chain_graph(rules, "nat", [SVC])
    paths = entry_paths(g, SVC, endpoint_chains(g))
    assert [p.chains for p in paths] == [(SVC, SEP_A), (SVC, SEP_B), (SVC, SEP_C)]
    # the kernel keeps round(p * 2^31): 0.3333333333 comes back as 0.33333333349
    assert paths[0].share == pytest.approx(1 / 3, abs=1e-9)
    assert all(p.share == pytest.approx(1 / 3, abs=1e-9) and not p.conditional for p in paths)
    assert sum(p.share for p in paths) == pytest.approx(1.0, abs=1e-12)
    assert "--probability" in paths[0].rules[0]


@pytest.mark.netns
def test_entry_paths_from_the_node_port_go_through_every_hop(kernel):
    _, rules, _ = kernel
    g = build_chain_graph(rules, "nat", ["KUBE-NODEPORTS"])
    paths = entry_paths(g, "KUBE-NODEPORTS", [SEP_A, SEP_B, SEP_C])
    assert [p.chains for p in paths] == [("KUBE-NODEPORTS", EXT, SVC, sep) for sep in (SEP_A, SEP_B, SEP_C)]
    assert sum(p.share for p in paths) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.netns
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_kernel_keeps_an_unhooked_loop_and_the_graph_finds_it(backend):
    require_netns()
    with Namespace() as ns:
        ns.restore(UNHOOKED_LOOP, backend)
        rules = parse_rules(ns.save(backend), "loop")
    assert rule_loops(rules, "filter") == [["KUBE-LOOP-A", "KUBE-LOOP-B"]]
    assert unreachable_kube_chains(rules, "filter") == ["KUBE-LOOP-A", "KUBE-LOOP-B"]


@pytest.mark.netns
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_kernel_refuses_a_hooked_loop(backend):
    require_netns()
    hooked = UNHOOKED_LOOP.replace("-A KUBE-LOOP-A", "-A INPUT -j KUBE-LOOP-A\n-A KUBE-LOOP-A", 1)
    with Namespace() as ns, pytest.raises(RuntimeError):
        ns.restore(hooked, backend)


@pytest.mark.netns
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_restore_input_through_the_kernel_is_read_from_kube_proxys_entry_chains(backend):
    # built-in chains come back empty: the questions start where kube-proxy hooks in (as trace does)
    require_netns()
    text = case_text(rule_sets()[0][1])
    with Namespace() as ns:
        ns.restore(text, backend)
        rules = parse_rules(ns.save(backend), "case-01")
    assert hook_chains(rules, "nat") == ("KUBE-SERVICES", "KUBE-POSTROUTING")
    for table in ("nat", "filter"):
        assert unreachable_kube_chains(rules, table) == []
        assert missing_chains(rules, table) == {}


# ------------------------------------------------------------------------------------------------ parse only
@pytest.mark.parametrize(("set_id", "folder"), [(s[0], s[1]) for s in rule_sets()], ids=[s[0] for s in rule_sets()])
def test_kube_proxys_own_rules_are_whole_and_loop_free(set_id, folder):
    rules = parse_rules(case_text(folder), set_id)
    for table in ("nat", "filter"):
        g = jump_graph(rules, table)
        assert missing_chains(rules, table, g) == {}
        assert rule_loops(rules, table, g) == []
        assert unreachable_kube_chains(rules, table, g) == []  # KUBE-MARK-MASQ unused in some cases: by design


def test_extension_targets_are_not_missing_chains():
    text = """\
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp --dport 53 -j NOTRACK
-A OUTPUT -p tcp -j CT --notrack
-A OUTPUT -j KUBE-NOT-HERE
COMMIT
"""
    rules = parse_rules(text, "raw")
    assert list(missing_chains(rules, "raw")) == ["KUBE-NOT-HERE"]
    assert reachable_chains(rules, "raw") == {"PREROUTING", "OUTPUT", "KUBE-NOT-HERE"}


def test_loops_one_per_tangle_self_loops_included():
    text = """\
*filter
:INPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
:C - [0:0]
:D - [0:0]
:E - [0:0]
-A INPUT -j A
-A A -j B
-A B -j C
-A C -j A
-A C -j B
-A D -j D
-A E -g A
COMMIT
"""
    rules = parse_rules(text, "loops")
    assert rule_loops(rules, "filter") == [["A", "B", "C"], ["D"]]
    assert reachable_chains(rules, "filter") == {"INPUT", "A", "B", "C"}


def test_a_table_the_input_lacks_answers_empty():
    rules = parse_rules(NODE_NAT, "nat only")
    assert hook_chains(rules, "filter") == ()
    assert reachable_chains(rules, "filter") == set()
    assert missing_chains(rules, "filter") == {} and rule_loops(rules, "filter") == []
    assert unreachable_kube_chains(rules, "filter") == []


def test_affinity_paths_are_conditional():
    text = f"""\
*nat
:KUBE-SERVICES - [0:0]
:{SVC} - [0:0]
:{SEP_A} - [0:0]
:{SEP_B} - [0:0]
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {SVC}
-A {SVC} -m recent --rcheck --seconds 10800 --reap --name {SEP_A} --mask 255.255.255.255 --rsource -j {SEP_A}
-A {SVC} -m recent --rcheck --seconds 10800 --reap --name {SEP_B} --mask 255.255.255.255 --rsource -j {SEP_B}
-A {SVC} -m statistic --mode random --probability 0.50000000000 -j {SEP_A}
-A {SVC} -j {SEP_B}
-A {SEP_A} -p tcp -m recent --set --name {SEP_A} --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.2:80
-A {SEP_B} -p tcp -m recent --set --name {SEP_B} --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.2.2:80
COMMIT
"""
    g = build_chain_graph(parse_rules(text, "affinity"), "nat", [SVC])
    paths = entry_paths(g, SVC, [SEP_A, SEP_B, "KUBE-SEP-NOTINGRAPH00000"])
    assert [(p.chains[-1], p.conditional) for p in paths] == [
        (SEP_A, True), (SEP_A, False), (SEP_B, True), (SEP_B, False)]
    assert sum(p.share for p in paths if not p.conditional) == pytest.approx(1.0)
    assert entry_paths(g, "KUBE-NOT-IN-GRAPH", [SEP_A]) == [] and entry_paths(g, SVC, []) == []
