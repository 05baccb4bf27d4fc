"""The tracer against kube-proxy's own answers: every packet flow of kube-proxy's v1.28.0 proxier tests.

`kube-proxy-cases/` (in shared/reference) holds, per case, the rules kube-proxy wrote (nat.txt, filter.txt) and the
flows its Go test tracer asserted (flows.json): `output` is the comma-joined DNAT targets, or ACCEPT/DROP/REJECT, or
"" for no match; `masq` is whether the packet gets masqueraded. Case 10 has four variants, each with its own
rules. 49 flows in cases 01–09 + 4 × 30 in case 10 = 169.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest

from svcdoctor.errors import InputError
from svcdoctor.render.json_doc import trace_document
from svcdoctor.model.parse import parse_rules
from svcdoctor.model.trace import trace_packet

REPO = Path(__file__).resolve().parent.parent

# The Go test of case 06 (TestClusterIPEndpointsMore) sends SCTP packets; flows.json does not carry the protocol.
# Its rules say `-m sctp -p sctp` and the Go tracer checks -p, so the asserted DNAT answers are for SCTP packets.
CASE_PROTOCOL = {"06-sctp-clusterip-hairpin": "sctp"}


FIXTURES = REPO / "tests" / "fixtures" / "kube_proxy_cases"


def case_folders() -> list[Path]:
    """Each case's reference folder (nat.txt, filter.txt, flows.json): the verbatim copies in the repository's
    fixtures, so the suite needs nothing outside the checkout."""
    return sorted(p / "reference" for p in FIXTURES.iterdir() if (p / "reference" / "flows.json").is_file())


def rule_sets() -> list[tuple[str, Path, dict]]:
    """(id, folder with nat.txt/filter.txt, flows.json document) for every rule set, case 10's variants apart."""
    out = []
    for case in case_folders():
        name = case.parent.name
        doc = json.loads((case / "flows.json").read_text())
        if doc.get("variants"):
            for v in doc["variants"]:
                out.append((f"{name}/{v['dir']}", case / v["dir"], {**doc, "flows": v["flows"]}))
        else:
            out.append((name, case, doc))
    return out


def flows() -> list[tuple[str, Path, str, dict, str]]:
    """(test id, rules folder, node IP, flow, protocol) for all 169 flows."""
    out = []
    for set_id, folder, doc in rule_sets():
        case = set_id.split("/")[0]
        for flow in doc["flows"]:
            protocol = flow.get("protocol") or CASE_PROTOCOL.get(case, "tcp")
            out.append((f"{set_id}/{flow['name']}", folder, doc["nodeIP"], flow, protocol))
    return out


def case_text(folder: Path) -> str:
    return (folder / "nat.txt").read_text() + (folder / "filter.txt").read_text()


@cache
def case_rules(folder: Path):
    return parse_rules(case_text(folder), str(folder))


def expected_of(flow: dict) -> tuple[str, set[str]]:
    """kube-proxy's `output` as (verdict, DNAT targets)."""
    output = flow["output"]
    if output == "":
        return "none", set()
    if output in ("ACCEPT", "DROP", "REJECT"):
        return output.lower(), set()
    return "dnat", {part.strip() for part in output.split(",")}


def assert_matches_kube_proxy(result, flow: dict) -> None:
    verdict, targets = expected_of(flow)
    got = (result.verdict, result.destinations, result.masquerade)
    assert got == (verdict, targets, flow["masq"]), (
        f"kube-proxy says {flow['output']!r} masq={flow['masq']}; traced {got}\n"
        + "\n".join(f"  {s.table} {s.chain}: {s.rule} => {s.action}" for s in result.steps)
    )


ALL_FLOWS = flows()


def test_all_169_flows_are_collected():
    # guards against a case folder or variant silently dropping out of the parametrization below
    assert len(ALL_FLOWS) == 169
    assert len({f[0] for f in ALL_FLOWS}) == 169, "flow ids must be unique"
    assert sum(1 for f in ALL_FLOWS if f[0].startswith("10-")) == 120


@pytest.mark.parametrize(("folder", "node_ip", "flow", "protocol"), [f[1:] for f in ALL_FLOWS],
                         ids=[f[0] for f in ALL_FLOWS])
