"""One sample of one service, and what it becomes once compared with the previous one.

What is counted is what kube-proxy's nat rules count: a nat rule sees only the first packet of a connection
(conntrack sends the rest past the nat table), so every counter here is a count of new connections.

A row is an endpoint of a split chain (KUBE-SVC/KUBE-SVL -> KUBE-SEP, keyed by the SEP chain, whose name is a hash
of the service port and the endpoint, so it survives rewrites), a blackhole rule (filter DROP or REJECT of the
service, keyed by its text), or, without a service, any counted kube-proxy rule (svcdoctor/model/watch/busiest.py).
Every key holds the address family: a dual-stack node has an IPv4 and an IPv6 chain of the same name. Where a
node's rules keep no counters, its endpoint rows are counted from conntrack instead (flows.py: keyed by the split
chain and the endpoint's address, with a running count of connections where a rule would have its counter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from svcdoctor.model.hashes import ENDPOINT_CHAIN_PREFIX
from svcdoctor.model.rules import Rule
from svcdoctor.model.service_rules import service_port_of_comment
from svcdoctor.model.watch.listing import IPV4, ChainListing, Listings
from svcdoctor.model.watch.plan import PortWatch, ServiceWatchPlan, comment_address
from svcdoctor.model.watch.stats import SIGNIFICANCE, GoodnessOfFit

BLACKHOLE_TARGETS = ("DROP", "REJECT")


# --- one sample, before it is compared with the previous one -----------------------------------------------------
@dataclass(slots=True)
class CountedRule:
    """One rule's counters in one sample. ``key`` names the rule across samples (its text may change)."""

    key: tuple
    text: str
    packets: int
    bytes: int
    role: str = "rule"  # split (drawn by --probability or the last jump) | affinity (a returning client) | rule


@dataclass(slots=True)
class RowReading:
    """What one row is made of in one sample."""

    key: tuple
    kind: str  # endpoint | blackhole | entry
    node: str
    table: str
    chain: str
    rule: str  # the rule's text; for an endpoint, its split jump (or its affinity jump when it has no other)
    service: str | None
    endpoint: str | None
    rules: list[CountedRule]
    expected: float | None = None  # share of the chain's new connections its rules give this endpoint
    rule_probability: float | None = None  # as written on the jump (None: the last, unconditional jump)
    pod: str | None = None
    endpoint_node: str | None = None
    verdict: str | None = None  # DROP | REJECT for blackholes
    comment: str | None = None  # the rule's comment: a blackhole's reason in kube-proxy's words
    split_signature: tuple = ()  # the chain's split as written: a change starts the split test again
    family: str = IPV4  # iptables or ip6tables
    source: str = "counters"  # counters (a rule's) | conntrack (connections listed, model/watch/flows.py)
    tracked: int | None = None  # conntrack rows: the connections conntrack holds for the row now

    @property
    def packets(self) -> int:
        return sum(r.packets for r in self.rules)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rules)


def observe_service(plan: ServiceWatchPlan, node: str, listings: Listings, family: str = IPV4) -> list[RowReading]:
    """One node's rows for the planned service in one address family: its endpoints per split chain and its
    blackholes."""
    rows: list[RowReading] = []
    for port in plan.ports:
        for chain_name in port.split_chains:
            listing = listings.get(("nat", chain_name))
            if listing is not None and listing.present:
                rows.extend(_split_rows(plan, port, node, listing, family))
    for table, chain in plan.chains_to_read():
        if table == "filter":
            rows.extend(_blackhole_rows(plan, node, listings.get((table, chain)), family))
    return rows


def _blackhole_rows(plan: ServiceWatchPlan, node: str, listing: ChainListing | None, family: str) -> list[RowReading]:
    rows = []
    for rule in listing.rules if listing is not None else ():
        if rule.target not in BLACKHOLE_TARGETS:
            continue
        spn, _ = service_port_of_comment(rule.comment)
        if spn is None or spn.split(":", 1)[0] != plan.service:
            continue
        key = (node, family, listing.table, listing.chain, rule.text)
        rows.append(RowReading(key, "blackhole", node, listing.table, listing.chain, rule.text, spn, None,
                               [CountedRule(key, rule.text, rule.packets or 0, rule.bytes or 0)],
                               verdict=rule.target, comment=rule.comment, family=family))
    return rows


