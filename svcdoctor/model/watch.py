"""`watch`: counters sampled over time, turned into deltas, rates, resets, and a test of the observed split.

Pure: the samples come in as text (what the nodes printed) and leave as `Frame`s; collection and rendering live
elsewhere. What is counted is what kube-proxy's nat rules count: a nat rule sees only the first packet of a
connection (conntrack sends the rest past the nat table), so every counter here is a count of new connections.

Identity over time. A row is an endpoint of a split chain (KUBE-SVC/KUBE-SVL -> KUBE-SEP, keyed by the SEP chain,
whose name is a hash of the service port and the endpoint, so it survives rewrites), a blackhole rule (filter DROP
or REJECT of the service, keyed by its text), or, without a service, any counted kube-proxy rule. A counter that
goes down, or a rule whose text changed under the same key, was rewritten (kube-proxy restores a chain with fresh
counters): that is a reset, and the delta is the new value (what was counted since the rewrite), never negative.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from svcdoctor.model.hashes import ENDPOINT_CHAIN_PREFIX, chain_kind, service_hash
from svcdoctor.model.rules import NodeRules, Rule, rule_from_line
from svcdoctor.model.service_rules import FILTER_ENTRY_CHAINS, service_port_of_comment

# Chi-square's approximation holds when every cell expects at least this many (Cochran's rule).
MIN_EXPECTED_PER_ENDPOINT = 5
# The test is repeated on a growing total at every sample; a strict level keeps false alarms rare over a long watch.
SIGNIFICANCE = 0.001
BLACKHOLE_TARGETS = ("DROP", "REJECT")
SPLIT_CHAIN_KINDS = ("svc", "svl", "xlb")
NAT_CHAIN_PREFIXES = {"svc": "KUBE-SVC-", "svl": "KUBE-SVL-", "ext": "KUBE-EXT-", "fw": "KUBE-FW-"}
COUNTS_CONNECTIONS = "nat counters count new connections (the first packet of each), not packets or requests"

_CHAIN_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,28}$")


def valid_chain_name(name: str) -> bool:
    """A name that can only be a chain (iptables allows 28 characters; no leading '-', so never an option)."""
    return bool(_CHAIN_NAME.match(name))


# --- what a node printed ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class ChainListing:
    """One chain as `iptables -t TABLE -S CHAIN -v` printed it; ``present`` False when the chain does not exist."""

    table: str
    chain: str
    present: bool
    rules: list[Rule] = field(default_factory=list)
    error: str | None = None  # the listing failed for another reason than "no such chain"


def parse_chain_listings(text: str) -> dict[tuple[str, str], ChainListing]:
    """Parse the sampler's output: for each chain a `#chain TABLE CHAIN` line, what `iptables -S CHAIN -v` printed,
    and `#status N` (its exit status: 0 listed, 1 no such chain; anything else is an error for that chain)."""
    out: dict[tuple[str, str], ChainListing] = {}
    current: ChainListing | None = None
    for line in text.splitlines():
        if line.startswith("#chain "):
            parts = line.split()
            if len(parts) != 3:
                continue
            current = ChainListing(parts[1], parts[2], present=False)
            out[(current.table, current.chain)] = current
        elif current is None:
            continue
        elif line.startswith("#status "):
            status = line[8:].strip()
            if status == "0":
                current.present = True
            elif status != "1":
                current.error = f"iptables -S {current.chain} exited {status}"
            current = None
        elif line.startswith("-A "):
            name = line[3:].split(" ", 1)[0]
            if name == current.chain:
                current.rules.append(rule_from_line(current.table, name, len(current.rules) + 1, line))
    return out


def listings_from_rules(rules: NodeRules, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], ChainListing]:
    """The same listings, taken from a full dump (tests, and reading a chain the plan found in the first dump)."""
    out = {}
    for table, name in wanted:
        chain = rules.chain(table, name)
        out[(table, name)] = ChainListing(table, name, chain is not None, list(chain.rules) if chain else [])
    return out


# --- which chains one service needs, and what their names mean ---------------------------------------------------
@dataclass(slots=True)
class EndpointLabel:
    address: str  # "ip:port" as the DNAT rule writes it
    pod: str | None = None  # "namespace/name"
    node: str | None = None  # where the pod runs


@dataclass(slots=True)
class PortWatch:
    svc_port_name: str  # "ns/name:port"
    protocol: str
    chains: dict[str, str]  # svc/svl/ext/fw -> kube-proxy's name for this port (read whether it exists or not)
    entries: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # node -> split chain -> entries into it
    affinity_seconds: int | None = None

    @property
    def split_chains(self) -> tuple[str, ...]:
        return (self.chains["svc"], self.chains["svl"])


@dataclass(slots=True)
class ServiceWatchPlan:
    """What to read on each node for one service, and the names to put on what comes back."""

    namespace: str
    name: str
    ports: list[PortWatch]
    nodes: list[str]
    endpoints: dict[str, EndpointLabel] = field(default_factory=dict)  # KUBE-SEP-… -> endpoint (same on all nodes)
    pods_by_ip: dict[str, str] = field(default_factory=dict)
    pod_nodes: dict[str, str] = field(default_factory=dict)

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"

    def chains_to_read(self) -> list[tuple[str, str]]:
        """The service's own nat chains on every node (whether they exist there or not: a chain that appears later
        is seen), and the filter chains where kube-proxy puts its DROP/REJECT rules."""
        wanted = [("nat", c) for p in self.ports for c in p.chains.values()]
        wanted += [("filter", c) for c in FILTER_ENTRY_CHAINS]
        return list(dict.fromkeys(wanted))

    def port_of_chain(self, chain: str) -> PortWatch | None:
        for p in self.ports:
            if chain in p.chains.values():
                return p
        return None

    def label(self, sep: str, comment_address: str | None = None) -> EndpointLabel | None:
        known = self.endpoints.get(sep)
        if known is None and comment_address:
            known = self.endpoints[sep] = self._labelled(comment_address)
        return known

    def learn(self, listings: dict[tuple[str, str], ChainListing]) -> None:
        """Name the KUBE-SEP chains of a listing by their DNAT rule (large clusters write no comments)."""
        for (table, chain), listing in listings.items():
            if table != "nat" or not chain.startswith(ENDPOINT_CHAIN_PREFIX) or chain in self.endpoints:
                continue
            for rule in listing.rules:
                if rule.target == "DNAT" and rule.dnat_destination:
                    self.endpoints[chain] = self._labelled(rule.dnat_destination)
                    break

    def unknown_endpoints(self, listings: dict[tuple[str, str], ChainListing]) -> list[str]:
        """KUBE-SEP chains the split chains jump to whose endpoint is not known yet (they appeared since the plan)."""
        out = []
        for (table, chain), listing in listings.items():
            if table != "nat" or chain_kind(chain) not in SPLIT_CHAIN_KINDS:
                continue
            for rule in listing.rules:
                target = rule.target or ""
                if target.startswith(ENDPOINT_CHAIN_PREFIX) and target not in self.endpoints:
                    if not _comment_address(rule):
                        out.append(target)
        return list(dict.fromkeys(out))

    def _labelled(self, address: str) -> EndpointLabel:
        ip = address.rsplit(":", 1)[0].strip("[]")
        return EndpointLabel(address, self.pods_by_ip.get(ip), self.pod_nodes.get(ip))


def plan_service_watch(view, node_rules: dict[str, NodeRules], cluster=None) -> ServiceWatchPlan:
    """The plan from the first full read: `view` is explain's ServiceView of the service on the nodes that could be
    read; their rules name the endpoints behind every KUBE-SEP chain the service's split chains jump to."""
    plan = ServiceWatchPlan(view.namespace, view.name, [], list(node_rules))
    if cluster is not None:
        plan.pods_by_ip, plan.pod_nodes = dict(cluster.pods_by_ip), dict(cluster.pod_nodes)
    for pv in view.ports:
        suffix = service_hash(pv.svc_port_name, pv.protocol)
        port = PortWatch(pv.svc_port_name, pv.protocol.lower(),
                         {kind: prefix + suffix for kind, prefix in NAT_CHAIN_PREFIXES.items()})
        if pv.api is not None and pv.api.session_affinity == "ClientIP":
            port.affinity_seconds = pv.api.session_affinity_timeout
        for nv in pv.nodes:
            by_chain = port.entries.setdefault(nv.node, {})
            for entry in nv.entries:
                if entry.session_affinity_seconds and port.affinity_seconds is None:
                    port.affinity_seconds = entry.session_affinity_seconds
                for chain in entry.path:
                    if chain in port.split_chains:
                        label = f"{entry.kind} {entry.destination}"
                        if label not in by_chain.setdefault(chain, []):
                            by_chain[chain].append(label)
        plan.ports.append(port)
    for rules in node_rules.values():
        nat = rules.table("nat")
        for port in plan.ports if nat is not None else ():
            for chain_name in port.split_chains:
                chain = nat.chain(chain_name)
                for rule in chain.rules if chain else ():
                    sep = rule.target or ""
                    if not sep.startswith(ENDPOINT_CHAIN_PREFIX) or sep in plan.endpoints:
                        continue
                    plan.learn(listings_from_rules(rules, [("nat", sep)]))  # its DNAT rule, when the node has it
                    plan.label(sep, _comment_address(rule))  # else the jump's comment, when there is one
    return plan


