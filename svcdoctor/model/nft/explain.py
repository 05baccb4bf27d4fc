"""`explain` on a node in nftables mode: each entry of a service port (cluster IP, node port, external and
load-balancer IPs) walked from kube-proxy's dispatch maps into the service's chains, as the same Entry and
EndpointShare objects the iptables walk (model/explain.py) makes, so the views and the JSON show both alike.

Where kube-proxy's nftables rules differ from its iptables ones (docs/explanation/kube-proxy-nftables.md):

* Entries are map elements, not rules: `service-ips` (`ip . proto . port : goto …`) and `service-nodeports`
  (`proto . port : goto …`); an entry without endpoints is an element of `no-endpoint-services` /
  `no-endpoint-nodeports` (`drop`, or `goto reject-chain`), looked up in filter chains.
* The split is `numgen random mod N vmap { 0 : goto endpoint-…, … }` (up to 1.35) or, from 1.36, a DNAT through
  `numgen random mod N map { 0 : IP . PORT, … }` in the service chain: each element is exactly 1/N.
* Masquerading: a jump to `mark-for-masquerade` (up to 1.35) or `meta mark set meta mark | 0x4000` inline (1.36;
  the cluster-IP one in the `services` chain, for every cluster IP at once).
* Session affinity: `ip saddr @affinity-… goto endpoint-…` before the split; the set's timeout is the affinity's.
* LoadBalancerSourceRanges: the `firewall-ips` map sends an LB IP to a `firewall-…` chain in a filter chain that runs
  before DNAT (v1.29: the `firewall-…` chain is on the path itself).

Nothing is counted: nftables keeps no counters on kube-proxy's rules, so packets and bytes stay None.
"""

from __future__ import annotations

from dataclasses import dataclass

from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.explain import ClientPath, EndpointShare, Entry, settle_entry
from svcdoctor.model.nft.names import HashedName, parse_name
from svcdoctor.model.nft.ruleset import Dnat, Element, MarkSet, Match, NftRuleset, Rule, Verdict, VMap

MASQUERADE_MARK = 0x4000
MASQ_CHAIN = "mark-for-masquerade"
CHAIN_KEYS = {"service": "svc", "local": "svl", "external": "ext", "firewall": "fw"}
SOURCE_KEYS = ("ip saddr", "ip6 saddr", "fib saddr type", "meta iifname", "iifname", "meta iif")
EPSILON = 1e-9


@dataclass(slots=True)
class MapEvidence:
    """A map element shown where the views show an iptables rule (duck-typed like Rule: .text, .table, .chain,
    .comment, .target, .packets, .bytes)."""

    table: str
    chain: str  # "map service-ips": where the element is
    text: str
    comment: str | None
    target: str | None
    packets: int | None = None
    bytes: int | None = None


def _evidence(rs: NftRuleset, map_name: str, element: Element) -> MapEvidence:
    value = element.value
    target = None
    if isinstance(value, Verdict):
        target = "REJECT" if value.target == "reject-chain" else (value.target or value.kind.upper())
    return MapEvidence(rs.table, f"map {map_name}", f"element {rs.table} {map_name} {{ {element.text()} }}",
                       element.comment, target)


def _host_port(ip: str, port) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _is_masquerade(rule: Rule) -> bool:
    for s in rule.statements:
        if isinstance(s, Verdict) and s.kind in ("jump", "goto") and s.target == MASQ_CHAIN:
            return True
        if isinstance(s, MarkSet) and s.op in ("|", "=") and s.value & MASQUERADE_MARK:
            return True
    return False


def _source_matches(rule: Rule) -> list[Match]:
    return [s for s in rule.statements if isinstance(s, Match) and any(k in SOURCE_KEYS for k in s.key)]


def _outside_client_matches(rule: Rule) -> bool | None:
    """Would a client outside the cluster (not a pod, not the node) match the rule's source conditions?"""
    for m in _source_matches(rule):
        if m.key in (("ip saddr",), ("ip6 saddr",)):
            if isinstance(m.value, str) and m.value.startswith("@affinity-"):
                return False  # a returning client: the walk is that of a new one
            if m.op == "==":
                return False  # a pod CIDR, the endpoint itself (hairpin), an allowed source range
        elif m.key == ("fib saddr type",):
            if (m.value == "local") == (m.op == "=="):
                return False
        else:
            return None
    return True


