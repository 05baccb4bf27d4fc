"""`watch` counted from conntrack: which of a node's connections are the service's, which endpoint each one went
to, and which are new since the previous sample.

kube-proxy's nftables rules keep no counters, so on a node in nftables mode (and anywhere with `--source
conntrack`) the sample is the node's conntrack table (svcdoctor/collect/conntrack_reads.py reads it, the reader
svcdoctor/model/conntrack.py parses it). The plan comes from explain's ServiceView, which walks iptables and
nftables nodes alike: each node's entries (cluster IP:port, node port, external and load-balancer IP:port) with the
split chain they lead to, and each split chain's endpoints with the share its rules give them.

A connection is the service's on a node when its original destination is one of that node's entries (for a node
port: any address of the node, with that port and protocol) and the reply comes from somewhere else: the DNAT
happened, and the reply's source is the endpoint. So a connection is counted on the node whose rules DNATed it,
as a rule counter would count it there: the client pod's node for a cluster IP, the node a node port was reached
at. The endpoint's own node sees the connection already DNATed (its destination is the pod) and does not count it.

A connection is new when its conntrack id was not in the node's previous sample (the proc file has no ids: there
its addresses and ports tell it apart). Each row keeps a running count, so the tracker (tracker.py) takes deltas
of it as it takes them of a rule's counter: the first sample (the baseline) counts the connections conntrack holds
then, and every later one adds the new ones. A connection that starts and ends between two samples is never seen:
conntrack keeps a closed TCP connection 120 s (TIME_WAIT), a refused one 10 s, UDP 30 s (the kernel's
nf_conntrack_*_timeout defaults), so an interval below those misses nothing but what the table had no room for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.conntrack import Flow, normal_ip
from svcdoctor.model.hashes import chain_kind
from svcdoctor.model.nft.names import parse_name
from svcdoctor.model.rule_text import host_port, split_host_port
from svcdoctor.model.watch.frame import CountedRule, RowReading
from svcdoctor.model.watch.plan import SPLIT_CHAIN_KINDS, ServiceWatchPlan

CONNTRACK = "conntrack"  # a row's source, and its "table": what the row was read from
NFT_SPLIT_KINDS = ("service", "local")  # nftables mode's chains that draw an endpoint (model/nft/names.py)


@dataclass(frozen=True, slots=True)
class FlowEntry:
    """One way into the service on one node, as a connection's original destination shows it."""

    family: str  # IPv4 | IPv6
    protocol: str  # tcp | udp | sctp
    address: str | None  # None for a node port: any of the node's addresses
    port: int
    label: str  # "clusterIP 10.96.0.10:80", as explain names the entry
    svc_port_name: str
    chains: tuple[str, ...]  # the split chains it leads to: an outside client's first, then those of the clients
    # it treats apart (a Local node port sends pods and the node itself to KUBE-SVC)


@dataclass(slots=True)
class SplitEndpoints:
    """One split chain on one node: its endpoints and the share of the chain's new connections its rules give
    each."""

    svc_port_name: str
    entries: list[str] = field(default_factory=list)  # labels of the entries that lead here
    shares: dict[str, float] = field(default_factory=dict)  # "ip:port" -> share
    rule_probability: dict[str, float | None] = field(default_factory=dict)
    pods: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # "ip:port" -> (pod, its node)


@dataclass(slots=True)
class FlowPlan:
    """What to read from conntrack on each node, and how to tell the service's connections apart."""

    entries: dict[str, list[FlowEntry]] = field(default_factory=dict)  # node -> its entries
    splits: dict[tuple[str, str, str], SplitEndpoints] = field(default_factory=dict)  # (node, family, chain)
    # node -> (family, protocol, port) -> its entries, made at the first look-up: without a service the plan holds
    # every service port of the node, and each listed connection is looked up
    _by_port: dict[str, dict[tuple[str, str, int], list[FlowEntry]]] = field(default_factory=dict, repr=False)

    def queries(self, node: str) -> list[tuple[str, str, int]]:
        """(family, protocol, destination port) for each conntrack listing the node needs: an entry's port, or
        its node port (collect/conntrack_reads.py says why by port)."""
        return list(dict.fromkeys((e.family, e.protocol, e.port) for e in self.entries.get(node, [])))

    def entry_of(self, node: str, flow: Flow) -> FlowEntry | None:
        """The entry a DNATed connection came in through on this node, or None when it is not the service's. A node
        port is any address of the node with that port, so a connection to it must also have gone to one of the
        port's endpoints (another service's cluster IP may listen on the same number)."""
        if not flow.dnat:
            return None
        o = flow.original
        node_port = None
        for entry in self._entries_at(node).get((flow.family, flow.protocol, o.dport), ()):
            if entry.address == o.dst:
                return entry
            if entry.address is None:
                node_port = entry
        if node_port is not None and self._drawn_by(node, node_port, host_port(flow.reply.src, flow.reply.sport)):
            return node_port
        return None

    def _entries_at(self, node: str) -> dict[tuple[str, str, int], list[FlowEntry]]:
        by_port = self._by_port.get(node)
        if by_port is None:
            by_port = self._by_port[node] = {}
            for entry in self.entries.get(node, ()):
                by_port.setdefault((entry.family, entry.protocol, entry.port), []).append(entry)
        return by_port

    def _drawn_by(self, node: str, entry: FlowEntry, endpoint: str) -> bool:
        return any(endpoint in split.shares for chain in entry.chains
                   if (split := self.splits.get((node, entry.family, chain))) is not None)

    def chain_of(self, node: str, entry: FlowEntry, endpoint: str) -> str:
        """The split chain that drew this endpoint: the entry's first that has it (pods reaching a Local node port
        are balanced by KUBE-SVC over every endpoint), else the entry's first."""
        for chain in entry.chains:
            split = self.splits.get((node, entry.family, chain))
            if split is not None and endpoint in split.shares:
                return chain
        return entry.chains[0]


