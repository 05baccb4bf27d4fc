"""One packet through one node's nat and filter rules, the way netfilter walks them.

Hook order for the first packet of a new connection (the only packet that meets the nat table):

- arriving from elsewhere:  nat PREROUTING → routing → filter INPUT (local destination)
                                                     → filter FORWARD → nat POSTROUTING (anything else)
- sent by the node itself:  nat OUTPUT → filter OUTPUT → nat POSTROUTING [→ filter INPUT if the destination is local]

A DNAT in PREROUTING/OUTPUT changes the destination before the routing decision. Every branch of
`-m statistic --mode random` is followed, each with its share of the traffic, so the result lists every endpoint
a new connection can reach (the Go test tracer in kube-proxy does the same: docs/reference/kube-proxy-layout.md §2.12).

kube-proxy's own iptables-restore input has no jumps from the built-in chains (kube-proxy adds them separately
with `iptables -I`), so when a table has no built-in chain in the dump the trace enters where kube-proxy's tests
enter: nat KUBE-SERVICES (KUBE-POSTROUTING on the way out), then filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES,
KUBE-NODEPORTS, KUBE-PROXY-FIREWALL (docs/reference/contract.md, Trace).

A match the tracer cannot decide from the dump (`-m set`: the set's members are not in it; `-i`: the packet's
interface is unknown; …) is never taken as "matches": the rule is treated as not matching and is listed in
``TraceResult.uncertain`` so the reader knows the answer rests on a guess.

Pure: no I/O; the rules come in as a parsed ``NodeRules``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from svcdoctor.errors import InputError
from svcdoctor.model.partial import missing_pieces
from svcdoctor.model.rules import NodeRules, Rule

# Where kube-proxy's tests enter a table whose dump has no built-in chains (proxier_test.go tracePacket).
KUBE_PROXY_ENTRY = {
    ("nat", "PREROUTING"): ("KUBE-SERVICES",),
    ("nat", "OUTPUT"): ("KUBE-SERVICES",),
    ("nat", "POSTROUTING"): ("KUBE-POSTROUTING",),
    ("filter", "*"): ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"),
}

VERDICTS = ("dnat", "accept", "drop", "reject", "none")

_PROTOCOL_NUMBERS = {
    "all": 0, "icmp": 1, "tcp": 6, "udp": 17, "dccp": 33, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "udplite": 136,
}
_PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite", "dccp")

# Targets that do something to the packet and let it go on to the next rule.
_NON_TERMINATING = frozenset(
    {"LOG", "NFLOG", "ULOG", "CONNMARK", "CT", "NOTRACK", "TRACE", "TCPMSS", "CHECKSUM", "CLASSIFY", "DSCP", "TOS",
     "TTL", "HL", "AUDIT", "SET", "CONNSECMARK", "SECMARK", "NFACCT", "IDLETIMER", "LED", "RATEEST"}
)

_LOOPBACK_NETS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# kube-proxy's marking chains: what a jump to them does when a partial input lacks them (value, meaning)
KUBE_PROXY_MARKS = {
    "KUBE-MARK-MASQ": (0x4000, "masquerade in KUBE-POSTROUTING"),
    "KUBE-MARK-DROP": (0x8000, "drop in kubelet's KUBE-FIREWALL; kube-proxy before 1.25"),
}
MASQUERADE_MARK = 0x4000
_MAX_DEPTH = 64  # iptables refuses loops; a deeper nesting means a broken dump, not a real ruleset


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Packet:
    src: str
    dst: str
    dport: int
    protocol: str = "tcp"
    sport: int | None = None  # the client's port is usually unknown; a rule on --sport is then uncertain



@dataclass(slots=True)
class Step:
    """One rule that took the packet (or that the tracer could not decide), in the order the kernel meets it."""

    table: str
    chain: str
    rule: str  # the rule as `iptables -S` prints it; "" for entering a chain without a jump, policy text for policies
    action: str
    share: float  # the part of the traffic that took this step



@dataclass(slots=True)
class TraceEndpoint:
    """A DNAT target reachable by a new connection."""

    ip: str
    port: int
    chain: str  # the chain holding the DNAT rule (KUBE-SEP-…)
    probability: float  # effective share of new connections, 0..1
    masquerade: bool  # this path is source-NATed in POSTROUTING
    verdict: str = "dnat"  # "drop"/"reject" when a filter rule stops the packet after the DNAT
    # named by commands/trace.py from the API objects, when the input has them
    pod: str | None = None  # "ns/name"
    pod_node: str | None = None

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"



@dataclass(slots=True)
class UncertainRule:
    """A rule whose match could not be decided from the dump; the trace treated it as not matching."""

    table: str
    chain: str
    rule: str
    reason: str



@dataclass(slots=True)
class TracePath:
    """One way through the rules (one branch of the random splits)."""

    share: float
    verdict: str
    endpoint: str | None  # "ip:port" after DNAT, None when not DNATed
    masquerade: bool
    steps: list[int]  # indexes into TraceResult.steps



@dataclass(slots=True)
class TraceResult:
    node: str | None
    packet: Packet
    verdict: str  # dnat | accept | drop | reject | none
    endpoints: list[TraceEndpoint]
    masquerade: bool  # marked for SNAT on any reachable path
    steps: list[Step]
    uncertain: list[UncertainRule] = field(default_factory=list)
    paths: list[TracePath] = field(default_factory=list)
    # tables entered the way kube-proxy's tests enter them, because the dump has no built-in chains for them
    entered_without_jumps: list[str] = field(default_factory=list)
    # a partial input (model/partial.py): what it lacks that this packet's way went through, and what was assumed
    partial: list[str] = field(default_factory=list)
    # the service port the packet met ("ns/name:port"), named by commands/trace.py from the rules' comments
    service: str | None = None
    # what else on the node decides this packet's way (model/mixed_trace.py: iptables rules left on an nftables node)
    notes: list[str] = field(default_factory=list)

    @property
    def destinations(self) -> set[str]:
        """The DNAT targets the packet can reach ("ip:port"), as kube-proxy's test tracer lists them."""
        return {e.address for e in self.endpoints if e.verdict == "dnat"}


