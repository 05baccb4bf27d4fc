"""One packet through a node's kube-proxy nftables table, hook by hook, the way netfilter runs it.

Hook order for the first packet of a new connection; on each hook the table's base chains run lowest priority
first (kube-proxy's filter chains at -110 run before its nat chains at -100, which is what lets it filter before
DNAT; docs/explanation/kube-proxy-nftables.md):

- arriving from elsewhere:  prerouting → routing → input (a local destination) or forward → postrouting
- sent by the node itself:  output → postrouting [→ input when the destination is local]

A DNAT changes the destination for every later chain. Every branch of a `numgen random mod N` map is followed with
its exact share (k/N), so the result lists every endpoint a new connection can reach, as kube-proxy's test tracer
does (pkg/proxy/nftables/helpers_test.go). A packet is masqueraded when postrouting reaches a `masquerade`
statement: the 0x4000 mark set on the way (up to 1.35 in `mark-for-masquerade`, from 1.36 inline) or, from 1.36,
the `hairpin-connections` set.

Session-affinity sets are filled by the kernel at run time and are empty in a listing, so the trace is that of a
new client. A match on something the listing cannot tell (an interface name, …) is never taken as "matches": the
rule is treated as not matching and listed in ``TraceResult.uncertain``.

Pure: the table comes in as an NftRuleset; the result is model/trace.py's TraceResult, so the trace view and the
JSON document show it unchanged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from svcdoctor.model.nft.ruleset import (
    Dnat,
    Masquerade,
    Match,
    MarkSet,
    NftRuleset,
    Other,
    Rule,
    SetUpdate,
    Verdict,
    VMap,
)
from svcdoctor.model.nft.values import value_matches
from svcdoctor.model.trace import Packet, Step, TraceEndpoint, TracePath, TraceResult, UncertainRule

_MAX_DEPTH = 64
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(slots=True)
class _Flow:
    src: str
    dst: str
    dport: int
    protocol: str
    share: float = 1.0
    mark: int = 0
    dnat: tuple[str, int | None, str] | None = None  # (ip, port, chain of the DNAT)
    masquerade: bool = False
    verdict: str | None = None  # drop | reject
    steps: list[int] = field(default_factory=list)

    def fork(self, share: float) -> _Flow:
        return replace(self, share=self.share * share, steps=list(self.steps))


class _Tracer:
    def __init__(self, rs: NftRuleset, node_ips: list[str]):
        self.rs = rs
        self.local = {_norm(ip) for ip in node_ips}
        self.steps: list[Step] = []
        self.uncertain: list[UncertainRule] = []
        self._uncertain_seen: set[tuple[str, str]] = set()

    # --- packet fields ----------------------------------------------------------------------------------------
    def is_local(self, address: str) -> bool:
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            return False
        return _norm(address) in self.local or any(addr in net for net in _LOOPBACK if addr.version == net.version)

    def field(self, flow: _Flow, selector: str):
        """The packet's value for one selector; None when the listing cannot tell it."""
        proto, _, what = selector.partition(" ")
        if selector in ("ip saddr", "ip6 saddr"):
            return flow.src
        if selector in ("ip daddr", "ip6 daddr"):
            return flow.dst
        if selector == "meta l4proto":
            return flow.protocol
        if what == "dport" and proto in ("th", "tcp", "udp", "sctp"):
            return flow.dport if proto in ("th", flow.protocol) else _NoMatch
        if selector == "fib saddr type":
            return "local" if self.is_local(flow.src) else "unicast"
        if selector == "fib daddr type":
            return "local" if self.is_local(flow.dst) else "unicast"
        if selector == "ct state":
            return "new"
        if selector == "ct status":
            return ["dnat"] if flow.dnat else []
        if selector == "meta mark":
            return flow.mark
        return None

    def key(self, flow: _Flow, selectors: tuple[str, ...]):
        values = [self.field(flow, s) for s in selectors]
        if any(v is None for v in values):
            return None
        if any(v is _NoMatch for v in values):
            return _NoMatch
        return values[0] if len(values) == 1 else tuple(values)

    # --- matching ---------------------------------------------------------------------------------------------
    def matches(self, m: Match, flow: _Flow, rule: Rule) -> bool:
        actual = self.key(flow, m.key)
        if actual is None:
            self._uncertain(rule, f"cannot tell {' . '.join(m.key)} from the listing")
            return False
        if actual is _NoMatch:
            return m.op == "!="
        if m.mask is not None and isinstance(actual, int):
            actual &= m.mask
        if isinstance(actual, list):  # flags (ct status): the value names one of them
            wanted = m.value if isinstance(m.value, list) else [m.value]
            hit = any(w in actual for w in wanted)
        elif isinstance(m.value, str) and m.value.startswith("@"):
            nset = self.rs.set(m.value)
            if nset is None:
                self._uncertain(rule, f"set {m.value} is not in the listing")
                return False
            hit = nset.lookup(actual) is not None
        else:
            hit = value_matches(actual, m.value)
        return hit if m.op == "==" else not hit

    def _uncertain(self, rule: Rule, reason: str) -> None:
        key = (rule.chain, rule.text)
        if key not in self._uncertain_seen:
            self._uncertain_seen.add(key)
            self.uncertain.append(UncertainRule(rule.table, rule.chain, rule.text, reason))

    def step(self, flow: _Flow, rule: Rule | None, chain: str, action: str) -> None:
        self.steps.append(Step(self.rs.table, chain, rule.text if rule is not None else "", action, flow.share))
        flow.steps.append(len(self.steps) - 1)

    # --- chains -----------------------------------------------------------------------------------------------
    def run_chain(self, name: str, flow: _Flow, depth: int) -> list[tuple[_Flow, str]]:
        """The flows leaving a chain, each with how it left: return (fell off the end or `return`), accept, drop,
        reject."""
        chain = self.rs.chain(name)
        if chain is None or depth > _MAX_DEPTH:
            self.uncertain.append(UncertainRule(self.rs.table, name, "", "chain is not in the listing"
                                                if chain is None else "jumps nest too deep"))
            return [(flow, "return")]
        return self.run_rules(chain.rules, 0, flow, depth)

    def run_rules(self, rules: list[Rule], start: int, flow: _Flow, depth: int) -> list[tuple[_Flow, str]]:
        for idx in range(start, len(rules)):
            results = self.run_rule(rules[idx], flow, depth)
            if results is None:
                continue
            out = []
            for f, action in results:
                if action == "next":
                    out.extend(self.run_rules(rules, idx + 1, f, depth))
                else:
                    out.append((f, action))
            return out
        return [(flow, "return")]

    def run_rule(self, rule: Rule, flow: _Flow, depth: int) -> list[tuple[_Flow, str]] | None:
        """None when the rule does not match; else the flows after it with "next" (go on with the next rule) or
        how they leave the chain."""
        for n, s in enumerate(rule.statements):
            if isinstance(s, Match):
                if not self.matches(s, flow, rule):
                    return None
            elif isinstance(s, MarkSet):
                flow.mark = s.value if s.op == "=" else (flow.mark | s.value if s.op == "|" else (
                    flow.mark ^ s.value if s.op == "^" else flow.mark & s.value))
                self.step(flow, rule, rule.chain, f"mark {flow.mark:#x}")
            elif isinstance(s, SetUpdate):
                continue  # session affinity remembers the client: nothing changes for this packet
            elif isinstance(s, Masquerade):
                flow.masquerade = True
                self.step(flow, rule, rule.chain, "masquerade")
                return [(flow, "accept")]
            elif isinstance(s, Dnat):
                return self.dnat(s, rule, flow)
            elif isinstance(s, Verdict):
                return self.verdict(s, rule, flow, depth)
            elif isinstance(s, VMap):
                return self.vmap(s, rule, flow, depth, rule.statements[n + 1:])
            elif isinstance(s, Other) and s.terminal:
                self._uncertain(rule, "a statement svcdoctor does not model")
                return None
        return [(flow, "next")]

    def verdict(self, v: Verdict, rule: Rule, flow: _Flow, depth: int) -> list[tuple[_Flow, str]]:
        if v.kind in ("jump", "goto"):
            self.step(flow, rule, rule.chain, f"{v.kind} {v.target}")
            out = []
            for f, action in self.run_chain(v.target or "", flow, depth + 1):
                out.append((f, ("next" if v.kind == "jump" else "return") if action == "return" else action))
            return out
        if v.kind in ("drop", "reject"):
            flow.verdict = v.kind
            self.step(flow, rule, rule.chain, v.kind.upper())
            return [(flow, v.kind)]
        if v.kind == "continue":
            return [(flow, "next")]
        self.step(flow, rule, rule.chain, v.kind)
        return [(flow, v.kind)]  # return | accept

    def vmap(self, s: VMap, rule: Rule, flow: _Flow, depth: int, rest: list) -> list[tuple[_Flow, str]] | None:
        if s.key and s.key[0].startswith("numgen "):
            return self.split(s.key[0], [(k, v) for k, v in s.elements or ()], rule, flow,
                              lambda f, v: self.verdict(v, rule, f, depth))
        actual = self.key(flow, s.key)
        if actual is None:
            self._uncertain(rule, f"cannot tell {' . '.join(s.key)} from the listing")
            return None
        if actual is _NoMatch:
            return None
        if s.map is not None:
            nset = self.rs.set(s.map)
            element = nset.lookup(actual) if nset is not None else None
            if nset is None:
                self._uncertain(rule, f"map @{s.map} is not in the listing")
            if element is None or not isinstance(element.value, Verdict):
                return None
            return self.verdict(element.value, rule, flow, depth)
        for k, v in s.elements or ():
            if value_matches(actual, k):
                return self.verdict(v, rule, flow, depth)
        return None

    def split(self, key: str, pairs: list, rule: Rule, flow: _Flow, go) -> list[tuple[_Flow, str]]:
        """`numgen random mod N …`: every element is 1/N of the traffic (an index listed twice gets 2/N)."""
        mod = _modulus(key) or len(pairs) or 1
        out = []
        for _, value in pairs:
            out.extend(go(flow.fork(1.0 / mod), value))
        return out

    def dnat(self, s: Dnat, rule: Rule, flow: _Flow) -> list[tuple[_Flow, str]]:
        if s.elements is not None:
            return self.split(" ".join(s.key or ()), list(s.elements), rule, flow,
                              lambda f, dest: self._apply_dnat(f, rule, dest[0], dest[1]))
        return self._apply_dnat(flow, rule, s.address or "", s.port)

    def _apply_dnat(self, flow: _Flow, rule: Rule, ip: str, port: int | None) -> list[tuple[_Flow, str]]:
        flow.dnat = (ip, port if port is not None else flow.dport, rule.chain)
        self.step(flow, rule, rule.chain, f"DNAT to {_address(ip, flow.dnat[1])}")
        return [(flow, "accept")]

    # --- hooks ------------------------------------------------------------------------------------------------
    def run_hook(self, hook: str, flows: list[_Flow]) -> list[_Flow]:
        for chain in self.rs.base_chains(hook):
            nxt = []
            for flow in flows:
                if flow.verdict:
                    nxt.append(flow)
                    continue
                self.step(flow, None, chain.name, f"enter ({chain.type} hook {hook} priority {chain.priority})")
                for f, action in self.run_chain(chain.name, flow, 0):
                    if action == "return" and chain.policy == "drop":
                        f.verdict = "drop"
                    if chain.type == "nat" and f.dnat and f.dst != f.dnat[0]:
                        f.dst, f.dport = f.dnat[0], f.dnat[1] or f.dport
                    nxt.append(f)
            flows = nxt
        return flows


