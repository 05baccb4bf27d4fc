"""Which chains one service needs on each node and in each address family, and the names to put on them.

Made once, from the first full read (explain's ServiceView and the nodes' dumps); every sample after that reads
just the chains the plan lists. kube-proxy names a port's chains by a hash of the port (svcdoctor/model/hashes.py),
so the plan knows them whether a node has them yet or not, and a chain that appears later is seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model import rule_text
from svcdoctor.model.hashes import ENDPOINT_CHAIN_PREFIX, SERVICE_CHAIN_PREFIXES, chain_kind, service_chain
from svcdoctor.model.nft.names import expected_name, service_base
from svcdoctor.model.rules import NodeRules, Rule
from svcdoctor.model.service_rules import FILTER_ENTRY_CHAINS, service_port_of_comment
from svcdoctor.model.watch.listing import IPV4, IPV6, Listings, listings_from_rules

# The chains that draw an endpoint at random (KUBE-XLB is their name before kubernetes 1.24).
SPLIT_CHAIN_KINDS = ("svc", "svl", "xlb")
# svc/svl/ext/fw -> kube-proxy's prefix, by the kind hashes.chain_kind gives a chain of that prefix
PORT_CHAIN_PREFIXES = {chain_kind(prefix + "A" * 16): prefix for prefix in SERVICE_CHAIN_PREFIXES}
# the same chains in nftables mode (svcdoctor/model/nft/names.py): svc/svl/ext/fw -> the prefix of their names
NFT_CHAIN_PREFIXES = {"svc": "service", "svl": "local", "ext": "external", "fw": "firewall"}


@dataclass(slots=True)
class EndpointLabel:
    address: str  # "ip:port" or "[ip]:port" as the DNAT rule writes it
    pod: str | None = None  # "namespace/name"
    node: str | None = None  # where the pod runs


@dataclass(slots=True)
class PortWatch:
    svc_port_name: str  # "ns/name:port"
    protocol: str
    chains: dict[str, str]  # svc/svl/ext/fw -> kube-proxy's name for this port (read whether it exists or not)
    nft_chains: dict[str, str] = field(default_factory=dict)  # svc/svl/ext/fw -> the name in nftables mode
    # (node, family) -> split chain -> the entries that lead into it ("clusterIP 10.96.0.1:80")
    entries: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    affinity_seconds: int | None = None

    @property
    def split_chains(self) -> tuple[str, ...]:
        """The chains that draw an endpoint: iptables' KUBE-SVC and KUBE-SVL, and their nftables namesakes."""
        return tuple(c for c in (self.chains["svc"], self.chains["svl"], self.nft_chains.get("svc"),
                                 self.nft_chains.get("svl")) if c)

    def kind_of(self, chain: str) -> str | None:
        """svc, svl, ext or fw for one of this port's chains in either mode, else None."""
        for names in (self.chains, self.nft_chains):
            for kind, name in names.items():
                if name == chain:
                    return kind
        return None

    def entries_into(self, node: str, chain: str, family: str = IPV4) -> list[str]:
        return self.entries.get((node, family), {}).get(chain, [])


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
    # node -> the ip6tables tables it has: IPv6 is read only there, and only those tables (listing a table that
    # does not exist would create it with iptables-legacy, see svcdoctor/collect/sampler.py)
    ipv6_tables: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"

    def chains_to_read(self) -> list[tuple[str, str]]:
        """The service's own nat chains on every node (whether they exist there or not: a chain that appears later
        is seen), and the filter chains where kube-proxy puts its DROP/REJECT rules."""
        wanted = [("nat", c) for p in self.ports for c in p.chains.values()]
        wanted += [("filter", c) for c in FILTER_ENTRY_CHAINS]
        return list(dict.fromkeys(wanted))

    def reads(self, node: str) -> dict[str, list[tuple[str, str]]]:
        """family -> the (table, chain)s to list on this node: IPv4 always, IPv6 where the node has ip6tables."""
        wanted = self.chains_to_read()
        out = {IPV4: wanted}
        tables6 = self.ipv6_tables.get(node)
        if tables6:
            out[IPV6] = [(t, c) for t, c in wanted if t in tables6]
        return out

    def port_of_chain(self, chain: str) -> PortWatch | None:
        for p in self.ports:
            if p.kind_of(chain) is not None:
                return p
        return None

    def label(self, sep: str, comment_address: str | None = None) -> EndpointLabel | None:
        known = self.endpoints.get(sep)
        if known is None and comment_address:
            known = self.endpoints[sep] = self._labelled(comment_address)
        return known

    def learn(self, listings: Listings) -> None:
        """Name the KUBE-SEP chains of a listing by their DNAT rule (large clusters write no comments)."""
        for (table, chain), listing in listings.items():
            if table != "nat" or not chain.startswith(ENDPOINT_CHAIN_PREFIX) or chain in self.endpoints:
                continue
            for rule in listing.rules:
                if rule.target == "DNAT" and rule.dnat_destination:
                    self.endpoints[chain] = self._labelled(rule.dnat_destination)
                    break

    def unknown_endpoints(self, listings: Listings) -> list[str]:
        """KUBE-SEP chains the split chains jump to whose endpoint is not known yet (they appeared since the plan)."""
        out = []
        for (table, chain), listing in listings.items():
            if table != "nat" or chain_kind(chain) not in SPLIT_CHAIN_KINDS:
                continue
            for rule in listing.rules:
                target = rule.target or ""
                if target.startswith(ENDPOINT_CHAIN_PREFIX) and target not in self.endpoints:
                    if not comment_address(rule):
                        out.append(target)
        return list(dict.fromkeys(out))

    def _labelled(self, address: str) -> EndpointLabel:
        ip = rule_text.split_host_port(address)[0]
        return EndpointLabel(address, self.pods_by_ip.get(ip), self.pod_nodes.get(ip))


