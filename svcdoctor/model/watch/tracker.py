"""Samples of one service compared over time: deltas, rates, resets, rows and chains that come and go, and the
running split tests.

A counter that goes down, or a rule whose text changed under the same key, was rewritten (kube-proxy restores a
chain with fresh counters): that is a reset, and the delta is the new value (what was counted since the rewrite),
never negative. A node that could not be read keeps its state; its next read covers the whole gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from svcdoctor.model.watch.frame import (
    ChainChange,
    Frame,
    Row,
    RowReading,
    ServiceSplitEvidence,
    SplitCheck,
)
from svcdoctor.model.watch.listing import IPV4
from svcdoctor.model.watch.flows import CONNTRACK
from svcdoctor.model.watch.plan import PortWatch, ServiceWatchPlan
from svcdoctor.model.watch.stats import chi_square_test, connections_needed

ChainKey = tuple[str, str, str]  # (family, table, chain)


@dataclass(slots=True)
class _SplitState:
    signature: tuple
    since: datetime
    counts: dict[str, int] = field(default_factory=dict)
    affinity: int = 0
    pods: dict[str, str] = field(default_factory=dict)  # endpoint -> pod, for the notes


class WatchTracker:
    """Compares each sample with the one before. ``update`` takes one sample and returns its Frame."""

    def __init__(self, interval: float, service: str | None = None):
        self.interval = interval
        self.service = service
        self.samples = 0
        self._rules: dict[tuple, tuple[str, int, int]] = {}
        self._rows: dict[tuple, Row] = {}
        self._totals: dict[tuple, list[int]] = {}
        self._read_at: dict[str, float] = {}
        self._chains: dict[tuple, bool] = {}
        self._splits: dict[tuple, _SplitState] = {}

    def update(
        self,
        readings: dict[str, list[RowReading]],
        read_at: dict[str, float],
        when: datetime,
        chains: dict[str, dict[ChainKey, bool]] | None = None,
        failed: dict[str, str] | None = None,
        plan: ServiceWatchPlan | None = None,
    ) -> Frame:
        """``readings``/``read_at``/``chains``: per node that could be read (monotonic read times, chain
        presence); ``failed``: nodes that could not be read this time (their rows keep their state)."""
        self.samples += 1
        baseline = self.samples == 1
        frame = Frame(self.samples, when, self.interval, self.service, [], failed=dict(failed or {}))
        self._note_read_times(frame, read_at)
        self._note_chain_changes(frame, chains or {})
        seen_rules: set[tuple] = set()
        current: dict[tuple, Row] = {}
        for node, rows in readings.items():
            for reading in rows:
                row = self._row(reading, baseline, frame.elapsed.get(node), seen_rules)
                current[reading.key] = row
                frame.rows.append(row)
        self._forget_what_went(frame, set(readings), current, seen_rules, baseline)
        self._check_splits(frame, plan)
        return frame

    # --- one sample against the previous one ---
    def _note_read_times(self, frame: Frame, read_at: dict[str, float]) -> None:
        for node, at in read_at.items():
            if node in self._read_at:
                frame.elapsed[node] = max(at - self._read_at[node], 1e-6)
            self._read_at[node] = at

    def _note_chain_changes(self, frame: Frame, chains: dict[str, dict[ChainKey, bool]]) -> None:
        for node, presence in chains.items():
            for (family, table, chain), present in presence.items():
                before = self._chains.get((node, family, table, chain))
                if before is not None and before != present:
                    frame.chain_changes.append(ChainChange(node, table, chain,
                                                           "appeared" if present else "disappeared", family))
                self._chains[(node, family, table, chain)] = present

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

    def _forget_what_went(self, frame: Frame, read_nodes: set[str], current: dict[tuple, Row],
                          seen_rules: set[tuple], baseline: bool) -> None:
        """Rows of the nodes read this time that are no longer there: shown once as gone, then forgotten (a rule
        that comes back later is new then). Nodes not read keep everything."""
        for key, old in self._rows.items():
            if key not in current and old.reading.node in read_nodes and old.change != "gone":
                frame.rows.append(Row(old.reading, old.packets, old.bytes, 0, 0, False, "gone",
                                      0.0 if not baseline else None, old.total_packets, old.total_bytes))
        for key in [k for k in self._rules if k[0] in read_nodes and k not in seen_rules]:
            del self._rules[key]
        for key in [k for k, row in self._rows.items() if row.reading.node in read_nodes and k not in current]:
            del self._rows[key]
            self._totals.pop(key, None)
        self._rows.update(current)

    # --- the split tests ---
    def _check_splits(self, frame: Frame, plan: ServiceWatchPlan | None) -> None:
        if plan is None:
            return
        groups: dict[tuple[str, str, str], list[Row]] = {}  # (node, family, chain) -> its endpoint rows
        for row in frame.rows:
            if row.reading.kind == "endpoint" and row.change != "gone":
                groups.setdefault((row.reading.node, row.reading.family, row.reading.chain), []).append(row)
        for (node, family, chain), rows in sorted(groups.items()):
            port = plan.port_of_chain(chain)
            frame.splits.append(self._chain_split(frame, node, family, chain, rows,
                                                  port.affinity_seconds if port is not None else None))
        families = sorted({family for _node, family, _chain in groups})
        for port in plan.ports:
            for family in families:
                in_family = {(n, c): rs for (n, f, c), rs in groups.items() if f == family}
                check = self._service_split(frame, port, family, in_family)
                if check is not None:
                    frame.splits.append(check)

    def _chain_split(self, frame: Frame, node: str, family: str, chain: str, rows: list[Row],
                     affinity_seconds: int | None = None) -> SplitCheck:
        """One node's split chain against the probabilities its rules give (returning clients left out)."""
        state = self._split_state(("chain", node, family, chain), rows[0].reading.split_signature, frame, rows)
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
                           affinity_connections=state.affinity, family=family, source=rows[0].reading.source)
        if check.source == CONNTRACK and affinity_seconds:
            # a rule counter tells an affinity hit from a random draw (its own rule); a connection does not
            check.untested = ("not tested: with session affinity, conntrack cannot tell returning clients from "
                              "random draws")
        self._test(check)
        return check

    def _split_state(self, key: tuple, signature: tuple, frame: Frame, rows: list[Row]) -> _SplitState:
        state = self._splits.get(key)
        if state is None or state.signature != signature:
            if state is not None:
                frame.notes.append(_restart_note(key, frame.time))
            state = self._splits[key] = _SplitState(signature, frame.time)
        for row in rows:
            if row.reading.pod:
                state.pods[row.reading.endpoint] = row.reading.pod
        return state

    def _service_split(self, frame: Frame, port: PortWatch, family: str,
                       groups: dict[tuple[str, str], list[Row]]) -> SplitCheck | None:
        """The port's endpoints in one family, counted on every node and chain, against even shares."""
        rows = [r for (node, chain), rs in groups.items() if chain in port.split_chains for r in rs]
        if not rows:
            return None
        endpoints = sorted({r.reading.endpoint for r in rows if port.kind_of(r.reading.chain) == "svc"}
                           or {r.reading.endpoint for r in rows})
        key = ("service", port.svc_port_name) if family == IPV4 else ("service", port.svc_port_name, family)
        state = self._split_state(key, tuple(endpoints), frame, rows)
        for row in rows:
            if row.reading.endpoint in endpoints:
                state.counts[row.reading.endpoint] = state.counts.get(row.reading.endpoint, 0) + row.delta_packets
                state.affinity += row.affinity_delta
        shares = [1.0 / len(endpoints)] * len(endpoints)
        check = SplitCheck("service", port.svc_port_name, None, None, endpoints,
                           [state.counts.get(e, 0) for e in endpoints], shares, state.since,
                           connections_needed(shares), affinity_connections=state.affinity, family=family)
        self._test(check)
        if check.departs:
            check.evidence = _service_evidence(port, rows, groups, state.pods)
        return check

    @staticmethod
    def _test(check: SplitCheck) -> None:
        if check.untested is None and len(check.shares) >= 2 and check.connections >= check.needed:
            check.fit = chi_square_test(check.observed, check.shares)