def test_flow_matches_kube_proxy(folder, node_ip, flow, protocol):
    result = trace_packet(case_rules(folder), flow["sourceIP"], flow["destIP"], flow["destPort"], protocol,
                          node_ips=(node_ip,))
    assert_matches_kube_proxy(result, flow)
    # kube-proxy's restore input has no built-in chains: both tables are entered as kube-proxy's tests enter them
    assert result.entered_without_jumps == ["nat", "filter"]
    assert result.uncertain == []


DNAT_FLOWS = [f for f in ALL_FLOWS if expected_of(f[3])[0] == "dnat"]


@pytest.mark.parametrize(("folder", "node_ip", "flow", "protocol"), [f[1:] for f in DNAT_FLOWS],
                         ids=[f[0] for f in DNAT_FLOWS])
def test_dnat_shares_are_even_and_complete(folder, node_ip, flow, protocol):
    result = trace_packet(case_rules(folder), flow["sourceIP"], flow["destIP"], flow["destPort"], protocol,
                          node_ips=(node_ip,))
    n = len(expected_of(flow)[1])
    shares = [e.probability for e in result.endpoints]
    assert len(shares) == n
    assert math.isclose(sum(shares), 1.0, abs_tol=1e-9)
    for share in shares:
        assert math.isclose(share, 1.0 / n, abs_tol=1e-9), shares
    assert sum(p.share for p in result.paths) == pytest.approx(1.0, abs=1e-9)


def test_trace_packets_input_with_builtin_jumps():
    """Case 01 as TestTracePackets restores it: with the jumps from the built-in chains (nat PREROUTING/OUTPUT/
    POSTROUTING, filter INPUT/FORWARD/OUTPUT). The trace then walks the real hooks and must agree with the Go test."""
    folder = FIXTURES / "01-overall-multiple-services" / "reference"
    rules = parse_rules((folder / "trace-packets-input.txt").read_text(), "trace-packets-input.txt")
    doc = json.loads((folder / "flows.json").read_text())
    for flow in doc["flows"]:
        result = trace_packet(rules, flow["sourceIP"], flow["destIP"], flow["destPort"], node_ips=(doc["nodeIP"],))
        assert_matches_kube_proxy(result, flow)
        assert result.entered_without_jumps == []
        assert result.steps[0].chain in ("PREROUTING", "OUTPUT")