def _comment_address(rule: Rule) -> str | None:
    spn, what = service_port_of_comment(rule.comment)
    if what == "endpoint" and rule.comment:
        return rule.comment.split(" -> ", 1)[1].strip()
    return None


def _is_affinity_rule(rule: Rule) -> bool:
    return any(m.module == "recent" and m.option in ("--rcheck", "--update") for m in rule.matches)


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

    @property
    def packets(self) -> int:
        return sum(r.packets for r in self.rules)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rules)


def observe_service(plan: ServiceWatchPlan, node: str, listings: dict[tuple[str, str], ChainListing]) -> list[RowReading]:
    """One node's rows for the planned service: its endpoints per split chain and its blackholes."""
    rows: list[RowReading] = []
    for port in plan.ports:
        for chain_name in port.split_chains:
            listing = listings.get(("nat", chain_name))
            if listing is not None and listing.present:
                rows.extend(_split_rows(plan, port, node, listing))
    for table, chain in plan.chains_to_read():
        if table != "filter":
            continue
        listing = listings.get((table, chain))
        for rule in listing.rules if listing is not None else ():
            if rule.target not in BLACKHOLE_TARGETS:
                continue
            spn, _ = service_port_of_comment(rule.comment)
            if spn is None or spn.split(":", 1)[0] != plan.service:
                continue
            key = (node, table, chain, rule.text)
            rows.append(RowReading(key, "blackhole", node, table, chain, rule.text, spn, None,
                                   [CountedRule(key, rule.text, rule.packets or 0, rule.bytes or 0)],
                                   verdict=rule.target, comment=rule.comment))
    return rows


