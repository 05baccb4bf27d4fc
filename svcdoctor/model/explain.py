"""`explain SERVICE`: for each port, node and entry, the path through kube-proxy's chains, the verdict, where
masquerading happens, and every endpoint with its effective share and counters.

The walk follows the probability split the way the kernel does: rules are tried in order with a remaining
mass (1.0 at the entry); `--probability p` takes p of what is left, an unconditional jump takes the rest
(docs/reference/kube-proxy-layout.md §2.6). Entries from outside (nodePort, externalIP, loadBalancer) are walked for a client
outside the cluster; clusterIP entries for any client, with source-dependent masquerading reported as conditional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.hashes import chain_kind, chain_suffix, endpoint_chain, service_hash
from svcdoctor.model.rules import NodeRules, Rule
from svcdoctor.model.service_rules import (
    NodeServiceIndex,
    ServicePortRules,
    index_node_services,
    service_port_of_comment,
    split_service_port_name,
)

SOURCE_OPTIONS = ("-s", "--src-type", "-i")
# Conditions a packet that reached the entry rule already satisfies (the entry rule matched on them).
DESTINATION_OPTIONS = ("-d", "-p", "--dport", "--dst-type", "--dports")
# KUBE-MARK-DROP: kube-proxy before 1.25 (KUBE-XLB- days) marked packets with 0x8000 and kubelet's
# KUBE-FIREWALL dropped them in filter; for the path it is a drop
TERMINAL_VERDICTS = {"DNAT": "dnat", "DROP": "drop", "REJECT": "reject", "ACCEPT": "accept", "KUBE-MARK-DROP": "drop"}
EPSILON = 1e-9


@dataclass(slots=True)
class EndpointShare:
    ip: str
    port: int | None
    chain: str
    probability: float  # effective share of the entry's new connections
    rule_probability: float | None  # as written on the jump rule (None: the last, unconditional rule)
    packets: int | None
    bytes: int | None
    masquerade: str  # always | never | conditional, on this endpoint's path
    node: str | None = None
    pod: str | None = None
    local: bool | None = None
    jump_rules: list[Rule] = field(default_factory=list)
    dnat_rule: Rule | None = None
    # the other entries of this node whose paths count on the same rules (KUBE-SVC/SVL is shared by the
    # ClusterIP and the external entries): "nodePort :32624"
    counters_shared_with: list[str] = field(default_factory=list)
    # False when an entry listed before this one already shows these counters: a sum over the endpoints whose
    # counters are counted here counts each connection once
    counters_counted_here: bool = True

    @property
    def counter_rules(self) -> list[Rule]:
        """The rules whose counters are this endpoint's: the jumps to its KUBE-SEP (the DNAT's when none)."""
        if self.jump_rules:
            return self.jump_rules
        return [self.dnat_rule] if self.dnat_rule is not None else []


@dataclass(slots=True)
class ClientPath:
    """Where one class of clients goes when the entry treats it apart from outside clients: pods, the node itself,
    localhost (a Local-policy nodePort sends them to every endpoint, masqueraded or not)."""

    clients: str  # "pods (10.244.0.0/16)", "the node itself", "localhost (127.0.0.0/8)", or the rule's condition
    condition: str  # the rule's source condition, as written
    target: str  # the chain they go to
    masquerade: bool  # marked for SNAT on the way
    rule: Rule | None = None


@dataclass(slots=True)
class Entry:
    kind: str  # clusterIP | nodePort | externalIP | loadBalancer
    destination: str  # "IP:PORT" or ":NODEPORT"
    verdict: str  # dnat | drop | reject | none
    path: list[str]
    masquerade: str  # always | never | conditional
    packets: int | None
    bytes: int | None
    endpoints: list[EndpointShare] = field(default_factory=list)
    entry_rule: Rule | None = None
    blackhole_rule: Rule | None = None  # filter DROP/REJECT that takes what is not DNATed
    masquerade_when: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    session_affinity_seconds: int | None = None
    unmatched_share: float = 0.0  # share that no DNAT rule took
    family: str = "IPv4"  # IPv6 entries come from ip6tables
    clients: list[ClientPath] = field(default_factory=list)  # client classes with a path of their own
    # session affinity as live state (nftables' affinity sets hold it): (client IP, endpoint, seconds left)
    pinned: list[tuple[str, str, int | None]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How other entries name this one: "nodePort :32624", "clusterIP 10.200.1.184:9000"."""
        return f"{self.kind} {self.destination}"

    @property
    def counters_shared_with(self) -> list[str]:
        """The other entries whose endpoint counters are (some of) this entry's, in their order."""
        out: list[str] = []
        for ep in self.endpoints:
            out.extend(label for label in ep.counters_shared_with if label not in out)
        return out

    @property
    def counters_chain(self) -> str | None:
        """The chain whose jump rules hold the endpoint counters (KUBE-SVC-…, KUBE-SVL-…)."""
        for ep in self.endpoints:
            for rule in ep.counter_rules:
                return rule.chain
        return None