# --------------------------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Flow:
    """The packet on one branch: what the rules have done to it so far."""

    share: float
    dst: str
    dport: int
    mark: int = 0
    ctstates: frozenset[str] = frozenset({"NEW"})
    dnat: tuple[str, int, str] | None = None  # (ip, port, chain)
    masquerade: bool = False
    verdict: str | None = None  # set when a rule (or a DROP policy) decided the packet's fate
    steps: list[int] = field(default_factory=list)

    def fork(self, share: float) -> _Flow:
        return _Flow(share, self.dst, self.dport, self.mark, self.ctstates, self.dnat, self.masquerade,
                     self.verdict, list(self.steps))


@dataclass(slots=True)
class _Outcome:
    flow: _Flow
    kind: str  # return | accept | drop | reject | dnat | snat | nat-accept


class _Undecided(Exception):
    """A match the tracer cannot decide (carries the reason)."""


class _Tracer:
    def __init__(self, rules: NodeRules, packet: Packet, local: tuple):
        self.rules = rules
        self.packet = packet
        self.local = local  # ip_address objects of the node, plus loopback networks
        self.steps: list[Step] = []
        self.uncertain: list[UncertainRule] = []
        self.partial: list[str] = []
        self._uncertain_seen: set[tuple[str, str, int]] = set()
        self.entered_without_jumps: list[str] = []

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _step(self, flow: _Flow, table: str, chain: str, rule: str, action: str) -> None:
        flow.steps.append(len(self.steps))
        self.steps.append(Step(table, chain, rule, action, flow.share))

    def _missing(self, note: str) -> None:
        if note not in self.partial:
            self.partial.append(note)

    def _doubt(self, flow: _Flow, rule: Rule, reason: str) -> None:
        self._step(flow, rule.table, rule.chain, rule.text, f"uncertain: {reason}; treated as not matching")
        key = (rule.table, rule.chain, rule.position)
        if key not in self._uncertain_seen:
            self._uncertain_seen.add(key)
            self.uncertain.append(UncertainRule(rule.table, rule.chain, rule.text, reason))

    # -- hooks ---------------------------------------------------------------------------------------------
    def _table_hooked(self, table: str) -> bool:
        """Is anything hooked into this table's built-in chains?

        kube-proxy's restore input declares no built-in chain; loaded into a kernel and dumped back, the built-in
        chains show up with their policies but empty. Either way nothing leads into the KUBE-* chains, so the trace
        enters them directly and says so (``entered_without_jumps``); the caller can flag the missing jumps.
        """
        t = self.rules.table(table)
        if t is None:
            return False
        return any(c.builtin and c.rules for c in t.chains.values())

    def run_hook(self, table: str, hook: str, flow: _Flow) -> list[_Outcome]:
        """Run one hook; outcomes of kind 'return' mean the packet goes on (policy ACCEPT or no decision)."""
        if self.rules.table(table) is None:
            return [_Outcome(flow, "return")]
        chain = self.rules.chain(table, hook)
        if self._table_hooked(table):
            outcomes = self._run(table, hook, 0, flow, 0) if chain is not None else [_Outcome(flow, "return")]
        else:
            entries = KUBE_PROXY_ENTRY.get((table, hook)) or KUBE_PROXY_ENTRY.get((table, "*"), ())
            if entries and table not in self.entered_without_jumps:
                self.entered_without_jumps.append(table)
            outcomes = self._run_sequence(table, hook, entries, flow)
        if chain is not None and chain.policy == "DROP":
            # what no rule decided falls to the built-in chain's policy (a DROP FORWARD policy is common)
            for o in outcomes:
                if o.kind == "return":
                    self._step(o.flow, table, hook, f"-P {hook} DROP", "policy DROP")
                    o.kind = "drop"
        return outcomes

    def _run_sequence(self, table: str, hook: str, chains: tuple[str, ...], flow: _Flow) -> list[_Outcome]:
        if not chains:
            return [_Outcome(flow, "return")]
        first, rest = chains[0], chains[1:]
        if self.rules.chain(table, first) is None:
            return self._run_sequence(table, hook, rest, flow)
        self._step(flow, table, first, "", f"enter (no built-in {table} chains in the dump; entered as kube-proxy's tests do)")
        outcomes = []
        for o in self._run(table, first, 0, flow, 0):
            if o.kind == "return":
                outcomes.extend(self._run_sequence(table, hook, rest, o.flow))
            else:
                outcomes.append(o)
        return outcomes

    # -- chains --------------------------------------------------------------------------------------------
    def _run(self, table: str, chain_name: str, start: int, flow: _Flow, depth: int) -> list[_Outcome]:
        """Run `flow` through a chain from rule `start`; what leaves the chain, terminal or returning."""
        chain = self.rules.chain(table, chain_name)
        if chain is None:
            return [_Outcome(flow, "return")]
        rules = chain.rules
        outcomes: list[_Outcome] = []
        # (next rule, flow) still to run in this chain; a loop rather than recursion, so that a chain with thousands
        # of matching non-terminating rules does not exhaust Python's stack. Pushed in reverse: branches in order.
        pending = [(start, flow)]
        while pending:
            i, flow = pending.pop()
            while i < len(rules):
                rule = rules[i]
                i += 1
                try:
                    matched, probability = self._matches(rule, flow)
                except _Undecided as e:
                    self._doubt(flow, rule, str(e))
                    continue
                if not matched:
                    continue
                if rule.target is None:
                    # a rule without a target only counts packets (KUBE-FW's "other traffic … will be dropped")
                    self._step(flow, table, chain_name, rule.text, "continue")
                    continue
                if probability is not None and probability < 1.0:
                    if probability <= 0.0:
                        continue
                    hit = flow.fork(flow.share * probability)
                    flow.share *= 1.0 - probability
                    pending.append((i, flow))  # the rest of the traffic goes on with the next rule, after the hit
                    flow = hit
                ended, going_on = self._take(table, chain_name, rule, flow, depth, probability)
                outcomes.extend(ended)
                pending.extend((i, f) for f in reversed(going_on))
                break
            else:
                outcomes.append(_Outcome(flow, "return"))
        return outcomes

    def _take(self, table: str, chain_name: str, rule: Rule, flow: _Flow, depth: int,
              probability: float | None) -> tuple[list[_Outcome], list[_Flow]]:
        """The rule matched `flow`: do its target. Returns (what left the chain, flows going on with the next rule)."""
        target = rule.target
        text = rule.text
        if target in ("ACCEPT", "DROP", "REJECT"):
            self._step(flow, table, chain_name, text, target.lower())
            kind = target.lower() if table != "nat" or target != "ACCEPT" else "nat-accept"
            return [_Outcome(flow, kind)], []
        if target == "RETURN":
            self._step(flow, table, chain_name, text, "return")
            return [_Outcome(flow, "return")], []
        if target in ("DNAT", "REDIRECT", "NETMAP"):
            return [self._dnat(rule, flow)], []
        if target in ("MASQUERADE", "SNAT"):
            self._step(flow, table, chain_name, text, target.lower())
            flow.masquerade = True
            return [_Outcome(flow, "snat")], []
        if target == "MARK":
            flow.mark, action = _apply_mark(rule, flow.mark)
            self._step(flow, table, chain_name, text, action)
            return [], [flow]
        if self.rules.chain(table, target) is None and target in KUBE_PROXY_MARKS:
            # a grep or a few chains listed: kube-proxy's marking chains are not in the input, but what they do is
            # fixed (docs/reference/kube-proxy-layout.md §2.2); assumed, and said so
            value, what = KUBE_PROXY_MARKS[target]
            flow.mark |= value
            self._step(flow, table, chain_name, text, f"jump {target} (not in this input: kube-proxy's sets mark "
                                                      f"{value:#x}, {what})")
            self._missing(f"{target} is not in this input: its mark {value:#x} was assumed, as kube-proxy sets it")
            if target == "KUBE-MARK-DROP":
                self._step(flow, table, chain_name, text, "drop (kubelet's KUBE-FIREWALL drops mark 0x8000)")
                return [_Outcome(flow, "drop")], []
            return [], [flow]
        if self.rules.chain(table, target) is None:
            if target in _NON_TERMINATING:
                self._step(flow, table, chain_name, text, f"continue ({target})")
            else:
                self._doubt(flow, rule, f"target {target} is neither a chain of the {table} table nor one the tracer knows")
            return [], [flow]
        if depth >= _MAX_DEPTH:
            raise InputError(f"rules nest deeper than {_MAX_DEPTH} chains at {table} {chain_name}: a loop?")
        how = "goto" if rule.goto else "jump"
        action = f"{how} {target}" + (f" (probability {probability:.11g})" if probability is not None else "")
        self._step(flow, table, chain_name, text, action)
        ended: list[_Outcome] = []
        going_on: list[_Flow] = []
        for o in self._run(table, target, 0, flow, depth + 1):
            if o.kind == "return" and not rule.goto:
                going_on.append(o.flow)
            else:
                # terminal, or a goto'd chain's end/RETURN, which returns to our caller
                ended.append(o)
        return ended, going_on

    def _dnat(self, rule: Rule, flow: _Flow) -> _Outcome:
        if rule.target == "REDIRECT":
            ports = rule.target_option("--to-ports")
            ip = self.packet_local_address()
            port = int(ports.split("-")[0]) if ports else flow.dport
            where = f"{ip}:{port}"
        else:
            where = rule.dnat_destination or rule.target_option("--to") or ""
            ip, port = _split_destination(where, flow.dport)
        flow.dst, flow.dport = ip, port
        flow.ctstates = flow.ctstates | {"DNAT"}
        flow.dnat = (ip, port, rule.chain)
        self._step(flow, rule.table, rule.chain, rule.text, f"dnat {where}")
        return _Outcome(flow, "dnat")

    def packet_local_address(self) -> str:
        for a in self.local:
            if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                return str(a)
        return "127.0.0.1"

    # -- matches -------------------------------------------------------------------------------------------
    def is_local(self, address: str) -> bool:
        ip = _ip(address)
        for a in self.local:
            if isinstance(a, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                if ip.version == a.version and ip in a:
                    return True
            elif ip == a:
                return True
        return False

    def _matches(self, rule: Rule, flow: _Flow) -> tuple[bool, float | None]:
        """(matches, probability). Raises _Undecided for a match that the dump cannot decide."""
        probability = None
        undecided = None
        statistic_mode = None
        for m in rule.matches:
            try:
                if m.module == "statistic":
                    if m.option == "--mode":
                        statistic_mode = m.value
                    elif m.option == "--probability":
                        probability = float(m.value or "nan")
                        if not 0.0 <= probability <= 1.0:
                            raise _Undecided(f"statistic probability {m.value}")
                    elif m.option == "--every":
                        # every n-th packet: over many connections that is a 1/n share
                        probability = 1.0 / int(m.value or "0")
                    elif m.option != "--packet":
                        raise _Undecided(f"statistic option {m.option}")
                    continue
                ok = self._match(m, flow)
            except _Undecided as e:
                undecided = undecided or str(e)
                continue
            except (ValueError, ZeroDivisionError):
                undecided = undecided or f"cannot read {m.text()}"
                continue
            if ok == m.negated:
                return False, None  # a definite miss outweighs any doubt elsewhere in the rule
        if undecided is not None:
            raise _Undecided(undecided)
        if statistic_mode not in (None, "random", "nth"):
            raise _Undecided(f"statistic mode {statistic_mode}")
        return True, probability

    def _match(self, m, flow: _Flow) -> bool:
        """Does the (un-negated) match hold for this packet?"""
        option, value, module = m.option, m.value or "", m.module
        pkt = self.packet
        if module is None:
            if option == "-s":
                return _in_any(pkt.src, value)
            if option == "-d":
                return _in_any(flow.dst, value)
            if option == "-p":
                return _protocol_is(pkt.protocol, value)
            if option in ("-i", "-o"):
                raise _Undecided(f"{option} {value}: the packet's interface is not known")
            if option in ("-f", "--fragment"):
                return False  # the first packet of a connection is not a non-first fragment
            raise _Undecided(f"option {option}")
        if module in _PORT_PROTOCOLS:
            if option == "--dport":
                return _port_in(flow.dport, value)
            if option == "--sport":
                if pkt.sport is None:
                    raise _Undecided(f"--sport {value}: the client's source port is not known")
                return _port_in(pkt.sport, value)
            if option == "--syn":
                return pkt.protocol == "tcp"
            if option == "--tcp-flags":
                mask, _, comp = value.partition(" ")
                flags = {"SYN"}  # the first packet of a TCP connection
                want = _flag_set(mask)
                return (flags & want) == (_flag_set(comp) & want)
            raise _Undecided(f"-m {module} {option}")
        if module == "multiport":
            if option == "--dports":
                return any(_port_in(flow.dport, p) for p in value.split(","))
            if option == "--ports":
                if any(_port_in(flow.dport, p) for p in value.split(",")):
                    return True
                if pkt.sport is None:
                    raise _Undecided(f"--ports {value}: the client's source port is not known")
                return any(_port_in(pkt.sport, p) for p in value.split(","))
            if option == "--sports":
                if pkt.sport is None:
                    raise _Undecided(f"--sports {value}: the client's source port is not known")
                return any(_port_in(pkt.sport, p) for p in value.split(","))
            raise _Undecided(f"-m multiport {option}")
        if module == "addrtype":
            if option == "--src-type":
                return self._addrtype(pkt.src, value)
            if option == "--dst-type":
                return self._addrtype(flow.dst, value)
            raise _Undecided(f"-m addrtype {option}: depends on the node's interfaces")
        if module == "mark":
            if option == "--mark":
                want, mask = _mark_value(value)
                return (flow.mark & mask) == want
            raise _Undecided(f"-m mark {option}")
        if module == "recent":
            # a new connection from this client: no entry in the list yet, so checks miss and --set adds it
            if option in ("--rcheck", "--update", "--remove"):
                return False
            return True  # --set and the modifiers (--name, --seconds, --reap, --mask, --rsource …)
        if module in ("conntrack", "state"):
            if option in ("--ctstate", "--state"):
                states = flow.ctstates if module == "conntrack" else flow.ctstates & {"NEW"}
                return any(s in states for s in value.split(","))
            if option == "--ctproto":
                return _protocol_is(pkt.protocol, value)
            if option == "--ctorigsrc":
                return _in_any(pkt.src, value)
            if option == "--ctorigdst":
                return _in_any(pkt.dst, value)
            if option == "--ctorigdstport":
                return _port_in(pkt.dport, value)
            if option == "--ctdir":
                return value.upper() == "ORIGINAL"
            raise _Undecided(f"-m conntrack {option} {value}".rstrip())
        if module == "comment":
            return True
        if module == "nfacct":
            return True  # only counts (kube-proxy ≥1.31 adds it to a KUBE-NODEPORTS and the INVALID rule)
        if module == "iprange":
            if option in ("--src-range", "--dst-range"):
                address = pkt.src if option == "--src-range" else flow.dst
                low, _, high = value.partition("-")
                return _ip(low) <= _ip(address) <= _ip(high or low)
            raise _Undecided(f"-m iprange {option}")
        if module == "set":
            raise _Undecided(f"-m set {value}: the ipset's members are not in the dump".replace("  ", " "))
        raise _Undecided(f"-m {module} {option} {value}".rstrip())

    def _addrtype(self, address: str, value: str) -> bool:
        types = {t.strip().upper() for t in value.split(",")}
        ip = _ip(address)
        if self.is_local(address):
            mine = "LOCAL"
        elif ip.is_multicast:
            mine = "MULTICAST"
        elif ip.version == 4 and address == "255.255.255.255":
            mine = "BROADCAST"
        else:
            mine = "UNICAST"
        if mine in types:
            return True
        unknown = types - {"LOCAL", "UNICAST", "MULTICAST", "BROADCAST"}
        if unknown:
            raise _Undecided(f"address type {','.join(sorted(unknown))} depends on the node's routes")
        return False


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=65536)
def _network(text: str):
    return ipaddress.ip_network(text, strict=False)