def _condition_text(rule: Rule) -> str:
    return " ".join(m.text() for m in _source_matches(rule)) or "always"


def _masquerade_condition(rule: Rule) -> str:
    """A masquerade rule's source condition in the words the explain view turns into English (it reads
    iptables' `-s`, `! -s`, `--src-type LOCAL`)."""
    parts = []
    for m in _source_matches(rule):
        if m.key[0].endswith("saddr") and not m.key[0].startswith("fib"):
            parts.append(f"{'! ' if m.op == '!=' else ''}-s {m.value}")
        elif m.key == ("fib saddr type",) and m.value == "local":
            parts.append(f"{'! ' if m.op == '!=' else ''}--src-type LOCAL")
        else:
            parts.append(m.text())
    return " ".join(parts) or "always"


def _client_class(rule: Rule) -> str:
    for m in _source_matches(rule):
        if m.key == ("fib saddr type",) and m.value == "local" and m.op == "==":
            return "the node itself"
        if m.key[0].endswith("saddr") and m.op == "==":
            return f"pods ({m.value})"
    return _condition_text(rule)


class _Walker:
    def __init__(self, rs: NftRuleset, outside_client: bool):
        self.rs = rs
        self.outside_client = outside_client
        self.endpoints: list[EndpointShare] = []
        self.masq_when: list[str] = []
        self.notes: list[str] = []
        self.path: list[str] = []
        self.affinity: int | None = None
        self.pinned: list[tuple[str, str, int | None]] = []
        self.verdicts: dict[str, float] = {}
        self.drop_rule: Rule | None = None
        self.clients: list[ClientPath] = []
        self._marked: set[str] = set()

    def walk(self, name: str, mass: float, masq: str, depth: int = 0, via: Rule | None = None) -> float:
        """Walk a chain with ``mass`` of the traffic; returns what falls through it untaken."""
        chain = self.rs.chain(name)
        if chain is None:
            self.notes.append(f"chain {name} is referenced but is not in this input")
            return mass
        if depth > 16:
            self.notes.append(f"stopped following at {name}: jumps nest too deep (a loop?)")
            return mass
        hashed = parse_name(name)
        if hashed is not None and hashed.kind == "endpoint":
            return self.walk_endpoint(name, mass, masq, via)
        if name not in self.path:
            self.path.append(name)
        remaining = mass
        for rule in chain.rules:
            if remaining <= EPSILON:
                break
            remaining = self.rule(rule, name, remaining, masq, depth)
            if isinstance(remaining, tuple):  # the rule changed the masquerade state for what follows
                remaining, masq = remaining
        return remaining

    def rule(self, rule: Rule, chain: str, remaining: float, masq: str, depth: int):
        if any(isinstance(s, Match) and isinstance(s.value, str) and s.value.startswith("@affinity-")
               for s in rule.statements):
            self._affinity(rule)  # a returning client goes straight to its endpoint; the walk is a new client's
            return remaining
        conditional = bool(_source_matches(rule))
        if conditional and _kind(chain) == "firewall":
            return self.firewall_rule(rule, chain, remaining, masq, depth)
        if conditional and self.outside_client:
            matched = _outside_client_matches(rule)
            if matched is False:
                self._note_client_class(rule, masq, chain, remaining, depth)
                return remaining
            conditional = matched is None
        if _is_masquerade(rule):
            if not conditional:
                masq = "always"
            elif masq != "always" and not self._is_hairpin(rule):
                masq = "conditional"
                self.masq_when.append(f"{chain}: {_masquerade_condition(rule)}")
            return remaining, masq
        if conditional:
            verdict = rule.verdict
            if verdict is not None and verdict.target:
                self.notes.append(f"{chain}: traffic matching '{_condition_text(rule)}' goes to {verdict.target}")
            return remaining
        for s in rule.statements:
            if isinstance(s, VMap) and s.key and s.key[0].startswith("numgen ") and s.elements:
                self.split(s, rule, remaining, masq, depth)
                return 0.0
            if isinstance(s, Dnat):
                self.dnat(s, rule, remaining, masq)
                return 0.0
            if isinstance(s, Verdict):
                if s.kind in ("jump", "goto") and s.target:
                    left = self.walk(s.target, remaining, masq, depth + 1, rule)
                    if s.kind == "goto":
                        return 0.0 if left <= EPSILON else left  # what a goto'd chain lets through ends here
                    return left
                if s.kind in ("drop", "reject"):
                    self.verdicts[s.kind] = self.verdicts.get(s.kind, 0.0) + remaining
                    self.drop_rule = self.drop_rule or rule
                    return 0.0
                if s.kind == "return":
                    return remaining
        return remaining

    def firewall_rule(self, rule: Rule, chain: str, remaining: float, masq: str, depth: int) -> float:
        """loadBalancerSourceRanges on the path (v1.29: `ip saddr { RANGES } goto external-…`; later the chain is
        reached from a filter chain and holds `ip saddr != RANGES drop`): follow the clients that are allowed."""
        verdict = rule.verdict
        condition = _condition_text(rule)
        if verdict is not None and verdict.kind in ("jump", "goto") and verdict.target:
            self.notes.append(f"{chain}: only clients with {condition} go on to {verdict.target}")
            return self.walk(verdict.target, remaining, masq, depth + 1, rule)
        if verdict is not None and verdict.kind in ("drop", "reject"):
            self.notes.append(f"{chain}: clients with {condition} are {verdict.kind}ped (loadBalancerSourceRanges)")
        return remaining

    def _is_hairpin(self, rule: Rule) -> bool:
        """`ip saddr <endpoint> jump mark-for-masquerade` in an endpoint chain: only the endpoint calling its own
        service."""
        hashed = parse_name(rule.chain)
        return hashed is not None and hashed.kind == "endpoint"

    def _affinity(self, rule: Rule) -> None:
        for s in rule.statements:
            if isinstance(s, Match) and isinstance(s.value, str) and s.value.startswith("@affinity-"):
                nset = self.rs.set(s.value)
                if nset is not None and nset.timeout:
                    self.affinity = nset.timeout
                if nset is not None:
                    # the set's elements are the clients pinned to the endpoint this rule goes to, with the time
                    # they have left: kube-proxy's session affinity as it stands now
                    endpoint = _endpoint_of_chain(rule.verdict.target if rule.verdict else None)
                    for element in nset.elements:
                        self.pinned.append((str(element.key), endpoint, element.expires))

    def _note_client_class(self, rule: Rule, masq: str, chain: str, remaining: float, depth: int) -> None:
        condition = _condition_text(rule)
        verdict = rule.verdict
        if _is_masquerade(rule):
            self._marked.add(condition)
        elif verdict is not None and verdict.target and parse_name(verdict.target) is not None:
            self.clients.append(ClientPath(_client_class(rule), condition, verdict.target,
                                           condition in self._marked or masq == "always", rule))

    def split(self, vmap: VMap, rule: Rule, mass: float, masq: str, depth: int) -> None:
        """`numgen random mod N vmap { i : goto endpoint-… }`: each index 1/N of the connections."""
        mod = _modulus(vmap.key[0]) or len(vmap.elements or ()) or 1
        if vmap.elements and len(vmap.elements) != mod:
            self.notes.append(f"{rule.chain}: the split has {len(vmap.elements)} branches for mod {mod}: "
                              f"{mod - len(vmap.elements)}/{mod} of new connections match no branch")
        for _, verdict in vmap.elements or ():
            if verdict.target:
                before = len(self.endpoints)
                self.walk(verdict.target, mass / mod, masq, depth + 1, rule)
                for ep in self.endpoints[before:]:
                    ep.jump_rules.insert(0, rule)
                    ep.rule_probability = 1.0 / mod  # an index of the split: exactly 1/N, not "of the rest"

    def walk_endpoint(self, name: str, share: float, masq: str, via: Rule | None) -> float:
        chain = self.rs.chain(name)
        for rule in chain.rules if chain is not None else ():
            if _is_masquerade(rule):
                if not _source_matches(rule):
                    masq = "always"
                continue  # `ip saddr <endpoint>`: hairpin only
            for s in rule.statements:
                if isinstance(s, Dnat) and s.elements is None:
                    self._endpoint(name, rule, s.address or "", s.port, share, masq)
                    if via is not None:
                        self.endpoints[-1].jump_rules.append(via)
                    return 0.0
        self.notes.append(f"{name} has no DNAT rule")
        return share

    def dnat(self, s: Dnat, rule: Rule, mass: float, masq: str) -> None:
        if s.elements is None:
            self._endpoint(rule.chain, rule, s.address or "", s.port, mass, masq)
            return
        mod = _modulus(" ".join(s.key or ())) or len(s.elements) or 1
        for _, (ip, port) in s.elements:
            self._endpoint(rule.chain, rule, ip, port, mass / mod, masq)
            self.endpoints[-1].rule_probability = 1.0 / mod

    def _endpoint(self, chain: str, rule: Rule, ip: str, port: int | None, share: float, masq: str) -> None:
        self.endpoints.append(EndpointShare(ip=ip, port=port, chain=chain, probability=share, rule_probability=None,
                                            packets=None, bytes=None, masquerade=masq, dnat_rule=rule))