def plan_flows(view, nodes: list[str], plan: ServiceWatchPlan | None = None) -> FlowPlan:
    """The flow plan of the given nodes from explain's ServiceView (both families, iptables and nftables nodes)."""
    out = FlowPlan()
    wanted = set(nodes)
    for pv in view.ports:
        protocol = pv.protocol.lower()
        for nv in pv.nodes:
            if nv.node not in wanted:
                continue
            for entry in nv.entries:
                _add_entry(out, nv.node, pv.svc_port_name, protocol, entry, plan)
    return out


def plan_table_flows(nft: dict[str, list], cluster=None) -> FlowPlan:
    """The flow plan of every service port of the nftables nodes' kube-proxy tables (node -> its ip and ip6
    tables), for `watch` without a service: each port's entries and endpoints as explain walks them, the dispatch
    maps read once per table (model/nft/explain.py dispatch_index), as `svcdoctor services` walks them
    (model/service_list.py)."""
    from svcdoctor.model.nft.explain import explain_nft_entries
    from svcdoctor.model.nft.view import service_ports

    # the API's port, when read, names the endpoints' pods and tells load-balancer IPs from external ones
    api_ports = {(sp.svc_port_name, sp.protocol.lower()): sp for sp in (cluster.service_ports if cluster else [])}
    out = FlowPlan()
    for node, tables in nft.items():
        for rs in tables:
            for base, hashed in service_ports(rs).items():
                api_port = api_ports.get((hashed.svc_port_name, hashed.protocol.lower()))
                for entry in explain_nft_entries(rs, base, node, cluster, api_port):
                    _add_entry(out, node, hashed.svc_port_name, hashed.protocol.lower(), entry, None)
    return out


def _add_entry(out: FlowPlan, node: str, svc_port_name: str, protocol: str, entry, plan) -> None:
    own = split_chain_of(entry.path) if entry.endpoints else None
    others = [c.target for c in entry.clients if is_split_chain(c.target)]
    chains = tuple(dict.fromkeys(([own] if own else []) + others))
    if not chains:
        return  # dropped or rejected: a connection that never gets a conntrack entry
    host, port = split_host_port(entry.destination)
    if not port.isdigit():
        return
    address = normal_ip(host) if host else None
    out.entries.setdefault(node, []).append(
        FlowEntry(entry.family, protocol, address, int(port), entry.label, svc_port_name, chains))
    for chain in chains:
        split = out.splits.setdefault((node, entry.family, chain), SplitEndpoints(svc_port_name))
        if entry.label not in split.entries and chain == chains[0]:
            split.entries.append(entry.label)
    if own is None:
        return
    split = out.splits[(node, entry.family, own)]
    total = sum(ep.probability for ep in entry.endpoints)
    if split.shares or total <= 0:
        return  # another entry into the same chain has said it already
    for ep in entry.endpoints:
        address = host_port(normal_ip(ep.ip), ep.port)
        split.shares[address] = split.shares.get(address, 0.0) + ep.probability / total
        split.rule_probability[address] = ep.rule_probability
        pod, pod_node = ep.pod, ep.node
        if plan is not None and pod is None:
            pod, pod_node = plan.pods_by_ip.get(ep.ip), plan.pod_nodes.get(ep.ip)
        split.pods[address] = (pod, pod_node)


def is_split_chain(chain: str | None) -> bool:
    """KUBE-SVC/KUBE-SVL/KUBE-XLB in iptables mode, service-/local- in nftables mode."""
    if not chain:
        return False
    if chain_kind(chain) in SPLIT_CHAIN_KINDS:
        return True
    hashed = parse_name(chain)
    return hashed is not None and hashed.kind in NFT_SPLIT_KINDS