@lru_cache(maxsize=65536)
def _ip(text: str):
    return ipaddress.ip_address(text)


def _in_any(address: str, value: str) -> bool:
    ip = _ip(address)
    for part in value.split(","):
        net = _network(part.strip())
        if net.version == ip.version and ip in net:
            return True
    return False


def _protocol_is(protocol: str, value: str) -> bool:
    v = value.lower()
    if v in ("all", "0"):
        return True
    if v.isdigit():
        return _PROTOCOL_NUMBERS.get(protocol) == int(v)
    return v == protocol or _PROTOCOL_NUMBERS.get(v, -1) == _PROTOCOL_NUMBERS.get(protocol, -2)


def _port_in(port: int, value: str) -> bool:
    value = value.strip()
    if ":" in value:
        low, _, high = value.partition(":")
        return (int(low) if low else 0) <= port <= (int(high) if high else 65535)
    if not value.isdigit():
        raise _Undecided(f"port {value}: a service name, not a number")
    return port == int(value)


def _flag_set(text: str) -> set[str]:
    flags = {f.strip().upper() for f in text.split(",") if f.strip()}
    if "ALL" in flags:
        return {"SYN", "ACK", "FIN", "RST", "URG", "PSH"}
    if "NONE" in flags:
        return set()
    return flags


