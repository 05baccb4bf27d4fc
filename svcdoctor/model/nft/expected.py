"""What kube-proxy's nftables proxier writes on one node, computed from the API objects, in each generation of its
layout (v1.29 alpha to v1.36; the differences are data in generations.py).

A port of `setupNFTables()` and `syncProxyRules()` in kubernetes `pkg/proxy/nftables/proxier.go`, one function per
part of them, with `proxy.CategorizeEndpoints()` (`pkg/proxy/topology.go`, model/expected.py: categorize_endpoints)
for the endpoints each chain uses (docs/explanation/kube-proxy-nftables.md).

The result is kube-proxy's *input* syntax, as its knftables transaction writes it (`add table …`, `add chain …`,
`add rule …`, `add element …`), in an order `nft -f` accepts (objects before the rules and elements that name
them). `NftProxier` follows one proxier over several syncs, for the service chains a sync flushes but deletes only
a second later (`staleChains`). Not modelled: topology hints, `nodePortAddresses: primary`, health-check node ports
(no nft rules).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from svcdoctor.model.cluster import ServicePort, sloppy_ipv4
from svcdoctor.model.expected import ExpectedEndpoint, EndpointCategories, canonical_ip, categorize_endpoints
from svcdoctor.model.nft.generations import (
    CLUSTER_IPS_CHECK,
    DEFAULT_GENERATION,
    ENDPOINTS_CHECK,
    FIREWALL_CHECK,
    FORWARD,
    LAYOUTS,
    MARK_MASQ,
    MASQUERADING,
    NODEPORT_ENDPOINTS_CHECK,
    REJECT_CHAIN,
    SERVICE_ENDPOINTS_CHECK,
    SERVICES,
    Layout,
)
from svcdoctor.model.nft.names import endpoint_base, expected_name, service_base

GENERATIONS = tuple(LAYOUTS)
MASQUERADE_MARK = "0x4000"  # 1 << masqueradeBit (14), as the fake proxier and kube-proxy's default write it
MARK_FOR_MASQUERADE = f"mark set mark or {MASQUERADE_MARK}"  # the 1.36 inline form (masqueradeRule)
HAIRPIN_SET = "hairpin-connections"


@dataclass(frozen=True, slots=True)
class NftProxySettings:
    """The fake proxier's settings (NewFakeProxier in pkg/proxy/nftables/proxier_test.go) or a node's."""

    node_name: str
    node_ips: tuple[str, ...] = ()  # the node's interface addresses (GetNodeIPs matches nodePortAddresses to them)
    pod_cidrs: tuple[str, ...] = ()  # LocalTrafficDetector by CIDR; empty = no detector (NoOpLocalDetector)
    service_cidrs: tuple[str, ...] = ()  # the `cluster-ips-check` drop rule
    node_port_addresses: tuple[str, ...] = ()  # CIDRs; none of this family = every local address
    masquerade_all: bool = False
    ip_family: str = "IPv4"  # IPv4 | IPv6
    generation: str = DEFAULT_GENERATION  # the layout written: one of GENERATIONS

    def __post_init__(self) -> None:
        if self.generation not in LAYOUTS:
            raise ValueError(f"unknown kube-proxy nftables generation {self.generation!r} "
                             f"(one of {', '.join(GENERATIONS)})")

    @property
    def ipv6(self) -> bool:
        return self.ip_family == "IPv6"

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.generation]


@dataclass(slots=True)
class _Tx:
    """A knftables transaction, kept grouped so that `nft -f` sees every object before it is named."""

    family: str  # ip | ip6
    table: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    chain_names: set[str] = field(default_factory=set)
    element_lines: set[str] = field(default_factory=set)

    @property
    def ipx(self) -> str:
        return self.family  # "ip daddr" / "ip6 daddr"

    @property
    def addr_type(self) -> str:
        return "ipv6_addr" if self.family == "ip6" else "ipv4_addr"

    def chain(self, name: str, spec: str = "") -> None:
        """ensureChain(): once per chain, however many times a sync names it."""
        if name not in self.chain_names:
            self.chain_names.add(name)
            self.chains.append(f"add chain {self.family} kube-proxy {name}{spec}")

    def declare(self, kind: str, name: str, spec: str) -> None:
        """`add set` / `add map`."""
        self.sets.append(f"add {kind} {self.family} kube-proxy {name} {{ {spec} ; }}")

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        tail = f' comment "{comment}"' if comment else ""
        self.rules.append(f"add rule {self.family} kube-proxy {chain} {rule}{tail}")

    def element(self, name: str, key: str, value: str | None = None, comment: str | None = None) -> None:
        text = key + (f' comment "{comment}"' if comment else "") + (f" : {value}" if value else "")
        line = f"add element {self.family} kube-proxy {name} {{ {text} }}"
        if line not in self.element_lines:  # a set holds an element once (services can share a hairpin endpoint)
            self.element_lines.add(line)
            self.elements.append(line)

    def text(self) -> str:
        return "\n".join(self.table + self.sets + self.chains + self.rules + self.elements) + "\n"


# --- setupNFTables() -------------------------------------------------------------------------------------------
def _setup_nftables(tx: _Tx, s: NftProxySettings) -> None:
    """The fixed part of the table: base chains and their jumps, masquerading, the checks, the dispatch maps."""
    layout = s.layout
    tx.table.append(f'add table {tx.family} kube-proxy {{ comment "rules for kube-proxy" ; }}')
    _base_chains(tx, layout)
    _masquerading(tx, layout)
    if layout.forward_invalid_drop:
        # v1.29: drop INVALID packets unless nf_conntrack_tcp_be_liberal (issues #74839, #117924)
        tx.rule(FORWARD, "ct state invalid drop")
    if layout.cluster_ips_check:
        _cluster_ips_check(tx, s)
    _node_port_ips(tx, s)
    _no_endpoint_handling(tx, s, layout)
    _firewall_check(tx, layout)
    _service_dispatch(tx, s, layout)


def _base_chains(tx: _Tx, layout: Layout) -> None:
    """nftablesBaseChains, then nftablesJumpChains (each jump's target created, the jump rule added), then the
    other top-level chains."""
    for bc in layout.base_chains:
        tx.chain(bc.name, f" {{ type {bc.type} hook {bc.hook} priority {bc.priority} ; }}")
    for jump in layout.jumps:
        tx.chain(jump.target)
        tx.rule(jump.source, f"{jump.match} jump {jump.target}".strip())
    for name in (SERVICES, MASQUERADING):
        tx.chain(name)
    if not layout.service_chain_dnat:
        tx.chain(MARK_MASQ)
    if layout.cluster_ips_check:
        tx.chain(CLUSTER_IPS_CHECK)
    if layout.forward_invalid_drop:
        tx.chain(FORWARD)


def _masquerading(tx: _Tx, layout: Layout) -> None:
    """Packets marked 0x4000 are masqueraded in `nat-postrouting` (and the mark cleared); from 1.36 also hairpin
    connections, by the `hairpin-connections` set (ip . ip . proto . port of every local endpoint)."""
    mark = MASQUERADE_MARK
    if not layout.service_chain_dnat:
        tx.rule(MARK_MASQ, f"mark set mark or {mark}")
        tx.rule(MASQUERADING, f"mark and {mark} == 0 return")
        tx.rule(MASQUERADING, f"mark set mark xor {mark}")
        tx.rule(MASQUERADING, "masquerade fully-random")
        return
    hairpin_type = f"{tx.addr_type} . {tx.addr_type} . inet_proto . inet_service"
    tx.declare("set", HAIRPIN_SET, f'type {hairpin_type} ; comment "service hairpin connections"')
    tx.rule(MASQUERADING, f"mark and {mark} != 0 mark set mark xor {mark} masquerade fully-random")
    tx.rule(MASQUERADING, f"ct status dnat {tx.ipx} saddr . {tx.ipx} daddr . meta l4proto . th dport "
                          f"@{HAIRPIN_SET} masquerade fully-random")


def _cluster_ips_check(tx: _Tx, s: NftProxySettings) -> None:
    """The `cluster-ips` set: other ports of a cluster IP are rejected, unallocated service-CIDR addresses dropped
    (from PR #122614)."""
    tx.declare("set", "cluster-ips", f'type {tx.addr_type} ; comment "Active ClusterIPs"')
    tx.rule(CLUSTER_IPS_CHECK, f"{tx.ipx} daddr @cluster-ips reject", "Reject traffic to invalid ports of ClusterIPs")
    service_cidrs = _cidrs(s.service_cidrs, s.ipv6)
    if service_cidrs:
        # proxier.serviceCIDRs is the family's CIDRs joined by "," (OnServiceCIDRsChanged)
        tx.rule(CLUSTER_IPS_CHECK, f"{tx.ipx} daddr {{ {','.join(service_cidrs)} }} drop",
                "Drop traffic to unallocated ClusterIPs")


def _node_port_addresses(s: NftProxySettings) -> list[ipaddress._BaseNetwork] | None:
    """proxyutil.NewNodePortAddresses: the family's CIDRs, or None for MatchAll (none of the family given, or a
    zero CIDR)."""
    nets = [ipaddress.ip_network(c, strict=False) for c in _cidrs(s.node_port_addresses, s.ipv6)]
    if not nets or any(n.prefixlen == 0 for n in nets):
        return None
    return nets


def _node_port_ips(tx: _Tx, s: NftProxySettings) -> None:
    """The `nodeport-ips` set (GetNodeIPs: the node's addresses in nodePortAddresses, loopback left out); kube-proxy
    deletes it when node ports answer on every local address."""
    nets = _node_port_addresses(s)
    if nets is None:
        return
    tx.declare("set", "nodeport-ips", f'type {tx.addr_type} ; comment "IPs that accept NodePort traffic"')
    for ip in _family(s.node_ips, s.ipv6):
        addr = ipaddress.ip_address(ip)
        if not addr.is_loopback and any(addr in n for n in nets):
            tx.element("nodeport-ips", ip)


def _node_port_match(tx: _Tx, s: NftProxySettings, fib: bool = True) -> str:
    """How a rule picks out node-port traffic: `@nodeport-ips`, or every local address but loopback (`fib daddr
    type local`, left out where only the input hook runs the rule)."""
    if _node_port_addresses(s) is not None:
        return f"{tx.ipx} daddr @nodeport-ips"
    no_localhost = f"{tx.ipx} daddr != ::1" if s.ipv6 else f"{tx.ipx} daddr != 127.0.0.0/8"
    return f"fib daddr type local {no_localhost}" if fib else no_localhost


def _no_endpoint_handling(tx: _Tx, s: NftProxySettings, layout: Layout) -> None:
    """Services without (usable) endpoints: drop or reject in the filter chains, by map."""
    what = "vmap to drop or reject packets to"
    tx.declare("map", "no-endpoint-services", f"type {tx.addr_type} . inet_proto . inet_service : verdict ; "
               f'comment "{what} services with no endpoints"')
    tx.declare("map", "no-endpoint-nodeports", "type inet_proto . inet_service : verdict ; "
               f'comment "{what} service nodeports with no endpoints"')
    tx.chain(REJECT_CHAIN, ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }')
    tx.rule(REJECT_CHAIN, "reject")
    services_chain, nodeports_chain = ENDPOINTS_CHECK, ENDPOINTS_CHECK
    if layout.split_endpoints_check:
        services_chain, nodeports_chain = SERVICE_ENDPOINTS_CHECK, NODEPORT_ENDPOINTS_CHECK
    tx.rule(services_chain, f"{tx.ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services")
    # the split nodeport-endpoints-check runs on the input hook only: every packet there is for a local address
    match = _node_port_match(tx, s, fib=not layout.split_endpoints_check)
    tx.rule(nodeports_chain, f"{match} meta l4proto . th dport vmap @no-endpoint-nodeports")


def _firewall_check(tx: _Tx, layout: Layout) -> None:
    """LoadBalancerSourceRanges: the `firewall-ips` map to each service's firewall chain (before DNAT), or in
    v1.29 the `firewall` set of guarded destinations, dropped in the filter chains."""
    comment = 'comment "destinations that are subject to LoadBalancerSourceRanges"'
    if layout.firewall_map:
        tx.declare("map", "firewall-ips", f"type {tx.addr_type} . inet_proto . inet_service : verdict ; {comment}")
        tx.rule(FIREWALL_CHECK, f"{tx.ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
    else:
        tx.declare("set", "firewall", f"type {tx.addr_type} . inet_proto . inet_service ; {comment}")
        tx.rule(FIREWALL_CHECK, f"{tx.ipx} daddr . meta l4proto . th dport @firewall drop",
                "LoadBalancer traffic not accepted by LoadBalancerSourceRanges")


def _service_dispatch(tx: _Tx, s: NftProxySettings, layout: Layout) -> None:
    """The `services` chain: by destination into `service-ips`, by node port into `service-nodeports`; from 1.36
    first the masquerade mark for cluster-IP traffic (one rule for every cluster IP)."""
    tx.declare("map", "service-ips", f"type {tx.addr_type} . inet_proto . inet_service : verdict ; "
               'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"')
    tx.declare("map", "service-nodeports", 'type inet_proto . inet_service : verdict ; comment "NodePort traffic"')
    if layout.service_chain_dnat:
        pod_cidrs = _cidrs(s.pod_cidrs, s.ipv6)
        if s.masquerade_all:
            tx.rule(SERVICES, f"{tx.ipx} daddr @cluster-ips {MARK_FOR_MASQUERADE}", "masquerade all clusterIP traffic")
        elif pod_cidrs:
            tx.rule(SERVICES, f"{tx.ipx} daddr @cluster-ips {tx.ipx} saddr != {_set_of(pod_cidrs)} "
                              f"{MARK_FOR_MASQUERADE}", "masquerade clusterIP traffic from outside cluster")
    tx.rule(SERVICES, f"{tx.ipx} daddr . meta l4proto . th dport vmap @service-ips")
    tx.rule(SERVICES, f"{_node_port_match(tx, s)} meta l4proto . th dport vmap @service-nodeports")


# --- syncProxyRules(), per service port ------------------------------------------------------------------------
@dataclass(slots=True)
class _Port:
    """syncProxyRules()' decisions for one service port: names, addresses, policies, endpoints, chains used."""

    sp: ServicePort
    protocol: str
    cluster_ip: str
    key: str  # "<proto> . <port>", the tail of every map key
    cluster_chain: str
    local_chain: str
    external_chain: str
    firewall_chain: str
    external_ips: list[str]
    lb_ips: list[str]
    source_ranges: list[str]
    etp_local: bool
    itp_local: bool
    affinity: bool
    cats: EndpointCategories
    uses_cluster_chain: bool
    uses_local_chain: bool
    uses_external_chain: bool
    uses_fw_chain: bool

    @property
    def internal_chain(self) -> str:
        return self.local_chain if self.itp_local else self.cluster_chain

    @property
    def external_policy_chain(self) -> str:
        return self.local_chain if self.etp_local else self.cluster_chain

    @property
    def has_internal(self) -> bool:
        return bool(self.cats.local) if self.itp_local else self.cats.has_any

    @property
    def has_external(self) -> bool:
        return bool(self.cats.local) if self.etp_local else self.cats.has_any

    def filter_verdict(self, has: bool) -> str:
        """What the no-endpoint maps do: reject when there is no endpoint at all, drop when a Local policy finds
        none on this node."""
        if not self.cats.has_any:
            return f"goto {REJECT_CHAIN}"
        return "" if has else "drop"


def _plan(sp: ServicePort, s: NftProxySettings) -> _Port | None:
    if sp.type == "ExternalName":
        return None
    cluster_ip = next(iter(_family(sp.cluster_ips, s.ipv6)), None)
    if cluster_ip is None:
        return None  # headless, or not of this proxier's family
    protocol = sp.protocol.lower()
    base = service_base(sp.namespace, sp.name, protocol, sp.port_name)
    external_ips = _family(sp.external_ips, s.ipv6)
    lb_ips = _family(sp.load_balancer_ips, s.ipv6)
    source_ranges = _cidrs(sp.load_balancer_source_ranges, s.ipv6)
    # ExternalPolicyLocal: apiservice.ExternallyAccessible is by type, or a ClusterIP service with external IPs
    accessible_type = sp.type in ("NodePort", "LoadBalancer") or (sp.type == "ClusterIP" and bool(sp.external_ips))
    etp_local = accessible_type and sp.external_traffic_policy == "Local"
    itp_local = sp.internal_traffic_policy == "Local"
    # BaseServicePortInfo.ExternallyAccessible(): this port, this family
    accessible = bool(sp.node_port) or bool(lb_ips) or bool(external_ips)
    uses_cluster = not itp_local or accessible
    uses_local = itp_local or (etp_local and accessible)
    endpoints = []
    for ep in sp.endpoints:
        if (":" in ep.ip) != s.ipv6:
            continue
        # `chain` holds the endpoint's name base: the endpoint chain and the affinity set share its hash
        ep_base = endpoint_base(base, canonical_ip(ep.ip) or ep.ip, ep.port)
        endpoints.append(ExpectedEndpoint(ep, ep_base, ep.node == s.node_name))
    cats = categorize_endpoints(endpoints, uses_cluster, uses_local)
    return _Port(
        sp=sp, protocol=protocol, cluster_ip=cluster_ip, key=f"{protocol} . {sp.port}",
        cluster_chain=expected_name("service", base), local_chain=expected_name("local", base),
        external_chain=expected_name("external", base), firewall_chain=expected_name("firewall", base),
        external_ips=external_ips, lb_ips=lb_ips, source_ranges=source_ranges,
        etp_local=etp_local, itp_local=itp_local, affinity=sp.session_affinity == "ClientIP", cats=cats,
        uses_cluster_chain=bool(cats.cluster) and uses_cluster, uses_local_chain=bool(cats.local) and uses_local,
        uses_external_chain=cats.has_any and accessible,
        uses_fw_chain=bool(lb_ips) and bool(source_ranges),
    )


def _service_port(tx: _Tx, sp: ServicePort, s: NftProxySettings) -> None:
    """One service port, in syncProxyRules()' order."""
    p = _plan(sp, s)
    if p is None:
        return
    layout = s.layout
    _port_chains(tx, p, layout)
    _dispatch_elements(tx, p, layout)
    if not layout.service_chain_dnat:
        _internal_masquerade(tx, p, s)
    _external_chain_rules(tx, p, s, layout)
    _firewall_chain_rules(tx, p, s, layout)
    _affinity_sets(tx, p)
    if layout.service_chain_dnat:
        _service_dnat(tx, p)
    else:
        _endpoint_chains(tx, p)


def _endpoint_names(e: ExpectedEndpoint) -> tuple[str, str]:
    return expected_name("endpoint", e.chain), expected_name("affinity", e.chain)


def _endpoint_ip(e: ExpectedEndpoint) -> str:
    return canonical_ip(e.endpoint.ip) or e.endpoint.ip


def _port_chains(tx: _Tx, p: _Port, layout: Layout) -> None:
    """The chains the port uses; from 1.36 endpoint chains only with session affinity, and the local endpoints
    noted in `hairpin-connections`."""
    for e in p.cats.reachable:
        if not layout.service_chain_dnat or p.affinity:
            tx.chain(_endpoint_names(e)[0])
        if layout.service_chain_dnat and e.local:
            ip = _endpoint_ip(e)
            tx.element(HAIRPIN_SET, f"{ip} . {ip} . {p.protocol} . {e.endpoint.port}")
    for used, name in ((p.uses_cluster_chain, p.cluster_chain), (p.uses_local_chain, p.local_chain),
                       (p.uses_external_chain, p.external_chain), (p.uses_fw_chain, p.firewall_chain)):
        if used:
            tx.chain(name)


def _dispatch_elements(tx: _Tx, p: _Port, layout: Layout) -> None:
    """The port's elements in the dispatch maps (service-ips, service-nodeports) or the no-endpoint maps, and in
    the firewall map (or v1.29 set)."""
    name = p.sp.svc_port_name  # ServicePortName.String(), the elements' comment
    if layout.cluster_ips_check:
        tx.element("cluster-ips", p.cluster_ip)
    if p.has_internal:
        tx.element("service-ips", f"{p.cluster_ip} . {p.key}", f"goto {p.internal_chain}")
    else:
        tx.element("no-endpoint-services", f"{p.cluster_ip} . {p.key}", p.filter_verdict(False), name)
    external_verdict = p.filter_verdict(p.has_external)
    for ip in p.external_ips:
        if p.cats.has_any:
            tx.element("service-ips", f"{ip} . {p.key}", f"goto {p.external_chain}")
        if not p.has_external:
            tx.element("no-endpoint-services", f"{ip} . {p.key}", external_verdict, name)
    for ip in p.lb_ips:
        if p.cats.has_any:
            # v1.29: a guarded load-balancer IP goes through its firewall chain to the external chain
            target = p.firewall_chain if p.uses_fw_chain and not layout.firewall_map else p.external_chain
            tx.element("service-ips", f"{ip} . {p.key}", f"goto {target}")
        if p.uses_fw_chain and layout.firewall_map:
            tx.element("firewall-ips", f"{ip} . {p.key}", f"goto {p.firewall_chain}",
                       name if layout.firewall_element_comment else None)
        elif p.uses_fw_chain:
            tx.element("firewall", f"{ip} . {p.key}", comment=name)
    if not p.has_external:
        for ip in p.lb_ips:
            tx.element("no-endpoint-services", f"{ip} . {p.key}", external_verdict, name)
    if p.sp.node_port:
        if p.cats.has_any:
            tx.element("service-nodeports", f"{p.protocol} . {p.sp.node_port}", f"goto {p.external_chain}")
        if not p.has_external:
            tx.element("no-endpoint-nodeports", f"{p.protocol} . {p.sp.node_port}", external_verdict, name)


def _internal_masquerade(tx: _Tx, p: _Port, s: NftProxySettings) -> None:
    """Up to 1.35: cluster-IP traffic from outside the pod network (all of it with masqueradeAll) is marked in the
    internal policy chain; up to 1.33 the rule also matches the port (dropped by PR #132456)."""
    if not p.has_internal:
        return
    ipx = tx.ipx
    match = f"{ipx} daddr {p.cluster_ip}"
    if s.layout.cluster_ip_masq_port:
        match += f" {p.protocol} dport {p.sp.port}"
    pod_cidrs = _cidrs(s.pod_cidrs, s.ipv6)
    if s.masquerade_all:
        tx.rule(p.internal_chain, f"{match} jump {MARK_MASQ}")
    elif pod_cidrs:
        tx.rule(p.internal_chain, f"{match} {ipx} saddr != {_set_of(pod_cidrs)} jump {MARK_MASQ}")


def _external_chain_rules(tx: _Tx, p: _Port, s: NftProxySettings, layout: Layout) -> None:
    """The external chain: masquerade (Cluster policy), or short-circuit pod and node traffic to the cluster chain
    (Local policy), then on to the external policy chain."""
    if not p.uses_external_chain:
        return
    inline = layout.service_chain_dnat
    if not p.etp_local:
        if inline:
            tx.rule(p.external_chain, MARK_FOR_MASQUERADE, "masquerade")
        else:
            tx.rule(p.external_chain, f"jump {MARK_MASQ}")
    else:
        pod_cidrs = _cidrs(s.pod_cidrs, s.ipv6)
        if pod_cidrs:
            tx.rule(p.external_chain, f"{tx.ipx} saddr {_set_of(pod_cidrs)} goto {p.cluster_chain}",
                    "short-circuit pod traffic")
        mark = MARK_FOR_MASQUERADE if inline else f"jump {MARK_MASQ}"
        tx.rule(p.external_chain, f"fib saddr type local {mark}", "masquerade local traffic")
        tx.rule(p.external_chain, f"fib saddr type local goto {p.cluster_chain}", "short-circuit local traffic")
    if p.has_external:
        tx.rule(p.external_chain, f"goto {p.external_policy_chain}")


def _firewall_chain_rules(tx: _Tx, p: _Port, s: NftProxySettings, layout: Layout) -> None:
    """The firewall chain: drop sources outside loadBalancerSourceRanges (the node's own traffic to the LB IP is
    let through when the node is in a range); in v1.29 allowed sources go on to the external chain instead."""
    if not p.uses_fw_chain:
        return
    sources = list(p.source_ranges)
    node_ip = next(iter(_family(s.node_ips, s.ipv6)), None)
    if node_ip and any(ipaddress.ip_address(node_ip) in ipaddress.ip_network(r) for r in p.source_ranges):
        sources += p.lb_ips  # allowFromNode: a VIP-like LB's traffic from the node comes from the LB IP
    if layout.firewall_map:
        tx.rule(p.firewall_chain, f"{tx.ipx} saddr != {{ {' , '.join(sources)} }} drop")
    elif p.uses_external_chain:
        tx.rule(p.firewall_chain, f"{tx.ipx} saddr {{ {' , '.join(sources)} }} goto {p.external_chain}",
                "LoadBalancer traffic allowed by LoadBalancerSourceRanges")


def _affinity_sets(tx: _Tx, p: _Port) -> None:
    """ClientIP affinity: one dynamic set per reachable endpoint, timing out after the affinity's timeout."""
    if not p.affinity:
        return
    timeout = p.sp.session_affinity_timeout or 10800
    for e in p.cats.reachable:
        tx.declare("set", _endpoint_names(e)[1], f"type {tx.addr_type} ; flags dynamic,timeout ; timeout {timeout}s")


def _policy_chains(p: _Port) -> list[tuple[str, list[ExpectedEndpoint]]]:
    chains = []
    if p.uses_cluster_chain:
        chains.append((p.cluster_chain, p.cats.cluster))
    if p.uses_local_chain:
        chains.append((p.local_chain, p.cats.local))
    return chains


def _endpoint_chains(tx: _Tx, p: _Port) -> None:
    """Up to 1.35: writeServiceToEndpointRules() into each policy chain, then every endpoint chain: hairpin
    masquerade, the affinity update, the DNAT."""
    for chain, endpoints in _policy_chains(p):
        _service_to_endpoint_jumps(tx, chain, endpoints, p.affinity)
    for e in p.cats.reachable:
        endpoint_chain, affinity_set = _endpoint_names(e)
        tx.rule(endpoint_chain, f"{tx.ipx} saddr {_endpoint_ip(e)} jump {MARK_MASQ}")
        if p.affinity:
            tx.rule(endpoint_chain, f"update @{affinity_set} {{ {tx.ipx} saddr }}")
        tx.rule(endpoint_chain, f"meta l4proto {p.protocol} dnat to {_dnat_target(e)}")


def _service_dnat(tx: _Tx, p: _Port) -> None:
    """1.36: writeServiceToEndpointDNATs() (`dnat … to numgen random mod N map { i : IP . PORT }`) into each policy
    chain; with affinity writeServiceToEndpointJumps() and endpoint chains holding the update and the DNAT."""
    for chain, endpoints in _policy_chains(p):
        if p.affinity:
            _service_to_endpoint_jumps(tx, chain, endpoints, True)
            continue
        branches = " , ".join(f"{i} : {_endpoint_ip(e)} . {e.endpoint.port}" for i, e in enumerate(endpoints))
        tx.rule(chain, f"meta l4proto {p.protocol} dnat {tx.ipx} addr . port to numgen random mod "
                       f"{len(endpoints)} map {{ {branches} }}")
    if not p.affinity:
        return
    for e in p.cats.reachable:
        endpoint_chain, affinity_set = _endpoint_names(e)
        tx.rule(endpoint_chain, f"update @{affinity_set} {{ {tx.ipx} saddr }}")
        tx.rule(endpoint_chain, f"meta l4proto {p.protocol} dnat to {_dnat_target(e)}")


def _service_to_endpoint_jumps(tx: _Tx, chain: str, endpoints: list[ExpectedEndpoint], affinity: bool) -> None:
    """Affinity first (a known client goes back to its endpoint), then `numgen random mod N vmap`."""
    if affinity:
        for e in endpoints:
            endpoint_chain, affinity_set = _endpoint_names(e)
            tx.rule(chain, f"{tx.ipx} saddr @{affinity_set} goto {endpoint_chain}")
    branches = " , ".join(f"{i} : goto {_endpoint_names(e)[0]}" for i, e in enumerate(endpoints))
    tx.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {branches} }}")


def _dnat_target(e: ExpectedEndpoint) -> str:
    ip = _endpoint_ip(e)
    return f"[{ip}]:{e.endpoint.port}" if ":" in ip else f"{ip}:{e.endpoint.port}"


# --- values ----------------------------------------------------------------------------------------------------
def _family(ips, ipv6: bool) -> list[str]:
    out = []
    for ip in ips:
        text = canonical_ip(ip)
        if text and (":" in text) == ipv6:
            out.append(text)
    return out


def _cidrs(cidrs, ipv6: bool) -> list[str]:
    """The family's CIDRs, canonical, read as ParseCIDRSloppy reads them (leading zeros allowed); kube-proxy
    drops unparseable ones (service.go)."""
    out = []
    for c in cidrs:
        address, slash, prefix = c.strip().partition("/")
        address = sloppy_ipv4(address) or address
        try:
            net = ipaddress.ip_network(f"{address}/{int(prefix)}" if slash and prefix.isdigit() else address,
                                       strict=False)
        except ValueError:
            continue
        if (net.version == 6) == ipv6:
            out.append(str(net))
    return out


def _set_of(values: list[str]) -> str:
    """knftables.Concat of a value list: one value bare, several in an anonymous set."""
    return values[0] if len(values) == 1 else "{ " + " , ".join(values) + " }"


# --- syncs -----------------------------------------------------------------------------------------------------
def _is_service_chain(name: str) -> bool:
    """isServiceChainName(): only the per-service and per-endpoint chains have a "/" in their names."""
    return "/" in name


class NftProxier:
    """One proxier over several syncs. A sync flushes the service and endpoint chains no longer used but deletes
    them only at a sync more than a second later (kernels before 6.2 notice a map element's chain unreferenced
    only after a while): until then they stay in the table, empty (syncProxyRules' `staleChains`)."""

    def __init__(self, settings: NftProxySettings, existing_chains=()):
        self.settings = settings
        self._chains = {c for c in existing_chains if _is_service_chain(c)}  # service chains in the table
        self._stale: set[str] = set()

    def sync(self, service_ports: list[ServicePort], stale_chains_aged: bool = False) -> str:
        """The table after one syncProxyRules(); `stale_chains_aged`: the stale chains are over a second old and
        deleted first."""
        if stale_chains_aged:
            self._chains -= self._stale
            self._stale = set()
        tx = _Tx("ip6" if self.settings.ipv6 else "ip")
        _setup_nftables(tx, self.settings)
        for sp in service_ports:
            _service_port(tx, sp, self.settings)
        active = {c for c in tx.chain_names if _is_service_chain(c)}
        self._stale = self._chains - active
        self._chains = active | self._stale
        for name in sorted(self._stale):
            tx.chain(name)  # flushed, not yet deleted
        return tx.text()


def expected_ruleset(service_ports: list[ServicePort], settings: NftProxySettings) -> str:
    """kube-proxy's `ip kube-proxy` (or `ip6 kube-proxy`) table for these service ports, as `nft -f` input, after
    a first sync."""
    return NftProxier(settings).sync(service_ports)