@dataclass(slots=True)
class NodeView:
    node: str
    entries: list[Entry] = field(default_factory=list)
    chains: dict[str, str | None] = field(default_factory=dict)  # svc/svl/ext/fw -> name present on this node
    families: set[str] = field(default_factory=lambda: {"IPv4"})  # the address families whose rules were read


@dataclass(slots=True)
class PortView:
    name: str
    protocol: str
    port: int | None
    node_port: int | None
    target_port: int | str | None
    svc_port_name: str
    chains: dict[str, str | None]
    nodes: list[NodeView] = field(default_factory=list)
    api: ServicePort | None = None


@dataclass(slots=True)
class ServiceView:
    namespace: str
    name: str
    ports: list[PortView]
    api_ports: list[ServicePort]  # empty without the API


def _is_source_conditional(rule: Rule) -> bool:
    return any(m.option in SOURCE_OPTIONS for m in rule.matches)


def _has_affinity_check(rule: Rule) -> bool:
    return any(m.module == "recent" and m.option in ("--rcheck", "--update") for m in rule.matches)


def _source_matches_outside_client(rule: Rule) -> bool | None:
    """Would a client outside the cluster (not a pod, not the node) match this rule's source conditions?

    None when it cannot be told (an unknown match).
    """
    for m in rule.matches:
        if m.option == "-s":
            if not m.negated:
                return False  # a pod CIDR, an endpoint (hairpin) or a firewall range: not "any outside client"
        elif m.option == "--src-type":
            is_local = (m.value or "").upper() == "LOCAL"
            if is_local != m.negated:
                return False
        elif m.option == "-i":
            return None
    return True


def _source_condition(rule: Rule) -> str:
    return " ".join(m.text() for m in rule.matches if m.option in SOURCE_OPTIONS)


def _client_class(rule: Rule) -> str:
    """Who a source condition picks, in words: kube-proxy uses the pod CIDR, the node's own addresses and
    localhost (docs/reference/kube-proxy-layout.md §2.9)."""
    for m in rule.matches:
        if m.option == "--src-type" and (m.value or "").upper() == "LOCAL" and not m.negated:
            return "the node itself"
        if m.option == "-s" and not m.negated:
            if (m.value or "").startswith("127."):
                return f"localhost ({m.value})"
            return f"pods ({m.value})"
        if m.option == "-i" and not m.negated:
            return f"pods (interface {m.value})"
    return _source_condition(rule)


def _describe_conditions(rule: Rule) -> str:
    parts = [m.text() for m in rule.matches if m.option not in DESTINATION_OPTIONS and m.module != "statistic"]
    return " ".join(parts) or "always"