def _mark_value(text: str) -> tuple[int, int]:
    # marks are compared as numbers: kube-proxy writes 0x00004000, iptables-save prints 0x4000
    value, _, mask = text.partition("/")
    return int(value, 0), (int(mask, 0) if mask else 0xFFFFFFFF)


def _apply_mark(rule: Rule, mark: int) -> tuple[int, str]:
    """The MARK target; every spelling reduces to --set-xmark value/mask: mark = (mark & ~mask) ^ value."""
    args = rule.target_args
    opts = {args[k]: (args[k + 1] if k + 1 < len(args) else "") for k in range(0, len(args), 1) if args[k].startswith("--")}
    if "--set-xmark" in opts:
        value, mask = _mark_value(opts["--set-xmark"])
    elif "--set-mark" in opts:
        value, mask = _mark_value(opts["--set-mark"])
        mask |= value  # --set-mark zeroes the mask bits, then ORs the value in
    elif "--or-mark" in opts:
        value = int(opts["--or-mark"], 0)
        mask = value
    elif "--xor-mark" in opts:
        value, mask = int(opts["--xor-mark"], 0), 0
    elif "--and-mark" in opts:
        value, mask = 0, ~int(opts["--and-mark"], 0) & 0xFFFFFFFF
    else:
        return mark, "mark (unknown MARK option, mark unchanged)"
    new = ((mark & ~mask) ^ value) & 0xFFFFFFFF
    return new, f"mark {mark:#x} -> {new:#x}"