def _service_evidence(port: PortWatch, rows: list[Row], groups: dict[tuple[str, str], list[Row]],
                      pods: dict[str, str]) -> ServiceSplitEvidence:
    """The counters' evidence for the usual causes of an uneven service split."""
    local: dict[str, int] = {}
    names = {"svc": port.chains["svc"], "svl": port.chains["svl"]}  # named as the rows name them (nft or iptables)
    for row in rows:
        kind = port.kind_of(row.reading.chain)
        if kind in names:
            names[kind] = row.reading.chain
        if kind == "svl":
            local[row.reading.node] = local.get(row.reading.node, 0) + row.total_packets
    sets = {node: frozenset(r.reading.endpoint for r in rs) for (node, chain), rs in groups.items()
            if port.kind_of(chain) == "svc"}
    disagree = len(set(sets.values())) > 1
    return ServiceSplitEvidence(
        names["svc"], names["svl"],
        sorted(((node, n) for node, n in local.items() if n > 0), key=lambda t: -t[1]),
        {node: len(eps) for node, eps in sorted(sets.items())} if disagree else {},
        port.affinity_seconds, pods)


def _restart_note(key: tuple, when: datetime) -> str:
    """A split that changed (endpoints or probabilities) is tested again from this sample."""
    if key[0] == "chain":
        _scope, node, family, chain = key
        what = f"{chain} on {node}" + ("" if family == IPV4 else f" ({family})")
    else:
        what = key[1] + ("" if len(key) == 2 else f" ({key[2]})")
    return f"{what} changed (endpoints or probabilities) at {when:%H:%M:%S}: its split is counted again from there"