class _Walker:
    def __init__(self, rules: NodeRules, outside_client: bool):
        self.nat = rules.table("nat")
        self.outside_client = outside_client
        self.endpoints: list[EndpointShare] = []
        self.masq_when: list[str] = []
        self.notes: list[str] = []
        self.path: list[str] = []
        self.affinity: int | None = None
        self.verdicts: dict[str, float] = {}
        self.fw_followed = False
        self.drop_rule: Rule | None = None  # a DROP/REJECT in nat itself (old kube-proxy's KUBE-MARK-DROP)
        self.clients: list[ClientPath] = []
        self._marked: set[str] = set()  # source conditions already marked for masquerade in this walk

    def walk(self, chain_name: str, mass: float, masq: str, depth: int = 0) -> float:
        """Walk a chain with ``mass`` of the traffic; returns the mass that falls through (not taken)."""
        chain = self.nat.chain(chain_name) if self.nat else None
        if chain is None:
            self.notes.append(f"chain {chain_name} is referenced but is not in this input")
            return mass
        if depth > 16:
            self.notes.append(f"stopped following at {chain_name}: jumps nest too deep (a loop?)")
            return mass
        if chain_kind(chain_name) != "sep" and chain_name not in self.path:
            self.path.append(chain_name)
        remaining = mass
        affinity_rules: dict[str, list[Rule]] = {}
        for rule in chain.rules:
            if remaining <= EPSILON:
                break
            target = rule.target
            if _has_affinity_check(rule):
                # ClientIP affinity: a returning client goes straight to its endpoint; a new one falls through
                affinity_rules.setdefault(target or "", []).append(rule)
                seconds = rule.value("--seconds")
                if seconds and seconds.isdigit():
                    self.affinity = int(seconds)
                continue
            source_cond = _is_source_conditional(rule)
            if source_cond and self.outside_client:
                matched = _source_matches_outside_client(rule)
                if matched is False:
                    self._note_client_class(rule, target, masq)
                    if chain_kind(chain_name) == "fw" and target and chain_kind(target) == "ext":
                        # loadBalancerSourceRanges: follow the path of the clients that are allowed
                        self.notes.append(f"{chain_name}: only clients from {rule.value('-s')} go on to {target}")
                        if not self.fw_followed:
                            self.fw_followed = True
                            left = self.walk(target, remaining, masq, depth + 1)
                            remaining = left
                    continue
                source_cond = matched is None
            if target == "KUBE-MARK-MASQ":
                if not source_cond:
                    masq = "always"
                elif masq != "always":
                    if chain_kind(chain_name) == "sep" and rule.value("-s"):
                        continue  # hairpin: only the endpoint talking to its own service
                    masq = "conditional"
                    self.masq_when.append(f"{chain_name}: {_describe_conditions(rule)}")
                continue
            if source_cond:
                if target and target.startswith("KUBE-"):
                    self.notes.append(f"{chain_name}: traffic matching '{_describe_conditions(rule)}' goes to {target}")
                continue
            if target is None or target in ("MARK", "LOG", "CONNMARK", "NFLOG"):
                continue
            p = rule.probability if rule.value("--mode") == "random" or rule.value("--probability") else None
            share = remaining * p if p is not None else remaining
            if target == "RETURN":
                return remaining
            if target in TERMINAL_VERDICTS:
                if target == "DNAT":
                    self._endpoint(chain_name, rule, share, masq)
                else:
                    self.verdicts[TERMINAL_VERDICTS[target]] = self.verdicts.get(TERMINAL_VERDICTS[target], 0) + share
                    self.drop_rule = self.drop_rule or rule
                remaining -= share
                continue
            if chain_kind(target) == "sep":
                before = len(self.endpoints)
                left = self.walk_sep(target, share, masq, p, rule)
                for ep in self.endpoints[before:]:
                    ep.jump_rules.append(rule)
                    ep.jump_rules.extend(affinity_rules.get(target, ()))
                remaining -= share - left
                continue
            left = self.walk(target, share, masq, depth + 1)
            remaining -= share - left
        return remaining

    def _note_client_class(self, rule: Rule, target: str | None, masq: str) -> None:
        """A rule for clients other than outside ones (pods, the node itself): a path of their own. kube-proxy
        marks such a class for masquerade in the rule just before the one that routes it."""
        condition = _source_condition(rule)
        if target == "KUBE-MARK-MASQ":
            self._marked.add(condition)
        elif target and chain_kind(target) in ("svc", "svl", "ext"):
            self.clients.append(ClientPath(_client_class(rule), condition, target,
                                           condition in self._marked or masq == "always", rule))

    def walk_sep(self, sep: str, share: float, masq: str, rule_probability: float | None,
                 jump: Rule | None = None) -> float:
        chain = self.nat.chain(sep) if self.nat else None
        if chain is None:
            # iptables refuses a jump to a chain that does not exist: the input is partial (a grep, a few chains
            # listed); the jump's comment still names the endpoint ("ns/name:port -> 10.0.0.5:8080")
            spn, what = service_port_of_comment(jump.comment if jump is not None else None)
            if what == "endpoint":
                address = jump.comment.split(" -> ", 1)[1].strip()
                self._endpoint(sep, None, share, masq, rule_probability, address)
                self.notes.append(f"{sep} is not in this input: its endpoint {address} is read from the jump's "
                                  "comment")
                return 0.0
            self.notes.append(f"chain {sep} is referenced but is not in this input")
            return share
        for rule in chain.rules:
            if rule.target == "KUBE-MARK-MASQ":
                if not _is_source_conditional(rule):
                    masq = "always"
                continue  # `-s <endpoint>`: hairpin only
            if rule.target == "DNAT":
                self._endpoint(sep, rule, share, masq, rule_probability)
                return 0.0
        self.notes.append(f"{sep} has no DNAT rule")
        return share

    def _endpoint(self, chain: str, rule: Rule | None, share: float, masq: str,
                  rule_probability: float | None = None, address: str | None = None):
        dest = address if rule is None else (rule.dnat_destination or "")
        ip, _, port = dest.rpartition(":")
        if not ip:
            ip, port = dest, ""
        self.endpoints.append(
            EndpointShare(
                ip=ip.strip("[]"),
                port=int(port) if port.isdigit() else None,
                chain=chain,
                probability=share,
                rule_probability=rule_probability,
                packets=None,
                bytes=None,
                masquerade=masq,
                dnat_rule=rule,
            )
        )