def _split_rows(plan: ServiceWatchPlan, port: PortWatch, node: str, listing: ChainListing) -> list[RowReading]:
    by_sep: dict[str, RowReading] = {}
    remaining = 1.0
    signature = []
    for rule in listing.rules:
        sep = rule.target or ""
        if not sep.startswith(ENDPOINT_CHAIN_PREFIX):
            continue  # KUBE-MARK-MASQ and friends: they count connections, they do not choose an endpoint
        affinity = _is_affinity_rule(rule)
        role = "affinity" if affinity else "split"
        counted = CountedRule((node, "nat", listing.chain, sep, role), rule.text, rule.packets or 0, rule.bytes or 0,
                              role)
        row = by_sep.get(sep)
        if row is None:
            label = plan.label(sep, _comment_address(rule))
            row = by_sep[sep] = RowReading(
                (node, "nat", listing.chain, sep), "endpoint", node, "nat", listing.chain, rule.text,
                port.svc_port_name, label.address if label else sep, [], expected=0.0,
                pod=label.pod if label else None, endpoint_node=label.node if label else None)
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


# --- without a service: every counted kube-proxy rule of a full dump -----------------------------------------------
_COUNTED_LINE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")
_DNAT_TO = re.compile(r"--to-destination (\S+)")
_ENTRY_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS")
_SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")
_SPLIT_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


@dataclass(slots=True)
class DumpScan:
    """The rules of one `iptables-save -c` dump that say something about a service's traffic, as plain tuples:
    (kind, table, chain, packets, bytes, rule text, target), kind being entry, endpoint or blackhole."""

    rules: list[tuple[str, str, str, int, int, str, str]]
    endpoints: dict[str, str]  # KUBE-SEP-… -> "ip:port" of its DNAT
    entries: dict[str, str]  # hash suffix -> text of the entry rule that leads into that service's chain