# kube-proxy's jumps from the built-in chains (docs/reference/kube-proxy-layout.md §2.1), in the order a kind node shows them.
# kube-proxy adds these with `iptables -I`, outside its restore input, so the case dumps do not have them.
KUBE_PROXY_JUMPS = {
    "nat": [
        ("PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
    ],
    "filter": [
        ("INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("INPUT", '-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS'),
        ("INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
        ("INPUT", "-j KUBE-FIREWALL"),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("FORWARD", '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
        ("OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
        ("OUTPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
        ("OUTPUT", "-j KUBE-FIREWALL"),
    ],
}


def with_kube_proxy_jumps(text: str) -> str:
    """The restore input plus the built-in chains and kube-proxy's jumps into the KUBE-* chains it declares."""
    out = []
    table = None
    for line in text.splitlines():
        out.append(line)
        if line.startswith("*"):
            table = line[1:]
            builtins = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), "filter": ("INPUT", "FORWARD", "OUTPUT")}
            out.extend(f":{c} ACCEPT [0:0]" for c in builtins.get(table, ()))
        elif line == "COMMIT":
            out.pop()
            declared = {l[1:].split()[0] for l in text.split(f"*{table}\n", 1)[1].split("COMMIT")[0].splitlines()
                        if l.startswith(":")}
            out.extend(f"-A {chain} {spec}" for chain, spec in KUBE_PROXY_JUMPS.get(table, ())
                       if spec.rsplit(" ", 1)[1] in declared)
            out.append("COMMIT")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(("folder", "node_ip", "flow", "protocol"), [f[1:] for f in ALL_FLOWS],
                         ids=[f[0] for f in ALL_FLOWS])
def test_flow_through_the_real_hooks(folder, node_ip, flow, protocol):
    """With kube-proxy's jumps in place the trace walks PREROUTING/OUTPUT → INPUT/FORWARD → POSTROUTING as the
    kernel does (conntrack states, marks, KUBE-FORWARD, KUBE-FIREWALL) and must still give kube-proxy's answer."""
    rules = parse_rules(with_kube_proxy_jumps(case_text(folder)), str(folder))
    result = trace_packet(rules, flow["sourceIP"], flow["destIP"], flow["destPort"], protocol, node_ips=(node_ip,))
    assert_matches_kube_proxy(result, flow)
    assert result.entered_without_jumps == [] and result.uncertain == []


# -- netfilter semantics beyond kube-proxy's test tracer ---------------------------------------------------------

def _trace(text: str, src="203.0.113.9", dst="10.96.0.10", dport=80, node_ips=("192.168.0.2",), **kw):
    return trace_packet(parse_rules(text, "test"), src, dst, dport, node_ips=node_ips, **kw)


THREE_ENDPOINTS_AS_SAVED = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-C - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-A -s 10.244.1.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-B -s 10.244.2.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-B -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.2:8080
-A KUBE-SEP-C -s 10.244.3.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-C -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.3.2:8080
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A
-A KUBE-SVC-X -m comment --comment "default/web:http -> 10.244.2.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B
-A KUBE-SVC-X -m comment --comment "default/web:http -> 10.244.3.2:8080" -j KUBE-SEP-C
COMMIT
"""


def test_effective_shares_follow_the_remaining_mass():
    result = _trace(THREE_ENDPOINTS_AS_SAVED)
    shares = {e.ip: e.probability for e in result.endpoints}
    assert shares["10.244.1.2"] == pytest.approx(0.33333333349, abs=1e-12)
    assert shares["10.244.2.2"] == pytest.approx((1 - 0.33333333349) * 0.5, abs=1e-12)
    assert shares["10.244.3.2"] == pytest.approx((1 - 0.33333333349) * 0.5, abs=1e-12)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    # from outside the pod CIDR: the ClusterIP masquerade rule marks, KUBE-POSTROUTING (--set-xmark spelling) SNATs
    assert result.masquerade and all(e.masquerade for e in result.endpoints)


def test_pod_source_is_not_masqueraded_except_hairpin():
    result = _trace(THREE_ENDPOINTS_AS_SAVED, src="10.244.2.2")
    masq = {e.ip: e.masquerade for e in result.endpoints}
    assert masq == {"10.244.1.2": False, "10.244.2.2": True, "10.244.3.2": False}
    assert result.masquerade is True  # any path


def test_locally_generated_packet_takes_nat_output():
    result = _trace(THREE_ENDPOINTS_AS_SAVED, src="192.168.0.2")
    assert result.steps[0].chain == "OUTPUT"
    assert result.verdict == "dnat" and result.masquerade


def test_builtin_chain_without_the_kube_services_jump_is_not_papered_over():
    # a real dump whose PREROUTING lost kube-proxy's jump: the packet is not DNATed, and the trace must say so
    text = THREE_ENDPOINTS_AS_SAVED.replace(
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n', "")
    result = _trace(text)
    assert result.verdict == "none" and result.endpoints == [] and result.entered_without_jumps == []


MARKS_AND_STATES = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SVC-X - [0:0]
-A KUBE-SERVICES -m comment --comment "a/b:p cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X -m comment --comment "a/b:p cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m comment --comment "a/b:p -> 10.244.1.2:80" -m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A
-A KUBE-SVC-X -m comment --comment "a/b:p -> 10.244.1.2:80" -j KUBE-SEP-A
-A KUBE-SEP-A -m comment --comment a/b:p -m recent --name KUBE-SEP-A --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:80
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
COMMIT
*filter
:KUBE-SERVICES - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-PROXY-FIREWALL -m conntrack --ctstate DNAT -d 10.244.1.2 -j DROP
COMMIT
"""


def test_marks_compare_numerically_and_recent_checks_miss_for_a_new_connection():
    result = _trace(MARKS_AND_STATES)
    # --rcheck: no affinity entry for a new client, so the plain jump is taken; --set matches
    actions = [s.action for s in result.steps]
    assert "jump KUBE-SEP-A" in actions
    assert [s for s in result.steps if "--rcheck" in s.rule] == []
    # 0x00004000 (kube-proxy's spelling) marked, and KUBE-POSTROUTING's numeric check sees it
    assert any(a.startswith("mark 0x0 -> 0x4000") for a in actions)
    # …then conntrack DNAT state: the filter rule on ctstate DNAT drops it, so no POSTROUTING is reached
    assert result.verdict == "drop" and result.masquerade is False
    assert [e.verdict for e in result.endpoints] == ["drop"]


def test_ctstate_dnat_does_not_match_before_dnat():
    text = MARKS_AND_STATES.replace("-d 10.244.1.2 -j DROP", "-d 10.96.0.99 -j DROP")
    result = _trace(text, dst="10.96.0.99")
    assert result.verdict == "none"


def test_unknown_match_is_uncertain_not_matching():
    text = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SEP-A - [0:0]
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-SEP-A
-A KUBE-SEP-A -p tcp -j DNAT --to-destination 10.244.1.2:80
COMMIT
"""
    result = _trace(text)
    assert result.verdict == "none"
    assert len(result.uncertain) == 1
    assert "-m set" in result.uncertain[0].reason and "KUBE-CLUSTER-IP" in result.uncertain[0].rule
    assert any(s.action.startswith("uncertain") for s in result.steps)


def test_definite_miss_outweighs_unknown_match():
    text = """\
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.1.1.1/32 -m set --match-set X src -j DNAT --to-destination 10.244.1.2:80
COMMIT
"""
    assert _trace(text).uncertain == []


def test_goto_return_and_policy_drop():
    text = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
-A FORWARD -p tcp -g A
-A FORWARD -p tcp -j ACCEPT
-A A -j B
-A A -d 10.96.0.10/32 -j ACCEPT
-A B -j RETURN
-A B -j ACCEPT
COMMIT
"""
    result = _trace(text)
    assert result.verdict == "accept"  # B returns into A, A accepts
    udp = _trace(text.replace("-A A -d 10.96.0.10/32 -j ACCEPT\n", ""))
    # A ends without a verdict: a goto returns to FORWARD's caller (the hook), skipping FORWARD's ACCEPT rule
    assert udp.verdict == "drop" and udp.steps[-1].action == "policy DROP"


def test_multiport_addrtype_and_negation():
    text = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m multiport --dports 22,8000:8100 -m addrtype --dst-type LOCAL -j REJECT
-A INPUT ! -s 127.0.0.0/8 -p udp -j DROP
COMMIT
"""
    assert _trace(text, dst="192.168.0.2", dport=8080).verdict == "reject"
    assert _trace(text, dst="192.168.0.2", dport=8200).verdict == "none"
    assert _trace(text, dst="192.168.0.2", dport=53, protocol="udp").verdict == "drop"


def test_to_dict_has_the_contract_shape():
    doc = trace_document(_trace(THREE_ENDPOINTS_AS_SAVED, node="myk8s-worker"))
    assert doc["apiVersion"] == "svcdoctor/v1" and doc["kind"] == "Trace" and doc["node"] == "myk8s-worker"
    assert doc["packet"] == {"src": "203.0.113.9", "dst": "10.96.0.10", "dport": 80, "protocol": "tcp"}
    assert doc["verdict"] in ("dnat", "accept", "drop", "reject", "none")
    assert isinstance(doc["masquerade"], bool)
    for e in doc["endpoints"]:
        assert {"ip", "port", "chain", "probability", "masquerade"} <= set(e)
        assert isinstance(e["port"], int) and 0 <= e["probability"] <= 1
    for s in doc["steps"]:
        assert {"table", "chain", "rule", "action"} <= set(s)
    json.dumps(doc)  # serialisable as is


def test_bad_packet_is_an_input_error():
    rules = parse_rules(THREE_ENDPOINTS_AS_SAVED, "t")
    for args in (("nope", "10.0.0.1", 80), ("10.0.0.1", "10.0.0.2", 70000)):
        with pytest.raises(InputError):
            trace_packet(rules, *args)
    with pytest.raises(InputError):
        trace_packet(rules, "10.0.0.1", "10.0.0.2", 80, protocol="icmp")


def test_thousands_of_matching_rules_in_one_chain():
    # every rule matches and goes on (MARK, LOG, a jump that returns): the walk must not grow Python's stack per rule
    rules = [":KUBE-SERVICES - [0:0]", ":KUBE-NOOP - [0:0]"]
    for i in range(3000):
        rules.append("-A KUBE-SERVICES -j MARK --set-xmark 0x1/0x1")
        rules.append("-A KUBE-SERVICES -j KUBE-NOOP")
        rules.append('-A KUBE-SERVICES -j LOG --log-prefix "x "')
    text = "*nat\n" + "\n".join(rules) + "\n-A KUBE-SERVICES -j DNAT --to-destination 10.244.9.9:80\nCOMMIT\n"
    result = _trace(text)
    assert result.verdict == "dnat" and len(result.steps) == 1 + 9000 + 1  # enter, every rule, the DNAT
    assert result.steps[0].action == "enter (no built-in nat chains in the dump; entered as kube-proxy's tests do)"