def _host_port(address: str, port: str) -> str:
    """"IP:PORT", with an IPv6 address in brackets as net.JoinHostPort writes it."""
    host = address.split("/")[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _entry_kind_and_destination(rule: Rule, chain: str) -> tuple[str, str]:
    spn, what = service_port_of_comment(rule.comment)
    dport = rule.value("--dport") or ""
    if chain == "KUBE-NODEPORTS":
        d = rule.value("-d")
        return "nodePort", (_host_port(d, dport) if d else f":{dport}")
    dest = _host_port(rule.value("-d") or "", dport)
    if what in ("clusterIP", "externalIP", "loadBalancer"):
        return what, dest
    kind = chain_kind(rule.target or "")
    return ("clusterIP" if kind in ("svc", "svl") else "externalIP"), dest


def _walk_entry(rules: NodeRules, kind: str, destination: str, start: str | None, rule: Rule | None,
                path: list[str]) -> Entry:
    """One entry walked from its first kube-proxy chain: clusterIP for any client, the others for a client
    outside the cluster."""
    walker = _Walker(rules, outside_client=kind != "clusterIP")
    walker.path = list(path)
    masq = _masquerade_ahead(rules, rule, walker) if rule is not None else "never"
    left = walker.walk(start, 1.0, masq)
    entry = Entry(
        kind=kind,
        destination=destination,
        verdict="dnat" if walker.endpoints else "none",
        path=walker.path,
        masquerade="never",
        packets=rule.packets if rule is not None else None,
        bytes=rule.bytes if rule is not None else None,
        endpoints=walker.endpoints,
        entry_rule=rule,
        masquerade_when=walker.masq_when,
        notes=walker.notes,
        session_affinity_seconds=walker.affinity,
        unmatched_share=max(0.0, left),
        clients=walker.clients,
    )
    return settle_entry(entry, walker.endpoints, walker.verdicts, walker.drop_rule)


def settle_entry(entry: Entry, endpoints: list[EndpointShare], verdicts: dict[str, float], drop_rule) -> Entry:
    """An entry's verdict and masquerade once its walk is done, whatever backend was walked (the nftables reader
    uses it too): a drop or reject takes the entry when no endpoint does, and the masquerade is the endpoints'
    own when they agree, else conditional."""
    if verdicts and not endpoints:
        entry.verdict = max(verdicts, key=verdicts.get)
        entry.blackhole_rule = drop_rule
    masqs = {ep.masquerade for ep in endpoints}
    entry.masquerade = masqs.pop() if len(masqs) == 1 else ("conditional" if masqs else "never")
    return entry


def _entries_without_their_rule(rules: NodeRules, chains: list[str]) -> list[Entry]:
    """A partial input's service chains that no entry rule in it jumps to (model/partial.py): explained from the
    chain on, each marked as such. The ClusterIP path starts at KUBE-SVC (or KUBE-SVL under a Local internal
    policy), the external one at KUBE-FW, KUBE-EXT or the old KUBE-XLB; which node port or address leads there
    is in the entry rule, which the input does not have."""
    by_kind = {chain_kind(name): name for name in chains}
    out = []
    cluster = by_kind.get("svc") or (by_kind.get("svl") if "ext" not in by_kind else None)
    if cluster is not None:
        entry = _walk_entry(rules, "clusterIP", _cluster_destination(rules, cluster), cluster, None, [])
        entry.notes.insert(0, f"the entry rule (KUBE-SERVICES → {cluster}) is not in this input")
        out.append(entry)
    external = by_kind.get("fw") or by_kind.get("ext") or by_kind.get("xlb")
    if external is not None:
        entry = _walk_entry(rules, "external", "?", external, None, [])
        entry.notes.insert(0, f"the entry rule to {external} (a node port, external or load-balancer IP) is not in "
                              "this input")
        out.append(entry)
    return out


def _cluster_destination(rules: NodeRules, chain: str) -> str:
    """The cluster IP and port, from the masquerade rule kube-proxy writes first in KUBE-SVC (since 1.24)."""
    found = rules.chain("nat", chain)
    for rule in found.rules if found is not None else ():
        if rule.value("-d") and rule.value("--dport"):
            return _host_port(rule.value("-d"), rule.value("--dport"))
    return "?"


def _masquerade_ahead(rules: NodeRules, entry_rule: Rule, walker: _Walker) -> str:
    """Masquerading decided before the jump to the service's chains, in the entry chain itself: kube-proxy before
    1.24 wrote the ClusterIP masquerade rule into KUBE-SERVICES (`! -s POD_CIDR -d IP --dport P -j KUBE-MARK-MASQ`)
    and the localhost NodePort one into KUBE-NODEPORTS (`-s 127.0.0.0/8 … -j KUBE-MARK-MASQ`), each just ahead of
    the jump (docs/reference/kube-proxy-layout.md §2.12). Returns the masquerade the walk starts with."""
    chain = rules.chain("nat", entry_rule.chain)
    if chain is None:
        return "never"
    wanted = {m.option: m.value for m in entry_rule.matches if m.option in ("-d", "--dport", "-p")}
    masq = "never"
    for rule in chain.rules[: max(0, entry_rule.position - 1)]:
        if rule.target != "KUBE-MARK-MASQ":
            continue
        if {m.option: m.value for m in rule.matches if m.option in ("-d", "--dport", "-p")} != wanted:
            continue
        if not _is_source_conditional(rule):
            return "always"
        if walker.outside_client:
            walker._marked.add(_source_condition(rule))
            walker.clients.append(ClientPath(_client_class(rule), _source_condition(rule), entry_rule.target or "",
                                             True, rule))
            continue
        masq = "conditional"
        walker.masq_when.append(f"{entry_rule.chain}: {_describe_conditions(rule)}")
    return masq


def _blackhole_kind_and_destination(rule: Rule) -> tuple[str, str]:
    dport = rule.value("--dport") or ""
    dst_type = rule.value("--dst-type")
    if dst_type and dst_type.upper() == "LOCAL" and not rule.value("-d"):
        return "nodePort", f":{dport}"
    dest = _host_port(rule.value("-d") or "", dport)
    return ("clusterIP" if rule.chain == "KUBE-SERVICES" else "externalIP"), dest


def _host_of(destination: str) -> str:
    return destination.rpartition(":")[0].strip("[]")


def _sum(values):
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def explain_entries(
    rules: NodeRules,
    port_rules: ServicePortRules,
    node: str,
    cluster: ClusterModel | None = None,
    api_port: ServicePort | None = None,
) -> list[Entry]:
    entries: list[Entry] = []
    by_destination: dict[tuple[str, str], Entry] = {}
    lb_ips = set(api_port.load_balancer_ips) if api_port else set()
    for rule in port_rules.nat_entries:
        if rule.chain == "KUBE-NODEPORTS" and (rule.value("-d") or "").startswith("127."):
            continue  # 1.31's localhost NodePort rule: the same service path, counted through nfacct
        kind, destination = _entry_kind_and_destination(rule, rule.chain)
        if kind == "externalIP" and _host_of(destination) in lb_ips:
            kind = "loadBalancer"
        entry = _walk_entry(rules, kind, destination, rule.target, rule,
                            ["KUBE-SERVICES"] + (["KUBE-NODEPORTS"] if rule.chain == "KUBE-NODEPORTS" else []))
        entries.append(entry)
        by_destination[(kind, destination)] = entry
    if not port_rules.nat_entries:
        entries.extend(_entries_without_their_rule(rules, port_rules.chains_without_entry))
    for rule in port_rules.filter_rules:
        if rule.target == "ACCEPT":
            continue  # health check node port
        kind, destination = _blackhole_kind_and_destination(rule)
        if kind == "externalIP" and _host_of(destination) in lb_ips:
            kind = "loadBalancer"
        entry = by_destination.get((kind, destination))
        if entry is None and kind == "externalIP":
            entry = by_destination.get(("loadBalancer", destination))
        verdict = "drop" if rule.target == "DROP" else "reject"
        _, what = service_port_of_comment(rule.comment)
        if entry is None:
            entry = Entry(
                kind=kind,
                destination=destination,
                verdict=verdict,
                path=[rule.chain] if rule.chain != "KUBE-SERVICES" else ["KUBE-SERVICES"],
                masquerade="never",
                packets=rule.packets,
                bytes=rule.bytes,
                entry_rule=rule,
                blackhole_rule=rule,
                unmatched_share=1.0,
            )
            entry.notes.append(f"filter {rule.chain}: {rule.comment} -> {rule.target}")
            entries.append(entry)
            by_destination[(kind, destination)] = entry
        else:
            entry.blackhole_rule = rule
            if what == "firewall-drop":
                entry.notes.append(f"clients outside the allowed source ranges are dropped by filter {rule.chain}")
            elif entry.unmatched_share > EPSILON:
                entry.verdict = verdict if not entry.endpoints else entry.verdict
                entry.notes.append(f"traffic not DNATed here is {verdict}ped by filter {rule.chain}: {rule.comment}")
    _attach_counters_and_pods(entries, rules, node, cluster, api_port)
    order = {"clusterIP": 0, "nodePort": 1, "externalIP": 2, "loadBalancer": 3}
    entries.sort(key=lambda e: (order.get(e.kind, 9), e.destination))
    _mark_shared_counters(entries)
    return entries


def _mark_shared_counters(entries: list[Entry]) -> None:
    """Say which endpoint counters several entries show. The per-endpoint counters are the jumps in KUBE-SVC (or
    KUBE-SVL), which the ClusterIP rule and KUBE-EXT both jump to (docs/reference/kube-proxy-layout.md §2.4): the
    ClusterIP entry shows the node port's connections too. Each endpoint is counted in the first entry (in the
    order shown) that has its rules; later entries name it shared."""
    seen: set[int] = set()  # id() of the counter rules already shown by an earlier entry
    for entry in entries:
        for ep in entry.endpoints:
            mine = {id(r) for r in ep.counter_rules}
            ep.counters_shared_with = [
                other.label for other in entries if other is not entry
                and any(id(r) in mine for o in other.endpoints for r in o.counter_rules)]
            ep.counters_counted_here = not (mine & seen)
            seen |= mine


def _attach_counters_and_pods(entries: list[Entry], rules: NodeRules, node: str, cluster: ClusterModel | None,
                              api_port: ServicePort | None = None):
    api_endpoints = {e.ip: e for e in api_port.endpoints} if api_port is not None else {}
    for entry in entries:
        for ep in entry.endpoints:
            ep.packets = _sum(r.packets for r in ep.jump_rules) if ep.jump_rules else (
                ep.dnat_rule.packets if ep.dnat_rule else None)
            ep.bytes = _sum(r.bytes for r in ep.jump_rules) if ep.jump_rules else (
                ep.dnat_rule.bytes if ep.dnat_rule else None)
            rule_p = [r.probability for r in ep.jump_rules if r.probability is not None and not _has_affinity_check(r)]
            ep.rule_probability = rule_p[0] if rule_p else None
            if cluster is not None:
                known = api_endpoints.get(ep.ip)
                # the EndpointSlice's targetRef and nodeName say it first; pod IPs are the fallback
                ep.pod = (known.pod if known else None) or cluster.pods_by_ip.get(ep.ip)
                ep.node = (known.node if known else None) or cluster.pod_nodes.get(ep.ip)
                # an endpoint the EndpointSlice lists without nodeName is not local (kube-proxy's reading)
                ep.local = (ep.node == node) if (ep.node or known) else None


def _node_chains(rules: NodeRules, suffix: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {"svc": None, "svl": None, "ext": None, "fw": None}
    if not suffix:
        return out
    nat = rules.table("nat")
    for key, prefix in (("svc", "KUBE-SVC-"), ("svl", "KUBE-SVL-"), ("ext", "KUBE-EXT-"), ("fw", "KUBE-FW-")):
        name = prefix + suffix
        if nat is not None and name in nat.chains:
            out[key] = name
    return out


def build_service_view(
    namespace: str,
    name: str,
    node_rules: dict[str, NodeRules],
    cluster: ClusterModel | None,
    port_filter: str | None = None,
    indexes: dict[str, NodeServiceIndex] | None = None,
) -> ServiceView:
    """Everything `explain` shows for one service, on every node given."""
    api_ports = [sp for sp in (cluster.service_ports if cluster else []) if sp.namespace == namespace and sp.name == name]
    suffixes = frozenset(service_hash(sp.svc_port_name, sp.protocol) for sp in api_ports)
    if indexes is None:
        indexes = {n: index_node_services(r, f"{namespace}/{name}", suffixes) for n, r in node_rules.items()}
    # service ports: from the API, else from what the nodes' comments name
    ports: dict[str, PortView] = {}
    for sp in api_ports:
        suffix = service_hash(sp.svc_port_name, sp.protocol)
        ports[suffix] = PortView(
            name=sp.port_name, protocol=sp.protocol, port=sp.port, node_port=sp.node_port,
            target_port=sp.target_port, svc_port_name=sp.svc_port_name,
            chains={"svc": None, "svl": None, "ext": None, "fw": None}, api=sp,
        )
    for node, index in indexes.items():
        for spr in list(index.ports_of_service(namespace, name)) + [
            index.by_suffix[s] for s in suffixes if s in index.by_suffix
        ]:
            if spr.suffix in ports or not spr.svc_port_name:
                continue
            _, _, port_name = split_service_port_name(spr.svc_port_name)
            port, node_port = _ports_from_rules(spr)
            ports[spr.suffix or spr.svc_port_name] = PortView(
                name=port_name, protocol=(spr.protocol or "tcp").upper(), port=port, node_port=node_port,
                target_port=None, svc_port_name=spr.svc_port_name,
                chains={"svc": None, "svl": None, "ext": None, "fw": None},
            )
    views = list(ports.values())
    if port_filter:
        # a port name, its number, or its node port (`explain web --port 32624`)
        views = [p for p in views if port_filter in (p.name, str(p.port), str(p.node_port))]
    for pv in views:
        suffix = service_hash(pv.svc_port_name, pv.protocol)
        for node, rules in node_rules.items():
            index = indexes[node]
            spr = index.by_suffix.get(suffix)
            nv = NodeView(node=node, chains=_node_chains(rules, suffix))
            if spr is not None:
                nv.entries = explain_entries(rules, spr, node, cluster, pv.api)
            for key, chain in nv.chains.items():
                if chain and not pv.chains[key]:
                    pv.chains[key] = chain
            pv.nodes.append(nv)
            if pv.node_port is None:
                for e in nv.entries:
                    if e.kind == "nodePort":
                        pv.node_port = int(e.destination.rsplit(":", 1)[1] or 0) or None
    return ServiceView(namespace, name, views, api_ports)


def merge_family(view: ServiceView, other: ServiceView, family: str) -> ServiceView:
    """Add another address family's view of the same service (ip6tables beside iptables) into ``view``.

    kube-proxy gives both families' chains the same names (the IP family is not hashed, docs/reference/kube-proxy-layout.md §1.1), so a port
    and a node are the same in both; only the entries (destinations, endpoints) differ."""
    ports = {(p.svc_port_name, p.protocol): p for p in view.ports}
    for pv in other.ports:
        target = ports.get((pv.svc_port_name, pv.protocol))
        if target is None:
            if not any(nv.entries for nv in pv.nodes):
                continue
            target = PortView(pv.name, pv.protocol, pv.port, pv.node_port, pv.target_port, pv.svc_port_name,
                              dict(pv.chains), [], pv.api)
            view.ports.append(target)
            ports[(pv.svc_port_name, pv.protocol)] = target
        nodes = {nv.node: nv for nv in target.nodes}
        for nv in pv.nodes:
            for e in nv.entries:
                e.family = family
            mine = nodes.get(nv.node)
            if mine is None:
                mine = NodeView(nv.node, [], dict(nv.chains), set())
                target.nodes.append(mine)
                nodes[nv.node] = mine
            mine.families.add(family)
            mine.entries.extend(nv.entries)
            for key, chain in nv.chains.items():
                mine.chains[key] = mine.chains.get(key) or chain
                target.chains[key] = target.chains.get(key) or chain
        if target.node_port is None:
            target.node_port = pv.node_port
    return view


def _ports_from_rules(spr: ServicePortRules) -> tuple[int | None, int | None]:
    port = node_port = None
    for rule in spr.nat_entries + spr.filter_rules:
        dport = rule.value("--dport")
        if not dport or not dport.isdigit():
            continue
        if rule.chain == "KUBE-NODEPORTS" or (rule.value("--dst-type") and not rule.value("-d")):
            node_port = node_port or int(dport)
        else:
            port = port or int(dport)
    return port, node_port


def expected_endpoint_chain(sp: ServicePort, ip: str, port: int) -> str:
    return endpoint_chain(sp.svc_port_name, sp.protocol, f"{ip}:{port}")


def known_services(node_rules: dict[str, NodeRules], cluster: ClusterModel | None,
                   more_rules: dict[str, NodeRules] | None = None) -> set[str]:
    names = set()
    if cluster is not None:
        names.update(sp.service_key for sp in cluster.service_ports)
    for rules in list(node_rules.values()) + list((more_rules or {}).values()):
        names.update(index_node_services(rules).service_names())
    return names


__all__ = [
    "Entry",
    "EndpointShare",
    "NodeView",
    "PortView",
    "ServiceView",
    "build_service_view",
    "chain_suffix",
    "known_services",
]