def split_chain_of(path: list[str]) -> str | None:
    """The chain on an entry's path that draws the endpoint (the last one, past KUBE-EXT and firewalls)."""
    return next((c for c in reversed(path) if is_split_chain(c)), None)


class FlowCounter:
    """The running count of each row's connections, from one sample of a node's conntrack to the next."""

    def __init__(self, flows: FlowPlan, plan: ServiceWatchPlan | None = None):
        self.flows = flows
        self.plan = plan
        # node -> (ids, or None where a connection had none; original tuples) of its connections at its last read
        self._seen: dict[str, tuple[set[str] | None, set[tuple]]] = {}
        self._counted: dict[tuple, int] = {}  # row key -> connections counted since the watch started

    def observe(self, node: str, flows: list[Flow], baseline: bool) -> list[RowReading]:
        """One node's rows for this sample. ``baseline``: the watch's first sample, which counts what conntrack
        holds now; a node first read later counts only what is new from there on."""
        matched: dict[tuple[str, str, str], list[Flow]] = {}  # (family, split chain, endpoint) -> its connections
        for flow in flows:
            entry = self.flows.entry_of(node, flow)
            if entry is None:
                continue
            endpoint = host_port(flow.reply.src, flow.reply.sport)
            chain = self.flows.chain_of(node, entry, endpoint)
            matched.setdefault((entry.family, chain, endpoint), []).append(flow)
        first_read = node not in self._seen
        is_new = self._new_test(node, [f for row_flows in matched.values() for f in row_flows])
        rows = []
        for (family, chain, endpoint), row_flows in self._row_keys(node, matched).items():
            key = (node, family, CONNTRACK, chain, endpoint)
            if first_read:
                new = len(row_flows) if baseline else 0
            else:
                new = sum(1 for f in row_flows if is_new(f))
            self._counted[key] = self._counted.get(key, 0) + new
            rows.append(self._reading(node, family, chain, endpoint, key, len(row_flows)))
        return rows

    def _new_test(self, node: str, flows: list[Flow]):
        """Is a connection new since the node's previous read? By conntrack's id when both reads have ids (a
        connection that reuses an earlier one's addresses and ports is new too), else by its original tuple (the
        proc file has no ids, and a node may change from one to the other when conntrack starts failing)."""
        before_ids, before_keys = self._seen.get(node, (None, set()))
        ids = {f.id for f in flows} if flows and all(f.id for f in flows) else None
        self._seen[node] = (ids, {f.key for f in flows})
        if ids is not None and before_ids is not None:
            return lambda f: f.id not in before_ids
        return lambda f: f.key not in before_keys

    def _row_keys(self, node: str, matched: dict) -> dict[tuple[str, str, str], list[Flow]]:
        """Every endpoint of the node's split chains (with or without connections, as a chain lists them all), then
        the endpoints only connections name (they came after the plan), and every row counted before."""
        out: dict[tuple[str, str, str], list[Flow]] = {}
        for (split_node, family, chain), split in self.flows.splits.items():
            if split_node == node:
                for endpoint in split.shares:
                    out[(family, chain, endpoint)] = []
        for key in self._counted:  # a row once shown stays: its running count must not start again
            if key[0] == node:
                out.setdefault((key[1], key[3], key[4]), [])
        for key, row_flows in matched.items():
            out.setdefault(key, []).extend(row_flows)
        return out

    def _reading(self, node: str, family: str, chain: str, endpoint: str, key: tuple, tracked: int) -> RowReading:
        split = self.flows.splits.get((node, family, chain))
        shares = split.shares if split is not None else {}
        pod, pod_node = (split.pods.get(endpoint) if split is not None else None) or (None, None)
        if pod is None and self.plan is not None:
            ip = split_host_port(endpoint)[0]
            pod, pod_node = self.plan.pods_by_ip.get(ip), self.plan.pod_nodes.get(ip)
        entries = ", ".join(split.entries) if split is not None and split.entries else "the service"
        text = f"conntrack: connections DNATed to {endpoint} through {chain} ({entries})"
        counted = CountedRule(key, text, self._counted[key], 0, "split")
        return RowReading(key, "endpoint", node, CONNTRACK, chain, text,
                          split.svc_port_name if split is not None else None, endpoint, [counted],
                          expected=shares.get(endpoint, 0.0) if shares else None,
                          rule_probability=split.rule_probability.get(endpoint) if split is not None else None,
                          pod=pod, endpoint_node=pod_node, split_signature=tuple(sorted(shares.items())),
                          family=family, source=CONNTRACK, tracked=tracked)