def _endpoint_of_chain(chain: str | None) -> str:
    """`endpoint-H-ns/name/tcp/p80__10.180.0.1/80` -> "10.180.0.1:80" (kube-proxy names the endpoint in the chain)."""
    if not chain or "__" not in chain:
        return chain or "?"
    ip, _, port = chain.rsplit("__", 1)[1].rpartition("/")
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _kind(name: str) -> str | None:
    hashed = parse_name(name)
    return hashed.kind if hashed is not None else None


def _modulus(key: str) -> int | None:
    words = key.split()
    if "mod" in words:
        at = words.index("mod") + 1
        if at < len(words) and words[at].isdigit():
            return int(words[at])
    return None


# --- the service port's entries -------------------------------------------------------------------------------
def port_chains(rs: NftRuleset) -> dict[str, dict[str, str]]:
    """Each service port's chains on the node, by port base ("ns/name/proto/port"): {"svc": name, "ext": …}."""
    out: dict[str, dict[str, str]] = {}
    for name in rs.chains:
        hashed = parse_name(name)
        if hashed is not None and hashed.kind in CHAIN_KEYS:
            out.setdefault(hashed.port_base, {})[CHAIN_KEYS[hashed.kind]] = name
    return out


def port_of_target(target: str | None) -> HashedName | None:
    hashed = parse_name(target or "")
    return hashed if hashed is not None and hashed.kind in CHAIN_KEYS else None


