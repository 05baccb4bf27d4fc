"""`watch` without a service: every counted kube-proxy rule of every node's full dump, compared with the previous
dump, and the busiest of them.

A big node prints 150,000 lines at every sample, so a dump is sorted into plain tuples with string tests first,
and rows (with names) are made only for what moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from svcdoctor.model import rule_text
from svcdoctor.model.hashes import ENDPOINT_CHAIN_PREFIX, LEGACY_XLB_PREFIX, SERVICE_CHAIN_PREFIXES, chain_suffix
from svcdoctor.model.service_rules import service_port_of_comment
from svcdoctor.model.watch.frame import BLACKHOLE_TARGETS, CountedRule, Frame, Row, RowReading
from svcdoctor.model.watch.listing import IPV4
from svcdoctor.model.watch.plan import PORT_CHAIN_PREFIXES

# where kube-proxy writes the entries into a service's chains (pkg/proxy/iptables/proxier.go kubeServicesChain,
# kubeNodePortsChain)
ENTRY_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS")
SPLIT_CHAIN_PREFIXES = (PORT_CHAIN_PREFIXES["svc"], PORT_CHAIN_PREFIXES["svl"], LEGACY_XLB_PREFIX)

# targets that can make a rule an entry, an endpoint (or its DNAT) or a blackhole
_JUMPS_OF_INTEREST = SERVICE_CHAIN_PREFIXES + (ENDPOINT_CHAIN_PREFIX,)
_VERDICTS_OF_INTEREST = frozenset(BLACKHOLE_TARGETS + ("DNAT",))

ScannedRule = tuple[str, str, str, int, int, str, str]  # (kind, table, chain, packets, bytes, rule text, target)


@dataclass(slots=True)
class DumpScan:
    """The rules of one `iptables-save -c` (or ip6tables) dump that say something about a service's traffic, as
    plain tuples; kind is entry, endpoint or blackhole."""

    rules: list[ScannedRule]
    endpoints: dict[str, str]  # KUBE-SEP-… -> "ip:port" of its DNAT
    entries: dict[str, str]  # hash suffix -> text of the entry rule that leads into that service's chain
    family: str = IPV4


def scan_dump(text: str, family: str = IPV4) -> DumpScan:
    """Entries into a service's chains, jumps to endpoints, DROP/REJECT rules in kube-proxy's and kubelet's chains.

    Names are looked up only for the rows that get shown (BusiestTracker)."""
    table = None
    rules: list[ScannedRule] = []
    endpoints: dict[str, str] = {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        first = line[:1]
        if first == "*":
            table = line[1:].strip()
            continue
        if first != "[" or "] -A KUBE-" not in line:
            continue
        # the target first, from the counted line (counters hold no -j): most rules are let go on it alone
        target = rule_text.target_name(line) or ""
        if not (target.startswith(_JUMPS_OF_INTEREST) or target in _VERDICTS_OF_INTEREST):
            continue
        rule = rule_text.strip_counters(line)  # "-A CHAIN spec"
        chain, _, spec = rule[3:].partition(" ")
        kind = None
        if table == "nat":
            if chain in ENTRY_CHAINS:
                if target.startswith(SERVICE_CHAIN_PREFIXES):
                    kind = "entry"
            elif chain.startswith(SPLIT_CHAIN_PREFIXES):
                if target.startswith(ENDPOINT_CHAIN_PREFIX):
                    kind = "endpoint"
            elif target == "DNAT" and chain.startswith(ENDPOINT_CHAIN_PREFIX):
                if destination := rule_text.option(spec, "--to-destination"):
                    endpoints[chain] = destination
                continue
        if kind is None and target in BLACKHOLE_TARGETS:
            kind = "blackhole"
        counted = rule_text.counters(line) if kind is not None else None
        if counted is not None:
            if kind == "entry":
                entries.setdefault(chain_suffix(target), rule)
            rules.append((kind, table or "", chain, counted[0], counted[1], rule, target))
    return DumpScan(rules, endpoints, entries, family)


class BusiestTracker:
    """Every counted rule of every node, compared with the previous dump as plain numbers. Rows are made only for
    what moved (on the first sample, for the `top` rules with the most counted), so a sample of 40,000 rules that
    mostly sit still costs a dictionary lookup each."""

    def __init__(self, interval: float, top: int, pods_by_ip: dict[str, str] | None = None):
        self.interval = interval
        self.top = top
        self.pods_by_ip = pods_by_ip or {}
        self.samples = 0
        self._last: dict[str, dict[tuple, tuple[int, int]]] = {}  # node -> rule key -> (packets, bytes)
        self._totals: dict[tuple, list[int]] = {}
        self._read_at: dict[str, float] = {}

    def update(self, scans: dict[str, list[DumpScan]], read_at: dict[str, float], when: datetime,
               failed: dict[str, str] | None = None) -> Frame:
        """``scans``: node -> its dumps (iptables, and ip6tables on a dual-stack node)."""
        self.samples += 1
        baseline = self.samples == 1
        frame = Frame(self.samples, when, self.interval, None, [], failed=dict(failed or {}), top=self.top)
        candidates: list[tuple[int, int, str, DumpScan, ScannedRule, tuple]] = []  # on the baseline
        for node, node_scans in scans.items():
            elapsed = read_at[node] - self._read_at[node] if node in self._read_at else None
            if elapsed is not None:
                frame.elapsed[node] = max(elapsed, 1e-6)
            self._read_at[node] = read_at[node]
            last = self._last.get(node, {})
            current: dict[tuple, tuple[int, int]] = {}
            for scan in node_scans:
                seen: dict[tuple, int] = {}
                for rule in scan.rules:
                    kind, table, chain, packets, nbytes, text, target = rule
                    base = (node, scan.family, table, chain, text)
                    seen[base] = n = seen.get(base, 0) + 1  # the same text twice in a chain: two rules, by order
                    key = base + (n,)
                    current[key] = (packets, nbytes)
                    if baseline:
                        if packets:
                            candidates.append((packets, nbytes, node, scan, rule, key))
                        continue
                    row = self._moved(frame, node, scan, rule, key, last.get(key))
                    if row is not None:
                        frame.rows.append(row)
            for key in set(self._totals).difference(current):
                if key[0] == node:
                    del self._totals[key]
            self._last[node] = current
        if baseline:
            candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
            for packets, nbytes, node, scan, rule, key in candidates[: self.top]:
                frame.rows.append(Row(self._reading(node, scan, rule, key), packets, nbytes, 0, 0, False,
                                      None, None, 0, 0))
        return frame

    def _moved(self, frame: Frame, node: str, scan: DumpScan, rule: ScannedRule, key: tuple,
               before: tuple[int, int] | None) -> Row | None:
        """The rule's row when it moved since the previous dump (or appeared, or was reset), else None."""
        packets, nbytes = rule[3], rule[4]
        if before is None:
            change, dp, db = "appeared", packets, nbytes
        elif packets < before[0] or nbytes < before[1]:
            change, dp, db = "reset", packets, nbytes
        elif packets != before[0]:
            change, dp, db = None, packets - before[0], nbytes - before[1]
        else:
            return None
        totals = self._totals.setdefault(key, [0, 0])
        totals[0] += dp
        totals[1] += db
        return Row(self._reading(node, scan, rule, key), packets, nbytes, dp, db, change == "reset", change,
                   dp / frame.elapsed[node] if node in frame.elapsed else None, totals[0], totals[1])

    def _reading(self, node: str, scan: DumpScan, rule: ScannedRule, key: tuple) -> RowReading:
        kind, table, chain, packets, nbytes, text, target = rule
        comment = rule_text.comment(text) if kind != "endpoint" else None
        spn = service_port_of_comment(comment)[0] if comment else None
        if spn is None:
            # no comment (endpoint jumps, or a large cluster's rules): the hash in the chain's name, or in the name
            # of the chain it jumps to, leads to the entry rule, whose comment names the service
            for hashed in (chain, target):
                if spn is None and hashed.startswith(SERVICE_CHAIN_PREFIXES):
                    entry = scan.entries.get(chain_suffix(hashed))
                    if entry is not None:
                        spn = service_port_of_comment(rule_text.comment(entry))[0]
        endpoint = scan.endpoints.get(target) if kind == "endpoint" else None
        pod = self.pods_by_ip.get(rule_text.split_host_port(endpoint)[0]) if endpoint else None
        return RowReading(key, kind, node, table, chain, text, spn, endpoint,
                          [CountedRule(key, text, packets, nbytes)], pod=pod,
                          verdict=target if kind == "blackhole" else None, comment=comment, family=scan.family)


def busiest(rows: list[Row], top: int) -> list[Row]:
    """The rows that counted the most new connections in this sample (on the first sample: the most so far).
    Rows that counted nothing are left out: a quiet cluster shows an empty list, not twenty zeros."""
    if all(r.rate is None for r in rows):
        return sorted((r for r in rows if r.packets), key=lambda r: (r.packets, r.bytes), reverse=True)[:top]
    moved = (r for r in rows if r.change != "gone" and (r.delta_packets or r.change in ("reset", "appeared")))
    return sorted(moved, key=lambda r: (r.delta_packets, r.packets), reverse=True)[:top]