def plan_service_watch(view, node_rules: dict[str, NodeRules], cluster=None,
                       node_rules6: dict[str, NodeRules] | None = None) -> ServiceWatchPlan:
    """The plan from the first full read: `view` is explain's ServiceView of the service on the nodes that could be
    read (both families merged, as commands/explain.py build_view makes it); their rules name the endpoints behind
    every KUBE-SEP chain the service's split chains jump to. ``node_rules6``: the nodes' ip6tables rules."""
    plan = ServiceWatchPlan(view.namespace, view.name, [], list(node_rules))
    if cluster is not None:
        plan.pods_by_ip, plan.pod_nodes = dict(cluster.pods_by_ip), dict(cluster.pod_nodes)
    for pv in view.ports:
        port = PortWatch(pv.svc_port_name, pv.protocol.lower(),
                         {kind: service_chain(prefix, pv.svc_port_name, pv.protocol)
                          for kind, prefix in PORT_CHAIN_PREFIXES.items()},
                         _nft_chains(view.namespace, view.name, pv.svc_port_name, pv.protocol))
        if pv.api is not None and pv.api.session_affinity == "ClientIP":
            port.affinity_seconds = pv.api.session_affinity_timeout
        for nv in pv.nodes:
            for entry in nv.entries:
                _add_entry(port, nv.node, entry)
        plan.ports.append(port)
    families = {IPV4: node_rules, IPV6: node_rules6 or {}}
    for family, by_node in families.items():
        for node, rules in by_node.items():
            if family == IPV6 and node in plan.nodes:
                plan.ipv6_tables[node] = frozenset(t for t in ("nat", "filter") if rules.table(t) is not None)
            _learn_endpoints(plan, rules, family)
    return plan


def _nft_chains(namespace: str, name: str, svc_port_name: str, protocol: str) -> dict[str, str]:
    """The port's chains as kube-proxy's nftables proxier names them (pkg/proxy/nftables/proxier.go
    servicePortChainNameBase): `service-HASH-ns/name/tcp/port`, and local-, external-, firewall-."""
    _svc, _, port_name = svc_port_name.partition(":")
    base = service_base(namespace, name, protocol, port_name)
    return {kind: expected_name(prefix, base) for kind, prefix in NFT_CHAIN_PREFIXES.items()}


def _add_entry(port: PortWatch, node: str, entry) -> None:
    """Note an entry (explain's Entry) under each split chain of this port on its path."""
    if entry.session_affinity_seconds and port.affinity_seconds is None:
        port.affinity_seconds = entry.session_affinity_seconds
    by_chain = port.entries.setdefault((node, entry.family), {})
    for chain in entry.path:
        if chain in port.split_chains:
            label = f"{entry.kind} {entry.destination}"
            if label not in by_chain.setdefault(chain, []):
                by_chain[chain].append(label)


def _learn_endpoints(plan: ServiceWatchPlan, rules: NodeRules, family: str) -> None:
    """Name the KUBE-SEP chains this node's split chains jump to: by their DNAT rule, else the jump's comment."""
    nat = rules.table("nat")
    for port in plan.ports if nat is not None else ():
        for chain_name in port.split_chains:
            chain = nat.chain(chain_name)
            for rule in chain.rules if chain else ():
                sep = rule.target or ""
                if not sep.startswith(ENDPOINT_CHAIN_PREFIX) or sep in plan.endpoints:
                    continue
                plan.learn(listings_from_rules(rules, [("nat", sep)], family))  # its DNAT rule, when the node has it
                plan.label(sep, comment_address(rule))  # else the jump's comment, when there is one


def comment_address(rule: Rule) -> str | None:
    """The endpoint a jump's comment names ("ns/svc:port -> 10.0.0.1:80"), when it has such a comment."""
    spn, what = service_port_of_comment(rule.comment)
    if what == "endpoint" and rule.comment:
        return rule.comment.split(" -> ", 1)[1].strip()
    return None