def _masquerade_ahead(rs: NftRuleset, destination_ip: str, walker: _Walker) -> str:
    """1.36 marks every cluster IP's traffic from outside the pod network in the `services` chain itself, before the
    dispatch: `ip daddr @cluster-ips ip saddr != 10.0.0.0/8 meta mark set meta mark | 0x4000`."""
    chain = rs.chain("services")
    masq = "never"
    for rule in chain.rules if chain is not None else ():
        if not _is_masquerade(rule):
            continue
        if not _destination_matches(rs, rule, destination_ip):
            continue
        if not _source_matches(rule):
            return "always"
        if walker.outside_client:
            if _outside_client_matches(rule):
                return "always"
            continue
        masq = "conditional"
        walker.masq_when.append(f"services: {_masquerade_condition(rule)}")
    return masq


def _destination_matches(rs: NftRuleset, rule: Rule, ip: str) -> bool:
    from svcdoctor.model.nft.values import value_matches

    for s in rule.statements:
        if isinstance(s, Match) and s.key in (("ip daddr",), ("ip6 daddr",)):
            if isinstance(s.value, str) and s.value.startswith("@"):
                nset = rs.set(s.value)
                hit = nset is not None and nset.lookup(ip) is not None
            else:
                hit = value_matches(ip, s.value)
            if hit != (s.op == "=="):
                return False
    return True


