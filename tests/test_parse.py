"""The parser against every spelling of the same rules, taken from the real kernel where it can be.

One ruleset, written as kube-proxy writes its iptables-restore input (bare comments, `0x00004000` marks, options
in kube-proxy's order), is loaded into a network namespace with each backend and dumped back as
`iptables-save -c`, `iptables-save`, `iptables -t T -S -v` and `iptables -t T -S`. Every dump must parse into the
same rules, once the kernel's normalisations (docs/reference/kube-proxy-layout.md §2.9) are taken into account.
"""

from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import pytest
from netns import BACKENDS, Namespace, require_netns

from svcdoctor.errors import ExitStatus, InputError
from svcdoctor.model.parse import decode_dump, parse_rules
from svcdoctor.model.trace import trace_packet

# kube-proxy's spelling (restore input): bare comments, 0x00004000, `-m tcp -p tcp -d … --dport`, and some counters
RESTORE_INPUT = """\
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]
:KUBE-SEP-BBBBBBBBBBBBBBBB - [0:0]
:KUBE-SEP-CCCCCCCCCCCCCCCC - [0:0]
[11:660] -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp -m multiport --dports 30080,30443:30450 -j KUBE-SVC-AAAAAAAAAAAAAAAA
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SVC-AAAAAAAAAAAAAAAA -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-AAAAAAAAAAAAAAAA -m comment --comment "ns1/svc1:p80 -> 10.244.1.5:8080" -m recent --name KUBE-SEP-BBBBBBBBBBBBBBBB --rcheck --seconds 10800 --reap -j KUBE-SEP-BBBBBBBBBBBBBBBB
[7:420] -A KUBE-SVC-AAAAAAAAAAAAAAAA -m comment --comment "ns1/svc1:p80 -> 10.244.1.5:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-BBBBBBBBBBBBBBBB
[4:240] -A KUBE-SVC-AAAAAAAAAAAAAAAA -m comment --comment "ns1/svc1:p80 -> 10.244.2.6:8080" -j KUBE-SEP-CCCCCCCCCCCCCCCC
-A KUBE-SEP-BBBBBBBBBBBBBBBB -m comment --comment ns1/svc1:p80 -s 10.244.1.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-BBBBBBBBBBBBBBBB -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-BBBBBBBBBBBBBBBB --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-CCCCCCCCCCCCCCCC -m comment --comment ns1/svc1:p80 -s 10.244.2.6 -j KUBE-MARK-MASQ
-A KUBE-SEP-CCCCCCCCCCCCCCCC -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-CCCCCCCCCCCCCCCC --set -m tcp -p tcp -j DNAT --to-destination 10.244.2.6:8080
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
[3:180] -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-EXTERNAL-SERVICES -p tcp -m limit --limit 5/sec -m pkttype --pkt-type unicast -j ACCEPT
COMMIT
"""

# Comments the kernel has to escape; added with `iptables -A` (argv, no shell) so the kernel does the quoting
ODD_COMMENTS = ['a "quoted" word', "back\\slash and -j X"]


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def dumps(request):
    """Every spelling of RESTORE_INPUT, as the kernel prints it with one backend."""
    require_netns()
    backend = request.param
    other = "legacy" if backend == "nft" else "nft"
    with Namespace() as ns:
        ns.restore(RESTORE_INPUT, backend, counters=True)
        for comment in ODD_COMMENTS:
            ns.iptables("-t", "filter", "-A", "KUBE-FIREWALL", "-m", "comment", "--comment", comment, "-j", "ACCEPT",
                        backend=backend)
        out = {
            "backend": backend,
            "save-c": ns.save(backend, counters=True),
            "save": ns.save(backend, counters=False),
            "S-v": {t: ns.list_rules(t, backend, verbose=True) for t in ("mangle", "nat", "filter")},
            "S": {t: ns.list_rules(t, backend, verbose=False) for t in ("mangle", "nat", "filter")},
        }
        # rules in the other backend too: iptables-nft warns about legacy tables (on stderr; collectors use 2>&1)
        ns.iptables("-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP", backend=other)
        out["save-with-warning"] = ns.save(backend, counters=True, with_warnings=True)
        out["S-with-warning"] = ns.list_rules("nat", backend, verbose=True, with_warnings=True)
    return out


# -- what "the same rule" means across spellings ----------------------------------------------------------------

