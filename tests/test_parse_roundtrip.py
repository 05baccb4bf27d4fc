"""kube-proxy's rules through the real kernel and back: what `iptables-save -c` and `iptables -S -v` print for them
must parse into rules that trace exactly like the text kube-proxy wrote, with the nft and the legacy backend.

The kernel normalises the text (docs/reference/kube-proxy-layout.md §2.9): `/32` on addresses, -s/-d/-p moved first, comments
always quoted, `--or-mark 0x4000` → `--set-xmark 0x4000/0x4000`, `--probability 0.5000000000` → `0.50000000000`,
`-m recent` options reordered with `--mask`/`--rsource` added, built-in chains with policies and counters.
"""

from __future__ import annotations

import math

import pytest
from netns import BACKENDS, Namespace, require_netns
from test_trace_cases import ALL_FLOWS, case_text, rule_sets, with_kube_proxy_jumps

from svcdoctor.model.parse import parse_rules
from svcdoctor.model.rules import NodeRules
from svcdoctor.model.trace import trace_packet

pytestmark = pytest.mark.netns

RULE_SETS = rule_sets()
SET_IDS = [s[0] for s in RULE_SETS]


def flows_of(folder):
    return [(f[2], f[3], f[4]) for f in ALL_FLOWS if f[1] == folder]


def signature(result) -> tuple:
    """What must survive the round trip: verdict, masquerade, and per endpoint its chain, share and masquerade."""
    endpoints = sorted((e.address, e.chain, e.masquerade, e.verdict, round(e.probability, 8)) for e in result.endpoints)
    return result.verdict, result.masquerade, tuple(endpoints), len(result.uncertain)


def merged(*parts: NodeRules) -> NodeRules:
    out = NodeRules(format=parts[0].format)
    for p in parts:
        out.tables.update(p.tables)
        out.warnings.extend(p.warnings)
        out.has_counters = out.has_counters or p.has_counters
    return out


def dumps_of(ns: Namespace, backend: str) -> dict[str, NodeRules]:
    """Every spelling of the same kernel state, parsed."""
    nat_s = ns.list_rules("nat", backend, verbose=True)
    filter_s = ns.list_rules("filter", backend, verbose=True)
    return {
        "iptables-save -c": parse_rules(ns.save(backend, counters=True), "save-c"),
        "iptables-save": parse_rules(ns.save(backend, counters=False), "save"),
        "-S -v nat + -S -v filter, concatenated": parse_rules(nat_s + filter_s, "S-v"),
        "-S -v, two inputs": merged(parse_rules(nat_s, "nat-S-v"), parse_rules(filter_s, "filter-S-v")),
        "-S, two inputs": merged(parse_rules(ns.list_rules("nat", backend, verbose=False), "nat-S"),
                                 parse_rules(ns.list_rules("filter", backend, verbose=False), "filter-S")),
    }


def _check_same_traces(original: NodeRules, dumps: dict[str, NodeRules], folder) -> list[str]:
    errors = []
    for node_ip, flow, protocol in flows_of(folder):
        args = (flow["sourceIP"], flow["destIP"], flow["destPort"], protocol)
        want = signature(trace_packet(original, *args, node_ips=(node_ip,)))
        for spelling, rules in dumps.items():
            got = signature(trace_packet(rules, *args, node_ips=(node_ip,)))
            if got != want:
                errors.append(f"{spelling}: {flow['name']}: {got} != {want}")
    return errors


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize(("set_id", "folder"), [(s[0], s[1]) for s in RULE_SETS], ids=SET_IDS)
def test_kernel_dump_traces_like_kube_proxys_text(set_id, folder, backend):
    require_netns()
    text = case_text(folder)
    with Namespace() as ns:
        ns.restore(text, backend)
        dumps = dumps_of(ns, backend)
    for spelling, rules in dumps.items():
        assert rules.table("nat") is not None and rules.table("filter") is not None, spelling
        assert rules.format in ("iptables-save", "iptables-S"), spelling
    # headerless -S output: the table was guessed, and the guess is reported
    assert any("read as the nat table" in w for w in dumps["-S -v, two inputs"].warnings)
    assert dumps["iptables-save -c"].has_counters and dumps["-S -v, two inputs"].has_counters
    assert not dumps["iptables-save"].has_counters
    errors = _check_same_traces(parse_rules(text, set_id), dumps, folder)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize(("set_id", "folder"), [(s[0], s[1]) for s in RULE_SETS], ids=SET_IDS)