def _walk_entry(rs: NftRuleset, kind: str, destination: str, start: str, evidence: MapEvidence,
                head: list[str]) -> Entry:
    walker = _Walker(rs, outside_client=kind != "clusterIP")
    walker.path = list(head)
    masq = _masquerade_ahead(rs, destination.rpartition(":")[0].strip("[]"), walker) if kind != "nodePort" else "never"
    left = walker.walk(start, 1.0, masq)
    entry = Entry(kind=kind, destination=destination, verdict="dnat" if walker.endpoints else "none",
                  path=walker.path, masquerade="never", packets=None, bytes=None, endpoints=walker.endpoints,
                  entry_rule=evidence, masquerade_when=walker.masq_when, notes=walker.notes,
                  session_affinity_seconds=walker.affinity, unmatched_share=max(0.0, left), clients=walker.clients,
                  pinned=walker.pinned,
                  family=rs.address_family)
    return settle_entry(entry, walker.endpoints, walker.verdicts, walker.drop_rule)


def _ip_kind(rs: NftRuleset, ip: str, target: HashedName, lb_ips: set[str]) -> str:
    cluster_ips = rs.set("cluster-ips")
    if cluster_ips is not None:
        if cluster_ips.lookup(ip) is not None:
            return "clusterIP"
    elif target.kind in ("service", "local") and ip not in lb_ips:
        return "clusterIP"
    if ip in lb_ips:
        return "loadBalancer"
    for name in ("firewall-ips", "firewall"):
        fw = rs.set(name)
        if fw is not None and any(isinstance(e.key, tuple) and e.key and e.key[0] == ip for e in fw.elements):
            return "loadBalancer"
    return "clusterIP" if cluster_ips is None and target.kind in ("service", "local") else "externalIP"


def explain_nft_entries(rs: NftRuleset, port_base: str, node: str, cluster: ClusterModel | None = None,
                        api_port: ServicePort | None = None) -> list[Entry]:
    """Every entry of one service port (its base "ns/name/proto/port") on one node's table."""
    entries: list[Entry] = []
    by_destination: dict[tuple[str, str], Entry] = {}
    lb_ips = set(api_port.load_balancer_ips) if api_port else set()
    head = ["services"]
    dispatch, _ = dispatch_index(rs)
    for map_name, element, target in dispatch.get(port_base, ()):
        is_nodeport = map_name == "service-nodeports"
        key = element.key if isinstance(element.key, tuple) else (element.key,)
        if is_nodeport:
            kind, destination = "nodePort", f":{key[-1]}"
        else:
            kind = _ip_kind(rs, str(key[0]), target, lb_ips)
            destination = _host_port(str(key[0]), key[-1])
        entry = _walk_entry(rs, kind, destination, element.value.target, _evidence(rs, map_name, element),
                            head + [f"@{map_name}"])
        _firewall_note(rs, entry, key)
        entries.append(entry)
        by_destination[(kind, destination)] = entry
    _no_endpoint_entries(rs, port_base, entries, by_destination, lb_ips)
    _attach_pods(entries, node, cluster, api_port)
    order = {"clusterIP": 0, "nodePort": 1, "externalIP": 2, "loadBalancer": 3}
    entries.sort(key=lambda e: (order.get(e.kind, 9), e.destination))
    return entries


def dispatch_index(rs: NftRuleset) -> tuple[dict[str, list], dict[str, list]]:
    """The dispatch maps' elements by service port, worked out once per table: (port base -> [(map, element, its
    target's name)] of `service-ips` then `service-nodeports`; "ns/name:port" -> [(map, element)] of the
    no-endpoint maps), so that explaining every service (`services`, `report`) reads each map once, not once per
    service."""
    index = rs.cache.get("dispatch")
    if index is None:
        by_base: dict[str, list] = {}
        by_comment: dict[str, list] = {}
        for map_name in ("service-ips", "service-nodeports"):
            vmap = rs.set(map_name)
            for element in vmap.elements if vmap is not None else ():
                target = port_of_target(element.value.target if isinstance(element.value, Verdict) else None)
                if target is not None:
                    by_base.setdefault(target.port_base, []).append((map_name, element, target))
        for map_name in ("no-endpoint-services", "no-endpoint-nodeports"):
            vmap = rs.set(map_name)
            for element in vmap.elements if vmap is not None else ():
                if element.comment:
                    by_comment.setdefault(element.comment, []).append((map_name, element))
        index = rs.cache["dispatch"] = (by_base, by_comment)
    return index