def scan_dump(text: str) -> DumpScan:
    """Entries into a service's chains, jumps to endpoints, DROP/REJECT rules in kube-proxy's and kubelet's chains.

    A big node prints 150,000 lines at every sample, so lines are sorted with string tests and nothing is parsed
    further here; names are looked up only for the rows that get shown (BusiestTracker)."""
    table = None
    rules: list[tuple[str, str, str, int, int, str, str]] = []
    endpoints: dict[str, str] = {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        first = line[:1]
        if first == "*":
            table = line[1:].strip()
            continue
        if first != "[" or "] -A KUBE-" not in line:
            continue
        m = _COUNTED_LINE.match(line)
        if m is None:
            continue
        chain, spec = m.group(3), m.group(4)
        target = _target(spec)
        kind = None
        if table == "nat":
            if chain in _ENTRY_CHAINS:
                if target.startswith(_SERVICE_CHAIN_PREFIXES):
                    kind = "entry"
            elif chain.startswith(_SPLIT_CHAIN_PREFIXES):
                if target.startswith(ENDPOINT_CHAIN_PREFIX):
                    kind = "endpoint"
            elif target == "DNAT" and chain.startswith(ENDPOINT_CHAIN_PREFIX):
                if dnat := _DNAT_TO.search(spec):
                    endpoints[chain] = dnat.group(1)
                continue
        if kind is None and target in BLACKHOLE_TARGETS:
            kind = "blackhole"
        if kind is not None:
            text_ = f"-A {chain} {spec}"
            if kind == "entry":
                entries.setdefault(target[-16:], text_)
            rules.append((kind, table or "", chain, int(m.group(1)), int(m.group(2)), text_, target))
    return DumpScan(rules, endpoints, entries)


class BusiestTracker:
    """Without a service: every counted rule of every node, compared with the previous dump as plain numbers.
    Rows are made only for what moved (on the first sample, for the `top` rules with the most counted), so a
    sample of 40,000 rules that mostly sit still costs a dictionary lookup each."""

    def __init__(self, interval: float, top: int, pods_by_ip: dict[str, str] | None = None):
        self.interval = interval
        self.top = top
        self.pods_by_ip = pods_by_ip or {}
        self.samples = 0
        self._last: dict[str, dict[tuple, tuple[int, int]]] = {}  # node -> rule key -> (packets, bytes)
        self._totals: dict[tuple, list[int]] = {}
        self._read_at: dict[str, float] = {}

    def update(self, scans: dict[str, DumpScan], read_at: dict[str, float], when: datetime,
               failed: dict[str, str] | None = None) -> Frame:
        self.samples += 1
        baseline = self.samples == 1
        frame = Frame(self.samples, when, self.interval, None, [], failed=dict(failed or {}), top=self.top)
        candidates: list[tuple[int, int, str, tuple, tuple]] = []  # (sort key…, node, rule, key) on the baseline
        for node, scan in scans.items():
            elapsed = read_at[node] - self._read_at[node] if node in self._read_at else None
            if elapsed is not None:
                frame.elapsed[node] = max(elapsed, 1e-6)
            self._read_at[node] = read_at[node]
            last = self._last.get(node, {})
            current: dict[tuple, tuple[int, int]] = {}
            seen: dict[tuple, int] = {}
            for rule in scan.rules:
                kind, table, chain, packets, nbytes, text, target = rule
                base = (node, table, chain, text)
                seen[base] = n = seen.get(base, 0) + 1  # the same text twice in a chain: two rules, by their order
                key = base + (n,)
                current[key] = (packets, nbytes)
                if baseline:
                    if packets:
                        candidates.append((packets, nbytes, node, rule, key))
                    continue
                before = last.get(key)
                if before is None:
                    change, dp, db = "appeared", packets, nbytes
                elif packets < before[0] or nbytes < before[1]:
                    change, dp, db = "reset", packets, nbytes
                elif packets != before[0]:
                    change, dp, db = None, packets - before[0], nbytes - before[1]
                else:
                    continue
                totals = self._totals.setdefault(key, [0, 0])
                totals[0] += dp
                totals[1] += db
                reading = self._reading(node, scan, rule, key)
                frame.rows.append(Row(reading, packets, nbytes, dp, db, change == "reset", change,
                                      dp / frame.elapsed[node] if node in frame.elapsed else None,
                                      totals[0], totals[1]))
            for key in set(self._totals).difference(current):
                if key[0] == node:
                    del self._totals[key]
            self._last[node] = current
        if baseline:
            candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
            for packets, nbytes, node, rule, key in candidates[: self.top]:
                frame.rows.append(Row(self._reading(node, scans[node], rule, key), packets, nbytes, 0, 0, False,
                                      None, None, 0, 0))
        return frame

    def _reading(self, node: str, scan: DumpScan, rule: tuple, key: tuple) -> RowReading:
        kind, table, chain, packets, nbytes, text, target = rule
        comment = _comment(text) if kind != "endpoint" else None
        spn = service_port_of_comment(comment)[0] if comment else None
        if spn is None:
            # no comment (endpoint jumps, or a large cluster's rules): the hash in the chain's name, or in the name
            # of the chain it jumps to, leads to the entry rule, whose comment names the service
            for hashed in (chain, target):
                if spn is None and hashed.startswith(_SERVICE_CHAIN_PREFIXES) and hashed[-16:] in scan.entries:
                    spn = service_port_of_comment(_comment(scan.entries[hashed[-16:]]))[0]
        endpoint = scan.endpoints.get(target) if kind == "endpoint" else None
        pod = self.pods_by_ip.get(endpoint.rsplit(":", 1)[0].strip("[]")) if endpoint else None
        return RowReading(key, kind, node, table, chain, text, spn, endpoint,
                          [CountedRule(key, text, packets, nbytes)], pod=pod,
                          verdict=target if kind == "blackhole" else None, comment=comment)




def _target(spec: str) -> str:
    """The rule's -j/-g target, found from the end (a rule has one; only a comment could hide one, and kube-proxy's
    comments never hold " -j ")."""
    idx = max(spec.rfind(" -j "), spec.rfind(" -g "))
    if idx < 0:
        return spec[3:].split(" ", 1)[0] if spec.startswith(("-j ", "-g ")) else ""
    return spec[idx + 4:].split(" ", 1)[0]


def _comment(line: str) -> str | None:
    m = _COMMENT.search(line)
    return (m.group(1) if m.group(1) is not None else m.group(2)) if m else None


# --- the statistics ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class GoodnessOfFit:
    """Pearson's chi-square goodness of fit of observed counts against expected shares."""

    statistic: float
    degrees_of_freedom: int
    p_value: float
    observed: list[int]
    expected: list[float]  # counts: total x share


def chi_square_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square variable with ``dof`` degrees of freedom: Q(dof/2, x/2)."""
    if dof <= 0:
        raise ValueError("degrees of freedom must be positive")
    if x <= 0:
        return 1.0
    return regularized_gamma_q(dof / 2.0, x / 2.0)


def regularized_gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).

    The series of P for x < a + 1, else the continued fraction of Q (modified Lentz), as in Numerical Recipes §6.2;
    both converge to full double precision well within the iteration limit for the sizes a watch sees.
    """
    if x < 0 or a <= 0:
        raise ValueError("Q(a, x) needs a > 0 and x >= 0")
    if x == 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(10000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square_test(observed: list[int], shares: list[float]) -> GoodnessOfFit:
    """Test counts against shares (which are normalised here); cells the shares give nothing are left out."""
    total_share = sum(shares)
    n = sum(observed)
    cells = [(o, s / total_share) for o, s in zip(observed, shares) if s > 0] if total_share > 0 else []
    expected = [n * s for _, s in cells]
    statistic = sum((o - e) ** 2 / e for (o, _), e in zip(cells, expected) if e > 0)
    dof = len(cells) - 1
    p = chi_square_sf(statistic, dof) if dof > 0 else 1.0
    return GoodnessOfFit(statistic, dof, p, [o for o, _ in cells], expected)


def connections_needed(shares: list[float]) -> int:
    """How many connections make every endpoint expect MIN_EXPECTED_PER_ENDPOINT."""
    positive = [s for s in shares if s > 0]
    if len(positive) < 2:
        return 0
    total = sum(positive)
    # the kernel keeps probabilities rounded (0.33333333349): do not let that ask for a 16th connection
    return math.ceil(MIN_EXPECTED_PER_ENDPOINT * total / min(positive) - 1e-6)


def format_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


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
    note: str | None = None

    @property
    def connections(self) -> int:
        return sum(self.observed)

    @property
    def departs(self) -> bool:
        return self.fit is not None and self.fit.p_value < SIGNIFICANCE


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

    @property
    def baseline(self) -> bool:
        return self.number == 1


@dataclass(slots=True)
class _SplitState:
    signature: tuple
    since: datetime
    counts: dict[str, int] = field(default_factory=dict)
    affinity: int = 0
    pods: dict[str, str] = field(default_factory=dict)  # endpoint -> pod, for the notes


class WatchTracker:
    """Compares each sample with the one before: deltas, rates, resets, rows and chains that come and go, and the
    running split tests. ``update`` takes one sample and returns its Frame."""

    def __init__(self, interval: float, service: str | None = None):
        self.interval = interval
        self.service = service
        self.samples = 0
        self._rules: dict[tuple, tuple[str, int, int]] = {}
        self._rows: dict[tuple, Row] = {}
        self._totals: dict[tuple, list[int]] = {}
        self._read_at: dict[str, float] = {}
        self._chains: dict[tuple[str, str, str], bool] = {}
        self._splits: dict[tuple, _SplitState] = {}

    def update(
        self,
        readings: dict[str, list[RowReading]],
        read_at: dict[str, float],
        when: datetime,
        chains: dict[str, dict[tuple[str, str], bool]] | None = None,
        failed: dict[str, str] | None = None,
        plan: ServiceWatchPlan | None = None,
    ) -> Frame:
        """``readings``/``read_at``/``chains``: per node that could be read (monotonic read times, chain
        presence); ``failed``: nodes that could not be read this time (their rows keep their state)."""
        self.samples += 1
        baseline = self.samples == 1
        frame = Frame(self.samples, when, self.interval, self.service, [], failed=dict(failed or {}))
        for node, at in read_at.items():
            if node in self._read_at:
                frame.elapsed[node] = max(at - self._read_at[node], 1e-6)
            self._read_at[node] = at
        for node, presence in (chains or {}).items():
            for (table, chain), present in presence.items():
                before = self._chains.get((node, table, chain))
                if before is not None and before != present:
                    frame.chain_changes.append(ChainChange(node, table, chain, "appeared" if present else "disappeared"))
                self._chains[(node, table, chain)] = present
        seen_rules: set[tuple] = set()
        current: dict[tuple, Row] = {}
        for node, rows in readings.items():
            for reading in rows:
                row = self._row(reading, baseline, frame.elapsed.get(node), seen_rules)
                current[reading.key] = row
                frame.rows.append(row)
        read_nodes = set(readings)
        for key, old in self._rows.items():
            if key not in current and old.reading.node in read_nodes and old.change != "gone":
                gone = Row(old.reading, old.packets, old.bytes, 0, 0, False, "gone", 0.0 if not baseline else None,
                           old.total_packets, old.total_bytes)
                frame.rows.append(gone)
        for key in [k for k, (_t, _p, _b) in self._rules.items() if k[0] in read_nodes and k not in seen_rules]:
            del self._rules[key]  # a rule that comes back later is new then
        for key in [k for k, row in self._rows.items() if row.reading.node in read_nodes and k not in current]:
            del self._rows[key]
            self._totals.pop(key, None)
        self._rows.update(current)
        self._check_splits(frame, plan)
        return frame

    def _row(self, reading: RowReading, baseline: bool, elapsed: float | None, seen: set[tuple]) -> Row:
        delta_p = delta_b = affinity = 0
        reset = False
        for counted in reading.rules:
            seen.add(counted.key)
            before = self._rules.get(counted.key)
            if baseline:
                dp = db = 0
            elif before is None:
                dp, db = counted.packets, counted.bytes  # a new rule: all it counted, it counted since the last sample
            elif before[0] != counted.text or counted.packets < before[1] or counted.bytes < before[2]:
                # rewritten: kube-proxy restored the chain, and its counters started again from zero
                reset = True
                dp, db = counted.packets, counted.bytes
            else:
                dp, db = counted.packets - before[1], counted.bytes - before[2]
            self._rules[counted.key] = (counted.text, counted.packets, counted.bytes)
            delta_p += dp
            delta_b += db
            if counted.role == "affinity":
                affinity += dp
        appeared = not baseline and reading.key not in self._rows
        totals = self._totals.setdefault(reading.key, [0, 0])
        totals[0] += delta_p
        totals[1] += delta_b
        rate = None if baseline or elapsed is None else delta_p / elapsed
        change = "appeared" if appeared else ("reset" if reset else None)
        return Row(reading, reading.packets, reading.bytes, delta_p, delta_b, reset, change, rate,
                   totals[0], totals[1], affinity_delta=affinity)

    # --- the split tests ---
    def _check_splits(self, frame: Frame, plan: ServiceWatchPlan | None) -> None:
        if plan is None:
            return
        groups: dict[tuple[str, str], list[Row]] = {}
        for row in frame.rows:
            if row.reading.kind == "endpoint" and row.change != "gone":
                groups.setdefault((row.reading.node, row.reading.chain), []).append(row)
        for (node, chain), rows in sorted(groups.items()):
            signature = rows[0].reading.split_signature
            state = self._split_state(("chain", node, chain), signature, frame, rows)
            for row in rows:
                state.counts[row.reading.endpoint] = state.counts.get(row.reading.endpoint, 0) + (
                    row.delta_packets - row.affinity_delta)
                state.affinity += row.affinity_delta
            total = sum(state.counts.values())
            for row in rows:
                row.observed_share = state.counts.get(row.reading.endpoint, 0) / total if total else None
            ordered = [r for r in rows if (r.reading.expected or 0) > 0]
            check = SplitCheck("chain", rows[0].reading.service or "", node, chain,
                               [r.reading.endpoint for r in ordered],
                               [state.counts.get(r.reading.endpoint, 0) for r in ordered],
                               [r.reading.expected for r in ordered], state.since,
                               connections_needed([r.reading.expected for r in ordered]),
                               affinity_connections=state.affinity)
            self._test(check)
            if check.departs:
                check.note = _chain_note(check)
            frame.splits.append(check)
        for port in plan.ports:
            self._check_service_split(frame, plan, port, groups)

    def _split_state(self, key: tuple, signature: tuple, frame: Frame, rows: list[Row]) -> _SplitState:
        state = self._splits.get(key)
        if state is None or state.signature != signature:
            if state is not None:
                what = key[2] if key[0] == "chain" else key[1]
                where = f" on {key[1]}" if key[0] == "chain" else ""
                frame.notes.append(f"{what}{where} changed (endpoints or probabilities) at "
                                   f"{frame.time:%H:%M:%S}: its split is counted again from there")
            state = self._splits[key] = _SplitState(signature, frame.time)
        for row in rows:
            if row.reading.pod:
                state.pods[row.reading.endpoint] = row.reading.pod
        return state

    def _check_service_split(self, frame: Frame, plan: ServiceWatchPlan, port: PortWatch,
                             groups: dict[tuple[str, str], list[Row]]) -> None:
        rows = [r for (node, chain), rs in groups.items() if chain in port.split_chains for r in rs]
        if not rows:
            return
        endpoints = sorted({r.reading.endpoint for r in rows if r.reading.chain == port.chains["svc"]}
                           or {r.reading.endpoint for r in rows})
        state = self._split_state(("service", port.svc_port_name), tuple(endpoints), frame, rows)
        by_node: dict[str, dict[str, int]] = {}
        for row in rows:
            if row.reading.endpoint not in endpoints:
                continue
            state.counts[row.reading.endpoint] = state.counts.get(row.reading.endpoint, 0) + row.delta_packets
            state.affinity += row.affinity_delta
        for row in rows:
            chains = by_node.setdefault(row.reading.node, {})
            chains[row.reading.chain] = chains.get(row.reading.chain, 0) + row.total_packets
        shares = [1.0 / len(endpoints)] * len(endpoints)
        check = SplitCheck("service", port.svc_port_name, None, None, endpoints,
                           [state.counts.get(e, 0) for e in endpoints], shares, state.since,
                           connections_needed(shares), affinity_connections=state.affinity)
        self._test(check)
        if check.departs:
            check.note = _service_note(check, port, by_node, groups, state.pods)
        frame.splits.append(check)

    @staticmethod
    def _test(check: SplitCheck) -> None:
        if len(check.shares) >= 2 and check.connections >= check.needed:
            check.fit = chi_square_test(check.observed, check.shares)


# --- the notes: what a departure means, in words -------------------------------------------------------------------
def _numbers(fit: GoodnessOfFit) -> str:
    dof = "degree" if fit.degrees_of_freedom == 1 else "degrees"
    return f"chi-square {fit.statistic:.1f} with {fit.degrees_of_freedom} {dof} of freedom, p = {format_p(fit.p_value)}"


def _counts(check: SplitCheck, pods: dict[str, str] | None = None) -> str:
    n = check.connections
    parts = []
    for endpoint, observed, share in zip(check.endpoints, check.observed, check.shares):
        name = (pods or {}).get(endpoint) or endpoint
        parts.append(f"{name} {observed} ({observed / n:.0%}, expected {share / sum(check.shares):.0%})")
    return ", ".join(parts)


def _chain_note(check: SplitCheck) -> str:
    return (f"On {check.node}, {check.chain} did not split its {check.connections} new connections the way its rules "
            f"say: {_counts(check)}; {_numbers(check.fit)}. The kernel draws each connection at random, so this is "
            "rarely chance: a counter reset that went unseen (kube-proxy rewrote the chain and the new counts passed "
            "the old ones within one interval), or rules changed by something other than kube-proxy.")


def _service_note(check: SplitCheck, port: PortWatch, by_node: dict[str, dict[str, int]],
                  groups: dict[tuple[str, str], list[Row]], pods: dict[str, str]) -> str:
    text = (f"{check.service}: its endpoints did not get even shares of the {check.connections} new connections "
            f"counted since {check.since:%H:%M:%S}: {_counts(check, pods)}; {_numbers(check.fit)}. "
            "That is beyond chance. Usual causes:")
    causes = []
    local = [(node, chain, n) for node, chains in by_node.items() for chain, n in chains.items()
             if chain == port.chains["svl"] and n > 0]
    if local:
        where = ", ".join(f"{node} {n}" for node, _c, n in sorted(local, key=lambda t: -t[2]))
        causes.append(f"a node taking all external traffic: with traffic policy Local, a node sends what it "
                      f"receives through {port.chains['svl']} to its own endpoints only (connections there: {where})")
    sets = {}
    for (node, chain), rows in groups.items():
        if chain == port.chains["svc"]:
            sets[node] = frozenset(r.reading.endpoint for r in rows)
    if len(set(sets.values())) > 1:
        sizes = ", ".join(f"{node} {len(eps)}" for node, eps in sorted(sets.items()))
        causes.append(f"the nodes disagree about the endpoints: their {port.chains['svc']} chains balance over "
                      f"different sets (endpoints per node: {sizes})")
    if check.affinity_connections or port.affinity_seconds:
        held = f"{check.affinity_connections} of the {check.connections} connections were returning clients held to " \
               "their endpoint" if check.affinity_connections else "returning clients are held to their endpoint"
        seconds = f" for {port.affinity_seconds}s" if port.affinity_seconds else ""
        causes.append(f"session affinity: {held} (sessionAffinity ClientIP{seconds}), so a few clients make a few "
                      "independent draws")
    causes.append("keep-alive: a connection is counted once however many requests it carries, and a client that "
                  "reuses connections (HTTP keep-alive, HTTP/2, gRPC, pools) keeps its requests on the endpoint its "
                  "connection drew")
    if not local and len(causes) == 1:
        causes.insert(0, "traffic that enters at some nodes only is not a cause by itself (each node's "
                         f"{port.chains['svc']} splits evenly); look at where the connections came in")
    return text + " " + "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1)) + "."


def busiest(rows: list[Row], top: int) -> list[Row]:
    """The rows that counted the most new connections in this sample (on the first sample: the most so far).
    Rows that counted nothing are left out: a quiet cluster shows an empty list, not twenty zeros."""
    if all(r.rate is None for r in rows):
        return sorted((r for r in rows if r.packets), key=lambda r: (r.packets, r.bytes), reverse=True)[:top]
    moved = (r for r in rows if r.change != "gone" and (r.delta_packets or r.change in ("reset", "appeared")))
    return sorted(moved, key=lambda r: (r.delta_packets, r.packets), reverse=True)[:top]