def test_node_like_dump_with_jumps_gives_kube_proxys_answers(set_id, folder, backend):
    """As on a node: kube-proxy's jumps from the built-in chains are there, so the trace walks the real hooks."""
    require_netns()
    with Namespace() as ns:
        ns.restore(with_kube_proxy_jumps(case_text(folder)), backend)
        dumps = dumps_of(ns, backend)
    errors = []
    for node_ip, flow, protocol in flows_of(folder):
        want_verdict = "none" if flow["output"] == "" else (
            flow["output"].lower() if flow["output"] in ("ACCEPT", "DROP", "REJECT") else "dnat")
        want_targets = set() if want_verdict != "dnat" else {p.strip() for p in flow["output"].split(",")}
        for spelling, rules in dumps.items():
            r = trace_packet(rules, flow["sourceIP"], flow["destIP"], flow["destPort"], protocol, node_ips=(node_ip,))
            got = (r.verdict, r.destinations, r.masquerade, r.entered_without_jumps, len(r.uncertain))
            if got != (want_verdict, want_targets, flow["masq"], [], 0):
                errors.append(f"{spelling}: {flow['name']}: {got}")
    assert not errors, "\n".join(errors)


def test_kernel_normalises_what_kube_proxy_wrote():
    """The differences the parser and tracer have to absorb, seen on the real kernel (not typed in)."""
    require_netns()
    folder = dict((s[0], s[1]) for s in RULE_SETS)["03-etp-local-lb-session-affinity"]
    with Namespace() as ns:
        ns.restore(case_text(folder), "nft")
        saved = ns.save("nft", counters=True)
    rules = parse_rules(saved, "save")
    masq = rules.chain("nat", "KUBE-MARK-MASQ").rules[0]
    assert masq.target == "MARK" and masq.target_args == ["--set-xmark", "0x4000/0x4000"]
    assert any(r.value("--mask") == "255.255.255.255" and r.option("--rcheck") for r in rules.table("nat").rules())
    assert all("/32" in (r.value("-d") or "/32") for r in rules.chain("nat", "KUBE-SERVICES").rules)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_counters_round_trip(backend):
    """`iptables-restore -c` with `[p:b]` counters, then `iptables-save -c` and `iptables -S -v`: same numbers."""
    require_netns()
    folder = dict((s[0], s[1]) for s in RULE_SETS)["01-overall-multiple-services"]
    lines, expected = [], {}
    n = 0
    for line in (folder / "nat.txt").read_text().splitlines():
        if line.startswith("-A "):
            n += 1
            chain = line.split()[1]
            packets, nbytes = n * 7, n * 7 * 60 + n  # distinct per rule, bytes ≥ 60 per packet
            expected.setdefault(chain, []).append((packets, nbytes))
            line = f"[{packets}:{nbytes}] {line}"
        elif line == "*nat":
            line += "\n:PREROUTING ACCEPT [123:4567]\n:POSTROUTING ACCEPT [89:1011]"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    with Namespace() as ns:
        ns.restore(text, backend, counters=True)
        saved = parse_rules(ns.save(backend, counters=True), "save-c")
        listed = parse_rules(ns.list_rules("nat", backend, verbose=True), "S-v")
    for rules in (saved, listed):
        assert rules.has_counters
        got = {name: [(r.packets, r.bytes) for r in c.rules] for name, c in rules.table("nat").chains.items() if c.rules}
        assert got == expected
        pre = rules.chain("nat", "PREROUTING")
        assert (pre.policy, pre.packets, pre.bytes) == ("ACCEPT", 123, 4567)
    assert math.isclose(sum(p for c in expected.values() for p, _ in c), sum(
        r.packets for r in saved.table("nat").rules()))