def _firewall_note(rs: NftRuleset, entry: Entry, key: tuple) -> None:
    """LoadBalancerSourceRanges checked before DNAT: the `firewall-ips` element sends the LB IP to its firewall
    chain, which drops the sources outside the ranges."""
    fw = rs.set("firewall-ips")
    element = fw.lookup(key) if fw is not None and len(key) == 3 else None
    if element is None or not isinstance(element.value, Verdict):
        return
    chain = rs.chain(element.value.target or "")
    ranges = [m.text() for r in (chain.rules if chain else ()) for m in _source_matches(r)]
    entry.notes.append(f"clients are checked by {element.value.target} before DNAT (firewall-ips)"
                       + (f": dropped when {'; '.join(ranges)}" if ranges else ""))


def _no_endpoint_entries(rs: NftRuleset, port_base: str, entries: list[Entry],
                         by_destination: dict[tuple[str, str], Entry], lb_ips: set[str]) -> None:
    """`no-endpoint-services` / `no-endpoint-nodeports`: elements name their port in a comment ("ns/name:port");
    the filter chains drop or reject what reaches them undnatted."""
    hashed = parse_name("service-AAAAAAAA-" + port_base)
    if hashed is None:
        return
    _, no_endpoints = dispatch_index(rs)
    for map_name, element in no_endpoints.get(hashed.svc_port_name, ()):
        is_nodeport = map_name == "no-endpoint-nodeports"
        if not _protocol_is(element.key, hashed.protocol):
            continue
        key = element.key if isinstance(element.key, tuple) else (element.key,)
        verdict = "reject" if isinstance(element.value, Verdict) and (
            element.value.kind == "reject" or element.value.target == "reject-chain") else "drop"
        if is_nodeport:
            kind, destination = "nodePort", f":{key[-1]}"
        else:
            kind = _ip_kind(rs, str(key[0]), hashed, lb_ips)
            destination = _host_port(str(key[0]), key[-1])
        evidence = _evidence(rs, map_name, element)
        entry = by_destination.get((kind, destination)) or next(
            (e for (_, d), e in by_destination.items() if d == destination), None)
        if entry is None:
            entry = Entry(kind=kind, destination=destination, verdict=verdict, path=[f"@{map_name}"],
                          masquerade="never", packets=None, bytes=None, entry_rule=evidence,
                          blackhole_rule=evidence, unmatched_share=1.0, family=rs.address_family)
            entry.notes.append(f"{map_name}: {element.comment} -> {verdict}")
            entries.append(entry)
            by_destination[(kind, destination)] = entry
        else:
            entry.blackhole_rule = evidence
            if entry.unmatched_share > EPSILON:
                entry.verdict = verdict if not entry.endpoints else entry.verdict
                entry.notes.append(f"traffic not DNATed here is {verdict}ped by {map_name}: {element.comment}")


def _protocol_is(key, protocol: str) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(p == protocol for p in parts if isinstance(p, str))


def _attach_pods(entries: list[Entry], node: str, cluster: ClusterModel | None, api_port: ServicePort | None) -> None:
    if cluster is None:
        return
    api_endpoints = {e.ip: e for e in api_port.endpoints} if api_port is not None else {}
    for entry in entries:
        for ep in entry.endpoints:
            known = api_endpoints.get(ep.ip)
            ep.pod = (known.pod if known else None) or cluster.pods_by_ip.get(ep.ip)
            ep.node = (known.node if known else None) or cluster.pod_nodes.get(ep.ip)
            ep.local = (ep.node == node) if (ep.node or known) else None