def _mark(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


def _target(rule) -> tuple:
    args = rule.target_args
    if rule.target == "MARK":
        # --or-mark X is --set-xmark X/X, --xor-mark X is --set-xmark X/0 (what iptables-save prints)
        if args[0] == "--or-mark":
            return ("MARK", (int(args[1], 0), int(args[1], 0)))
        if args[0] == "--xor-mark":
            return ("MARK", (int(args[1], 0), 0))
        return ("MARK", _mark(args[1]))
    return (rule.target, tuple(args))


def _match(m) -> tuple | None:
    value = m.value
    if m.module == "recent" and m.option in ("--mask", "--rsource"):
        return None  # defaults that iptables-save spells out
    if m.option in ("-s", "-d") and value:
        value = str(ipaddress.ip_network(value, strict=False))
    elif m.option == "--probability":
        value = round(float(value), 8)  # stored as round(p * 2^31): 0.5000000000 comes back as 0.50000000000
    elif m.option == "--mark":
        value = _mark(value)
    return (m.option, value, m.negated, m.module)


def semantic(rules) -> dict:
    """table → chain → [(comment, sorted matches, target)] — the meaning, not the spelling."""
    out = {}
    for tname, table in rules.tables.items():
        for cname, chain in table.chains.items():
            if chain.builtin and not chain.rules:
                continue  # iptables-save lists empty built-in chains; kube-proxy's input does not
            out.setdefault(tname, {})[cname] = [
                (r.comment, tuple(sorted(filter(None, map(_match, r.matches)), key=repr)), _target(r))
                for r in chain.rules
            ]
    return out


def _counters(rules) -> dict:
    return {(t, c.name, r.position): (r.packets, r.bytes) for t, tb in rules.tables.items()
            for c in tb.chains.values() for r in c.rules}


def _with_odd_comments(rules_semantic: dict) -> dict:
    expected = {t: {c: list(rs) for c, rs in chains.items()} for t, chains in rules_semantic.items()}
    expected["filter"]["KUBE-FIREWALL"] += [(c, (), ("ACCEPT", ())) for c in ODD_COMMENTS]
    return expected


# -- the restore input ------------------------------------------------------------------------------------------

def test_restore_input_spelling():
    rules = parse_rules(RESTORE_INPUT, "restore")
    assert rules.format == "restore-input" and set(rules.tables) == {"mangle", "nat", "filter"}
    assert rules.has_counters
    sep = rules.chain("nat", "KUBE-SEP-BBBBBBBBBBBBBBBB").rules
    assert sep[0].comment == "ns1/svc1:p80"  # bare comment
    assert sep[1].dnat_destination == "10.244.1.5:8080"
    assert rules.chain("nat", "KUBE-MARK-MASQ").rules[0].target_args == ["--or-mark", "0x00004000"]
    assert rules.chain("mangle", "KUBE-IPTABLES-HINT").rules == []
    assert rules.chain("nat", "KUBE-SVC-AAAAAAAAAAAAAAAA").rules[2].packets == 7


def test_restore_input_with_chain_deletions():
    text = RESTORE_INPUT.replace("COMMIT\n*filter", "-X KUBE-SEP-CCCCCCCCCCCCCCCC\nCOMMIT\n*filter")
    assert parse_rules(text, "t").chain("nat", "KUBE-SEP-CCCCCCCCCCCCCCCC") is None


# -- every kernel spelling --------------------------------------------------------------------------------------

def test_iptables_save_c_means_the_same(dumps):
    rules = parse_rules(dumps["save-c"], "save-c")
    assert rules.format == "iptables-save" and rules.has_counters
    assert semantic(rules) == _with_odd_comments(semantic(parse_rules(RESTORE_INPUT, "r")))
    assert rules.chain("nat", "PREROUTING").policy == "ACCEPT"


def test_iptables_save_without_counters(dumps):
    rules = parse_rules(dumps["save"], "save")
    assert not rules.has_counters
    assert all(v == (None, None) for v in _counters(rules).values())
    assert semantic(rules) == semantic(parse_rules(dumps["save-c"], "save-c"))


def test_counters_survive_every_counting_spelling(dumps):
    loaded = {k: v for k, v in _counters(parse_rules(RESTORE_INPUT, "r")).items() if v != (None, None)}
    assert loaded  # the input does carry counters
    for name, rules in (("save-c", parse_rules(dumps["save-c"], "s")),
                        ("S-v", parse_rules("".join(dumps["S-v"].values()), "S-v"))):
        got = _counters(rules)
        for key, value in loaded.items():
            assert got[key] == value, name
        assert sum(p for p, _ in got.values()) == sum(p for p, _ in loaded.values()), name


@pytest.mark.parametrize("spelling", ["S-v", "S"])
def test_headerless_listing_per_table(dumps, spelling):
    for table, text in dumps[spelling].items():
        rules = parse_rules(text, f"{table}.txt")
        assert rules.format == "iptables-S"
        assert list(rules.tables) == [table], f"guessed {list(rules.tables)} for {table}"
        assert any(f"read as the {table} table" in w for w in rules.warnings)
        if rules.rule_count:
            assert rules.has_counters == (spelling == "S-v")
        assert all(c.declared for c in rules.table(table).chains.values())  # -N / -P lines


@pytest.mark.parametrize("spelling", ["S-v", "S"])
def test_headerless_listings_concatenated(dumps, spelling):
    rules = parse_rules("".join(dumps[spelling][t] for t in ("mangle", "nat", "filter")), "all.txt")
    assert set(rules.tables) == {"mangle", "nat", "filter"}
    assert semantic(rules) == semantic(parse_rules(dumps["save-c"], "save-c"))


def test_legacy_warning_is_a_backend_warning_not_a_rule(dumps):
    for key, clean in (("save-with-warning", dumps["save-c"]), ("S-with-warning", dumps["S-v"]["nat"])):
        text = dumps[key]
        assert text.startswith("# Warning: iptables-legacy tables present") == (dumps["backend"] == "nft"), key
        rules = parse_rules(text, key)
        if dumps["backend"] == "nft":
            assert rules.backend_warnings == [text.splitlines()[0]]
        else:
            assert rules.backend_warnings == []  # iptables-legacy does not look at nft tables
        assert rules.rule_count == parse_rules(clean, "clean").rule_count


# -- matches ----------------------------------------------------------------------------------------------------

def _rule(rules, table, chain, index):
    return rules.chain(table, chain).rules[index]


def test_matches_from_the_kernel(dumps):
    rules = parse_rules(dumps["save-c"], "save-c")
    masq = _rule(rules, "nat", "KUBE-SVC-AAAAAAAAAAAAAAAA", 0)
    src = masq.option("-s")
    assert (src.value, src.negated, src.module) == ("10.244.0.0/16", True, None)
    assert masq.value("-d") == "172.30.0.41/32" and masq.value("--dport") == "80"
    assert masq.option("--dport").module == "tcp"

    affinity = _rule(rules, "nat", "KUBE-SVC-AAAAAAAAAAAAAAAA", 1)
    assert affinity.option("--rcheck").module == "recent" and affinity.value("--name") == "KUBE-SEP-BBBBBBBBBBBBBBBB"
    assert affinity.value("--seconds") == "10800" and affinity.option("--reap") is not None

    split = _rule(rules, "nat", "KUBE-SVC-AAAAAAAAAAAAAAAA", 2)
    assert split.value("--mode") == "random" and split.probability == pytest.approx(0.5, abs=1e-9)

    ret = _rule(rules, "nat", "KUBE-POSTROUTING", 0)
    mark = ret.option("--mark")
    assert (mark.value, mark.negated, mark.module) == ("0x4000/0x4000", True, "mark")
    assert _mark(mark.value) == _mark("0x00004000/0x00004000")

    nodeports = _rule(rules, "nat", "KUBE-SERVICES", 1)
    assert nodeports.option("--dst-type").module == "addrtype" and nodeports.value("--dst-type") == "LOCAL"
    assert nodeports.option("-d").negated

    multi = _rule(rules, "nat", "KUBE-NODEPORTS", 0)
    assert multi.option("--dports").module == "multiport" and multi.value("--dports") == "30080,30443:30450"

    fw = _rule(rules, "filter", "KUBE-FIREWALL", 0)
    ct = fw.option("--ctstate")
    assert (ct.value, ct.negated, ct.module) == ("RELATED,ESTABLISHED,DNAT", True, "conntrack")
    assert fw.comment == "block incoming localnet connections"

    assert [r.comment for r in rules.chain("filter", "KUBE-FIREWALL").rules[1:]] == ODD_COMMENTS
    assert [r.target for r in rules.chain("filter", "KUBE-FIREWALL").rules[1:]] == ["ACCEPT", "ACCEPT"]

    # matches the tracer does not know are kept, with their module
    other = _rule(rules, "filter", "KUBE-EXTERNAL-SERVICES", 1)
    assert [(m.module, m.option, m.value) for m in other.matches if m.module] == [
        ("limit", "--limit", "5/sec"), ("pkttype", "--pkt-type", "unicast")]


def test_match_set_is_kept_as_an_unknown_match():
    # typed: the `ipset` tool that would create the set in a namespace is not on the machines; this is the text
    # iptables-save prints for it
    text = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set KUBE-LOAD-BALANCER dst,dst -m comment --comment "load balancer" -j ACCEPT
-A INPUT -m set ! --match-set ALLOWED src -j DROP
COMMIT
"""
    rules = parse_rules(text, "set")
    first, second = rules.chain("filter", "INPUT").rules
    assert [(m.module, m.option, m.value, m.negated) for m in first.matches] == [
        ("set", "--match-set", "KUBE-LOAD-BALANCER dst,dst", False)]
    assert first.comment == "load balancer" and first.target == "ACCEPT"
    assert second.option("--match-set").negated
    result = trace_packet(rules, "203.0.113.1", "192.168.0.2", 80, node_ips=("192.168.0.2",))
    assert result.verdict == "none" and len(result.uncertain) == 2


def test_marks_in_both_spellings_trace_alike(dumps):
    # kube-proxy's 0x00004000 / --or-mark and the kernel's 0x4000 / --set-xmark must mean the same mark
    for text in (RESTORE_INPUT, dumps["save-c"]):
        rules = parse_rules(text, "t")
        result = trace_packet(rules, "203.0.113.1", "172.30.0.41", 80, node_ips=("192.168.0.2",))
        assert result.verdict == "dnat" and result.masquerade
        assert {e.address for e in result.endpoints} == {"10.244.1.5:8080", "10.244.2.6:8080"}


# -- bad input --------------------------------------------------------------------------------------------------

def _input_error(text: str) -> InputError:
    with pytest.raises(InputError) as info:
        parse_rules(text, "bad.txt")
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 300, message
    assert info.value.exit_status == ExitStatus.USAGE
    return info.value


def test_empty_input():
    _input_error("")
    _input_error("\n\n   \n")
    _input_error("# Generated by iptables-save v1.8.9\n")


def test_random_bytes():
    for seed in range(20):
        data = random.Random(seed).randbytes(2048)
        for blob in (data, data.replace(b"\x00", b"")):  # with NULs ("binary") and without ("not UTF-8")
            with pytest.raises(InputError) as info:
                decode_dump(blob, "random.bin")
            assert "\n" not in str(info.value)
        _input_error(data.replace(b"\x00", b"").decode("latin-1"))


def test_truncated_dump_without_commit(dumps):
    text = dumps["save-c"]
    cut = text[: text.rindex("COMMIT")]
    assert "no COMMIT" in str(_input_error(cut))


def test_dump_cut_mid_line(dumps):
    text = dumps["save-c"]
    line_start = text.index("-A KUBE-SVC-")
    _input_error(text[: line_start + 25])
    _input_error(text[: text.index("\n", text.index("*nat")) - 3])  # inside the table header


def test_very_long_line():
    long_rule = "-A INPUT " + "-s 10.0.0.1 " * 8333 + "-j ACCEPT"
    assert len(long_rule) > 100_000
    assert re.search(r"line 2 is \d+ characters long", str(_input_error(f"*filter\n{long_rule}\nCOMMIT\n")))
    _input_error("x" * 100_000)


def test_garbage_line_inside_a_table():
    _input_error("*filter\n:INPUT ACCEPT [0:0]\nthis is not a rule\nCOMMIT\n")
    _input_error("*filter\n[1:x] -A INPUT -j ACCEPT\nCOMMIT\n")


def _layout(rules) -> dict:
    """Everything parse_rules read, rule lines as they are kept (unparsed)."""
    return {
        "format": rules.format, "counters": rules.has_counters, "warnings": rules.warnings,
        "backend": rules.backend_warnings,
        "tables": {name: [(c.name, c.policy, c.packets, c.bytes, c.declared, c.lines()) for c in t.chains.values()]
                   for name, t in rules.tables.items()},
    }


COUNTED_ODDITIES = [
    "[0:0] -A  KUBE-SERVICES -j ACCEPT",  # two spaces: no chain name where iptables puts it
    "[0:0] -A KUBE-SERVICES",  # a rule with nothing after its chain
    "[\u00b2:0] -A KUBE-SERVICES -j ACCEPT",  # a digit to str.isdigit, not to [0-9]
    "[1:2]  -A KUBE-SERVICES -j ACCEPT",
    "[12:345] -A KUBE-SERVICES -m comment --comment \"] -A X\" -j ACCEPT",
    "[3:4] -A NOT-DECLARED -j ACCEPT",
]


def test_counted_rules_read_in_one_search_read_as_line_by_line(monkeypatch):
    """parse.py reads `[p:b] -A CHAIN` with one regular expression, and anything it does not match the careful
    way: both must read every dump (and every odd line) alike, errors included."""
    import svcdoctor.model.parse as parse

    from svcdoctor.collect.bundle import demo_bundle_path

    dumps = [p.read_text() for p in sorted(Path(demo_bundle_path()).glob("nodes/*/iptables.txt"))]
    dumps += ["*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n" + line + "\nCOMMIT\n"
              for line in COUNTED_ODDITIES]
    assert len(dumps) > len(COUNTED_ODDITIES)

    def read(text):
        try:
            return _layout(parse_rules(text, "dump"))
        except InputError as e:
            return str(e)

    fast = [read(text) for text in dumps]
    monkeypatch.setattr(parse, "_COUNTED_RULE", re.compile(r"(?!)"))  # matches nothing
    assert [read(text) for text in dumps] == fast