class _NoMatchType:
    """A selector the packet does not have (`tcp dport` on a UDP packet): every `==` on it fails."""


_NoMatch = _NoMatchType()


def _modulus(key: str) -> int | None:
    words = key.split()
    if "mod" in words and words.index("mod") + 1 < len(words) and words[words.index("mod") + 1].isdigit():
        return int(words[words.index("mod") + 1])
    return None


def _norm(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _address(ip: str, port: int | None) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def trace_nft_packet(rs: NftRuleset, src: str, dst: str, dport: int, protocol: str, node_ips: list[str],
                     node: str | None = None) -> TraceResult:
    """The packet's way through one table; `node_ips` are the node's own addresses (for `fib … type local` and the
    routing decision)."""
    tracer = _Tracer(rs, node_ips)
    flow = _Flow(_norm(src), _norm(dst), dport, protocol.lower())
    if tracer.is_local(flow.src):
        flows = tracer.run_hook("output", [flow])
        flows = tracer.run_hook("postrouting", flows)
        local = [f for f in flows if not f.verdict and tracer.is_local(f.dst)]
        flows = [f for f in flows if f not in local] + tracer.run_hook("input", local)
    else:
        flows = tracer.run_hook("prerouting", [flow])
        local = [f for f in flows if not f.verdict and tracer.is_local(f.dst)]
        forward = [f for f in flows if not f.verdict and f not in local]
        flows = ([f for f in flows if f.verdict] + tracer.run_hook("input", local)
                 + tracer.run_hook("postrouting", tracer.run_hook("forward", forward)))
    return _result(tracer, Packet(src, dst, dport, protocol.lower()), flows, node)


def _result(tracer: _Tracer, packet: Packet, flows: list[_Flow], node: str | None) -> TraceResult:
    endpoints: dict[tuple[str, int, str, str], TraceEndpoint] = {}
    paths = []
    for f in flows:
        verdict = f.verdict or ("dnat" if f.dnat else "none")
        if f.dnat:
            key = (f.dnat[0], f.dnat[1] or 0, f.dnat[2], f.verdict or "dnat")
            ep = endpoints.get(key)
            if ep is None:
                endpoints[key] = TraceEndpoint(f.dnat[0], f.dnat[1] or 0, f.dnat[2], f.share, f.masquerade,
                                               f.verdict or "dnat")
            else:
                ep.probability += f.share
                ep.masquerade = ep.masquerade or f.masquerade
        paths.append(TracePath(f.share, verdict, _address(f.dnat[0], f.dnat[1]) if f.dnat else None, f.masquerade,
                               f.steps))
    verdicts = [p.verdict for p in paths]
    if "dnat" in verdicts:
        verdict = "dnat"
    else:
        verdict = next((v for v in ("reject", "drop") if v in verdicts), "none")
    return TraceResult(node=node, packet=packet, verdict=verdict, endpoints=list(endpoints.values()),
                       masquerade=any(f.masquerade for f in flows), steps=tracer.steps, uncertain=tracer.uncertain,
                       paths=paths)