def _split_destination(where: str, default_port: int) -> tuple[str, int]:
    """`--to-destination` forms: 10.1.1.1:80, 10.1.1.1, [fd00::1]:80, 10.1.1.1-10.1.1.3:80-90 (first of a range)."""
    if where.startswith("["):
        host, _, rest = where[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif where.count(":") == 1:
        host, _, port_text = where.partition(":")
    else:
        host, port_text = where, ""  # bare IPv4 or bare IPv6
    host = host.split("-")[0]
    port = int(port_text.split("-")[0]) if port_text else default_port
    return host, port


def _validate(src: str, dst: str, dport: int, protocol: str) -> None:
    for what, address in (("source", src), ("destination", dst)):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise InputError(f"trace: {what} {address!r} is not an IP address") from None
    if not 0 <= dport <= 65535:
        raise InputError(f"trace: port {dport} is out of range")
    if protocol not in ("tcp", "udp", "sctp"):
        raise InputError(f"trace: protocol {protocol!r}: use tcp, udp or sctp")


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------
def trace_packet(
    rules: NodeRules,
    src: str,
    dst: str,
    dport: int,
    protocol: str = "tcp",
    node_ips: tuple[str, ...] | list[str] = (),
    node: str | None = None,
    sport: int | None = None,
) -> TraceResult:
    """Trace the first packet of a new connection src → dst:dport through the node's nat and filter tables.

    ``node_ips`` are the node's own addresses (for `addrtype LOCAL` and to tell locally generated packets);
    127.0.0.0/8 and ::1 are always local.
    """
    protocol = protocol.lower()
    _validate(src, dst, dport, protocol)
    local: list = list(_LOOPBACK_NETS)
    for address in node_ips:
        try:
            local.append(ipaddress.ip_address(address))
        except ValueError:
            raise InputError(f"trace: node IP {address!r} is not an IP address") from None
    packet = Packet(src, dst, dport, protocol, sport)
    tracer = _Tracer(rules, packet, tuple(local))
    locally_generated = tracer.is_local(src)

    finished: list[_Flow] = []
    start = _Flow(1.0, dst, dport)
    nat_hook = "OUTPUT" if locally_generated else "PREROUTING"
    for o in tracer.run_hook("nat", nat_hook, start):
        flow = o.flow
        if o.kind in ("drop", "reject"):
            flow.verdict = o.kind
            finished.append(flow)
            continue
        _after_nat(tracer, flow, locally_generated, finished)

    return _result(tracer, packet, node, finished)


def _after_nat(tracer: _Tracer, flow: _Flow, locally_generated: bool, finished: list[_Flow]) -> None:
    """Routing decision, filter, and (for packets that leave through it) nat POSTROUTING."""
    dst_local = tracer.is_local(flow.dst)
    # without built-in jumps the filter entry (kube-proxy's test entry) runs once, whatever the route
    filter_hooked = tracer._table_hooked("filter")
    if locally_generated:
        first_hook = "OUTPUT"
    else:
        first_hook = "INPUT" if dst_local else "FORWARD"
    flows = _filter(tracer, first_hook, [flow], finished)
    # a packet delivered to this host from outside never meets POSTROUTING
    if locally_generated or not dst_local:
        survivors = []
        for f in flows:
            for o in tracer.run_hook("nat", "POSTROUTING", f):
                if o.kind in ("drop", "reject"):
                    o.flow.verdict = o.kind
                    finished.append(o.flow)
                else:
                    survivors.append(o.flow)
        flows = survivors
        if not _has_rules(tracer.rules, "KUBE-POSTROUTING"):
            for f in flows:
                if f.mark & MASQUERADE_MARK and not f.masquerade:
                    # the mark is there, the chain that acts on it is not in the input: never read as "no SNAT"
                    f.masquerade = True
                    tracer._missing("KUBE-POSTROUTING is not in this input: traffic marked 0x4000 is taken to be "
                                    "masqueraded there, as kube-proxy's rules do")
    if locally_generated and dst_local and filter_hooked:
        flows = _filter(tracer, "INPUT", flows, finished)  # looped back to this host
    finished.extend(flows)


def _has_rules(rules: NodeRules, chain: str) -> bool:
    found = rules.chain("nat", chain)
    return found is not None and found.rule_count > 0


def _unmatched_on_partial_input(rules: NodeRules) -> list[str]:
    """What a partial input lacks that a packet finding no rule may have needed: the jump to KUBE-NODEPORTS (the
    last rule of KUBE-SERVICES, which a grep for one service drops) and the jumps into KUBE-SERVICES."""
    notes = []
    services = rules.chain("nat", "KUBE-SERVICES")
    if rules.chain("nat", "KUBE-NODEPORTS") is not None and services is not None and not any(
            r.target == "KUBE-NODEPORTS" for r in services.rules):
        notes.append("the jump from KUBE-SERVICES to KUBE-NODEPORTS is not in this input")
    notes += [f"not in this input: {piece}" for piece in missing_pieces(rules)
              if "KUBE-MARK-MASQ" not in piece and "KUBE-POSTROUTING" not in piece]
    return notes


def _filter(tracer: _Tracer, hook: str, flows: list[_Flow], finished: list[_Flow]) -> list[_Flow]:
    survivors = []
    for flow in flows:
        for o in tracer.run_hook("filter", hook, flow):
            if o.kind in ("drop", "reject"):
                o.flow.verdict = o.kind
                finished.append(o.flow)
            else:
                if o.kind == "accept" and o.flow.verdict is None:
                    o.flow.verdict = "accept"
                survivors.append(o.flow)
    return survivors


def _result(tracer: _Tracer, packet: Packet, node: str | None, flows: list[_Flow]) -> TraceResult:
    paths: list[TracePath] = []
    merged: dict[tuple, TraceEndpoint] = {}
    for f in flows:
        if f.verdict in ("drop", "reject"):
            verdict = f.verdict
        elif f.dnat is not None:
            verdict = "dnat"
        else:
            verdict = f.verdict or "none"
        endpoint = None
        if f.dnat is not None:
            ip, port, chain = f.dnat
            ep = TraceEndpoint(ip, port, chain, f.share, f.masquerade, "dnat" if verdict == "dnat" else verdict)
            endpoint = ep.address
            key = (ip, port, chain, ep.masquerade, ep.verdict)
            if key in merged:
                merged[key].probability += f.share
            else:
                merged[key] = ep
        paths.append(TracePath(f.share, verdict, endpoint, f.masquerade, f.steps))
    if any(p.verdict == "dnat" for p in paths):
        verdict = "dnat"
    else:
        # several non-DNAT paths only arise from a random split without a DNAT; the biggest share speaks
        verdict = max(paths, key=lambda p: p.share).verdict if paths else "none"
    return TraceResult(
        node=node,
        packet=packet,
        verdict=verdict,
        endpoints=list(merged.values()),
        masquerade=any(p.masquerade for p in paths),
        steps=tracer.steps,
        uncertain=tracer.uncertain,
        paths=paths,
        entered_without_jumps=tracer.entered_without_jumps,
        partial=tracer.partial + (_unmatched_on_partial_input(tracer.rules) if verdict == "none" else []),
    )