def _split_rows(plan: ServiceWatchPlan, port: PortWatch, node: str, listing: ChainListing,
                family: str) -> list[RowReading]:
    """One row per endpoint the chain jumps to, with the share its rules give it: each `--probability` applies to
    what the rules before it left (pkg/proxy/iptables/proxier.go writes 1/n, 1/(n-1), …, then an unconditional
    jump)."""
    by_sep: dict[str, RowReading] = {}
    remaining = 1.0
    signature = []
    for rule in listing.rules:
        sep = rule.target or ""
        if not sep.startswith(ENDPOINT_CHAIN_PREFIX):
            continue  # KUBE-MARK-MASQ and friends: they count connections, they do not choose an endpoint
        affinity = _is_affinity_rule(rule)
        role = "affinity" if affinity else "split"
        counted = CountedRule((node, family, "nat", listing.chain, sep, role), rule.text, rule.packets or 0,
                              rule.bytes or 0, role)
        row = by_sep.get(sep)
        if row is None:
            label = plan.label(sep, comment_address(rule))
            row = by_sep[sep] = RowReading(
                (node, family, "nat", listing.chain, sep), "endpoint", node, "nat", listing.chain, rule.text,
                port.svc_port_name, label.address if label else sep, [], expected=0.0,
                pod=label.pod if label else None, endpoint_node=label.node if label else None, family=family)
        row.rules.append(counted)
        if affinity:
            continue
        row.rule = rule.text
        p = rule.probability if rule.value("--probability") is not None else None
        share = remaining * p if p is not None else remaining
        row.expected = (row.expected or 0.0) + share
        row.rule_probability = p
        remaining -= share
        signature.append((sep, rule.value("--probability")))
    for row in by_sep.values():
        row.split_signature = tuple(signature)
    return list(by_sep.values())


def _is_affinity_rule(rule: Rule) -> bool:
    return any(m.module == "recent" and m.option in ("--rcheck", "--update") for m in rule.matches)


# --- samples compared over time -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Row:
    """One row of one sample: the counters now, and what changed since the previous sample."""

    reading: RowReading
    packets: int
    bytes: int
    delta_packets: int
    delta_bytes: int
    reset: bool
    change: str | None  # appeared | gone | reset | None
    rate: float | None  # new connections per second over the last interval (None on the first sample)
    total_packets: int  # since the watch started (or since the row appeared)
    total_bytes: int
    observed_share: float | None = None  # share of the chain's connections since its split last changed
    affinity_delta: int = 0  # of delta_packets, connections of returning clients (session affinity)


@dataclass(slots=True)
class ChainChange:
    node: str
    table: str
    chain: str
    change: str  # appeared | disappeared
    family: str = IPV4


@dataclass(slots=True)
class ServiceSplitEvidence:
    """What the counters say about why a service's endpoints did not get even shares (the view puts it in words,
    svcdoctor/render/watch_view.py)."""

    svc_chain: str
    svl_chain: str
    local: list[tuple[str, int]]  # nodes whose KUBE-SVL counted connections, and how many, the most first
    endpoints_per_node: dict[str, int]  # node -> endpoints its KUBE-SVC balances over, when the nodes disagree
    affinity_seconds: int | None  # sessionAffinity ClientIP's timeout, when the port has affinity
    pods: dict[str, str]  # endpoint -> pod


@dataclass(slots=True)
class SplitCheck:
    """The observed split of new connections against the expected one, since ``since``."""

    scope: str  # chain: one node's split chain against its rule probabilities | service: all nodes, even shares
    service: str
    node: str | None
    chain: str | None
    endpoints: list[str]
    observed: list[int]
    shares: list[float]
    since: datetime
    needed: int  # connections needed before the test means something
    fit: GoodnessOfFit | None = None
    affinity_connections: int = 0
    family: str = IPV4
    evidence: ServiceSplitEvidence | None = None  # scope service, when it departs
    source: str = "counters"  # what the chain's rows were counted from (counters | conntrack)
    untested: str | None = None  # why the test is not run at all (rather than "not enough connections yet")

    @property
    def connections(self) -> int:
        return sum(self.observed)

    @property
    def departs(self) -> bool:
        return self.fit is not None and self.fit.p_value < SIGNIFICANCE and self.untested is None


@dataclass(slots=True)
class Frame:
    number: int  # 1-based
    time: datetime  # UTC, when the sample was taken
    interval: float
    service: str | None
    rows: list[Row]
    chain_changes: list[ChainChange] = field(default_factory=list)
    splits: list[SplitCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # node -> why this sample could not read it
    elapsed: dict[str, float] = field(default_factory=dict)  # node -> seconds since its previous read
    top: int | None = None  # without a service: how many of the busiest rules the frame is about
    sources: dict[str, str] = field(default_factory=dict)  # node -> counters | conntrack: what its rows count
    nftables_nodes: list[str] = field(default_factory=list)  # nodes in nftables mode (counted from conntrack)

    @property
    def source(self) -> str:
        """counters or conntrack when every node read is counted the same way, else mixed."""
        kinds = set(self.sources.values())
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "counters")

    @property
    def baseline(self) -> bool:
        return self.number == 1
