"""What kube-proxy's nftables proxier (v1.34–1.35 layout) writes on one node, computed from the API objects.

A port of `syncProxyRules()` in kubernetes `pkg/proxy/nftables/proxier.go` (the layout of PR #132456: pre-DNAT
filtering in `filter-prerouting-pre-dnat`/`filter-output-pre-dnat`, per-endpoint chains, `numgen … vmap`,
`mark-for-masquerade`; docs/explanation/kube-proxy-nftables.md), with `proxy.CategorizeEndpoints()`
(`pkg/proxy/topology.go`, model/expected.py: categorize_endpoints) for the endpoints each chain uses.

The result is kube-proxy's *input* syntax, as its knftables transaction writes it (`add table …`, `add chain …`,
`add rule …`, `add element …`), in an order `nft -f` accepts (objects before the rules and elements that name
them). Not modelled: topology hints, `nodePortAddresses: primary`, health-check node ports (no nft rules).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from svcdoctor.model.cluster import ServicePort
from svcdoctor.model.expected import ExpectedEndpoint, canonical_ip, categorize_endpoints
from svcdoctor.model.nft.names import endpoint_base, expected_name, service_base

MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"


@dataclass(frozen=True, slots=True)
class NftProxySettings:
    """The fake proxier's settings (NewFakeProxier in pkg/proxy/nftables/proxier_test.go) or a node's."""

    node_name: str
    node_ips: tuple[str, ...] = ()  # the node's interface addresses (GetNodeIPs matches nodePortAddresses to them)
    pod_cidrs: tuple[str, ...] = ()  # LocalTrafficDetector by CIDR; empty = no detector (NoOpLocalDetector)
    service_cidrs: tuple[str, ...] = ()  # the `cluster-ips-check` drop rule
    node_port_addresses: tuple[str, ...] = ()  # CIDRs; empty = every local address (`fib daddr type local`)
    masquerade_all: bool = False
    ip_family: str = "IPv4"  # IPv4 | IPv6

    @property
    def ipv6(self) -> bool:
        return self.ip_family == "IPv6"


@dataclass(slots=True)
class _Tx:
    """A knftables transaction, kept grouped so that `nft -f` sees every object before it is named."""

    family: str
    table: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    _known_chains: set[str] = field(default_factory=set)

    def chain(self, name: str, spec: str = "") -> None:
        if name not in self._known_chains:
            self._known_chains.add(name)
            self.chains.append(f"add chain {self.family} kube-proxy {name}{spec}")

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        tail = f' comment "{comment}"' if comment else ""
        self.rules.append(f"add rule {self.family} kube-proxy {chain} {rule}{tail}")

    def element(self, name: str, key: str, value: str | None = None, comment: str | None = None) -> None:
        text = key + (f' comment "{comment}"' if comment else "") + (f" : {value}" if value else "")
        self.elements.append(f"add element {self.family} kube-proxy {name} {{ {text} }}")

    def text(self) -> str:
        return "\n".join(self.table + self.sets + self.chains + self.rules + self.elements) + "\n"


def _policies(sp: ServicePort) -> tuple[bool, bool]:
    """(ExternalPolicyLocal, InternalPolicyLocal) at service level (pkg/proxy/service.go; apiservice helpers:
    ExternallyAccessible is by type, or a ClusterIP service with external IPs)."""
    accessible = sp.type in ("NodePort", "LoadBalancer") or (sp.type == "ClusterIP" and bool(sp.external_ips))
    return accessible and sp.external_traffic_policy == "Local", sp.internal_traffic_policy == "Local"


def _family(ips, ipv6: bool) -> list[str]:
    out = []
    for ip in ips:
        text = canonical_ip(ip)
        if text and (":" in text) == ipv6:
            out.append(text)
    return out


def _cidrs(cidrs, ipv6: bool) -> list[str]:
    out = []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c.strip(), strict=False)
        except ValueError:
            continue  # kube-proxy drops unparseable source ranges (service.go)
        if (net.version == 6) == ipv6:
            out.append(str(net))
    return out


def _set_of(values: list[str]) -> str:
    """knftables.Concat of a value list: one value bare, several in an anonymous set."""
    return values[0] if len(values) == 1 else "{ " + " , ".join(values) + " }"


def _base(tx: _Tx, settings: NftProxySettings) -> None:
    """setupNFTables() and the fixed part of syncProxyRules(), proxier.go."""
    f = tx.family
    ipx = "ip6" if settings.ipv6 else "ip"
    addr = "ipv6_addr" if settings.ipv6 else "ipv4_addr"
    tx.table.append(f'add table {f} kube-proxy {{ comment "rules for kube-proxy" ; }}')
    tx.sets += [
        f'add set {f} kube-proxy cluster-ips {{ type {addr} ; comment "Active ClusterIPs" ; }}',
        f'add set {f} kube-proxy nodeport-ips {{ type {addr} ; comment "IPs that accept NodePort traffic" ; }}',
        f"add map {f} kube-proxy firewall-ips {{ type {addr} . inet_proto . inet_service : verdict ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
        f"add map {f} kube-proxy no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f"add map {f} kube-proxy no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {f} kube-proxy service-ips {{ type {addr} . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f"add map {f} kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "NodePort traffic" ; }',
    ]
    for name, spec in [
        ("cluster-ips-check", ""),
        ("filter-prerouting-pre-dnat", " { type filter hook prerouting priority -110 ; }"),
        ("filter-output-pre-dnat", " { type filter hook output priority -110 ; }"),
        ("filter-forward", " { type filter hook forward priority 0 ; }"),
        ("filter-input", " { type filter hook input priority 0 ; }"),
        ("filter-output", " { type filter hook output priority 0 ; }"),
        ("firewall-check", ""),
        (MARK_MASQ, ""),
        ("masquerading", ""),
        ("nat-output", " { type nat hook output priority -100 ; }"),
        ("nat-postrouting", " { type nat hook postrouting priority 100 ; }"),
        ("nat-prerouting", " { type nat hook prerouting priority -100 ; }"),
        ("nodeport-endpoints-check", ""),
        (REJECT_CHAIN, ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'),
        ("services", ""),
        ("service-endpoints-check", ""),
    ]:
        tx.chain(name, spec)
    tx.rule("cluster-ips-check", f"{ipx} daddr @cluster-ips reject", "Reject traffic to invalid ports of ClusterIPs")
    service_cidrs = _cidrs(settings.service_cidrs, settings.ipv6)
    if service_cidrs:
        tx.rule("cluster-ips-check", f"{ipx} daddr {{ {' , '.join(service_cidrs)} }} drop",
                "Drop traffic to unallocated ClusterIPs")
    for chain, target in [
        ("filter-prerouting-pre-dnat", "firewall-check"),
        ("filter-output-pre-dnat", "firewall-check"),
        ("filter-forward", "service-endpoints-check"),
        ("filter-forward", "cluster-ips-check"),
        ("filter-input", "nodeport-endpoints-check"),
        ("filter-input", "service-endpoints-check"),
        ("filter-output", "service-endpoints-check"),
        ("filter-output", "cluster-ips-check"),
    ]:
        tx.rule(chain, f"ct state new jump {target}")
    tx.rule("firewall-check", f"{ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
    tx.rule(MARK_MASQ, "mark set mark or 0x4000")
    tx.rule("masquerading", "mark and 0x4000 == 0 return")
    tx.rule("masquerading", "mark set mark xor 0x4000")
    tx.rule("masquerading", "masquerade fully-random")
    tx.rule("nat-output", "jump services")
    tx.rule("nat-postrouting", "jump masquerading")
    tx.rule("nat-prerouting", "jump services")
    tx.rule(REJECT_CHAIN, "reject")
    tx.rule("service-endpoints-check", f"{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services")
    tx.rule("services", f"{ipx} daddr . meta l4proto . th dport vmap @service-ips")
    if settings.node_port_addresses:
        nets = [ipaddress.ip_network(c, strict=False) for c in settings.node_port_addresses]
        for ip in _family(settings.node_ips, settings.ipv6):
            if any(ipaddress.ip_address(ip) in n for n in nets if n.version == (6 if settings.ipv6 else 4)):
                tx.element("nodeport-ips", ip)
        daddr = f"{ipx} daddr @nodeport-ips"
    else:
        # nodePortAddresses.MatchAll(): every local address but loopback
        daddr = "fib daddr type local " + (f"{ipx} daddr != ::1" if settings.ipv6 else f"{ipx} daddr != 127.0.0.0/8")
    tx.rule("nodeport-endpoints-check", f"{daddr} meta l4proto . th dport vmap @no-endpoint-nodeports")
    tx.rule("services", f"{daddr} meta l4proto . th dport vmap @service-nodeports")


def _service_port(tx: _Tx, sp: ServicePort, settings: NftProxySettings) -> None:
    """One service port: the per-service part of syncProxyRules(), proxier.go."""
    ipv6 = settings.ipv6
    ipx = "ip6" if ipv6 else "ip"
    if sp.type == "ExternalName":
        return
    cluster_ip = next(iter(_family(sp.cluster_ips, ipv6)), None)
    if cluster_ip is None:
        return  # headless, or not of this proxier's family
    protocol = sp.protocol.lower()
    name = sp.svc_port_name  # ServicePortName.String(), the elements' comment
    base = service_base(sp.namespace, sp.name, protocol, sp.port_name)
    cluster_chain = expected_name("service", base)
    local_chain = expected_name("local", base)
    external_chain = expected_name("external", base)
    fw_chain = expected_name("firewall", base)
    external_ips = _family(sp.external_ips, ipv6)
    lb_ips = _family(sp.load_balancer_ips, ipv6)
    source_ranges = _cidrs(sp.load_balancer_source_ranges, ipv6)
    etp_local, itp_local = _policies(sp)
    accessible = bool(sp.node_port) or bool(lb_ips) or bool(external_ips)  # BaseServicePortInfo's, this port
    uses_cluster = not itp_local or accessible
    uses_local = itp_local or (etp_local and accessible)
    affinity = sp.session_affinity == "ClientIP"

    endpoints = []
    for ep in sp.endpoints:
        if (":" in ep.ip) != ipv6:
            continue
        # `chain` holds the endpoint's name base: the endpoint chain and the affinity set share its hash
        ep_base = endpoint_base(base, canonical_ip(ep.ip) or ep.ip, ep.port)
        endpoints.append(ExpectedEndpoint(ep, ep_base, ep.node == settings.node_name))
    cats = categorize_endpoints(endpoints, uses_cluster, uses_local)
    for e in cats.reachable:
        tx.chain(expected_name("endpoint", e.chain))
        if affinity:
            addr = "ipv6_addr" if ipv6 else "ipv4_addr"
            tx.sets.append(f"add set {tx.family} kube-proxy {expected_name('affinity', e.chain)} {{ type {addr} ; "
                           f"flags dynamic,timeout ; timeout {sp.session_affinity_timeout or 10800}s ; }}")
    uses_cluster_chain = bool(cats.cluster) and uses_cluster
    uses_local_chain = bool(cats.local) and uses_local
    if uses_cluster_chain:
        tx.chain(cluster_chain)
    if uses_local_chain:
        tx.chain(local_chain)
    internal_policy = local_chain if itp_local else cluster_chain
    external_policy = local_chain if etp_local else cluster_chain
    has_internal = bool(cats.local) if itp_local else cats.has_any
    has_external = bool(cats.local) if etp_local else cats.has_any
    if not cats.has_any:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = "" if has_internal else "drop"
        external_verdict = "" if has_external else "drop"

    tx.element("cluster-ips", cluster_ip)
    key = f"{protocol} . {sp.port}"
    if has_internal:
        tx.element("service-ips", f"{cluster_ip} . {key}", f"goto {internal_policy}")
    else:
        tx.element("no-endpoint-services", f"{cluster_ip} . {key}", internal_verdict, name)

    uses_external_chain = cats.has_any and accessible
    if uses_external_chain:
        tx.chain(external_chain)
    uses_fw = bool(lb_ips) and bool(source_ranges)
    if uses_fw:
        tx.chain(fw_chain)

    for ip in external_ips:
        if cats.has_any:
            tx.element("service-ips", f"{ip} . {key}", f"goto {external_chain}")
        if not has_external:
            tx.element("no-endpoint-services", f"{ip} . {key}", external_verdict, name)
    for ip in lb_ips:
        if cats.has_any:
            tx.element("service-ips", f"{ip} . {key}", f"goto {external_chain}")
        if uses_fw:
            tx.element("firewall-ips", f"{ip} . {key}", f"goto {fw_chain}")
    if not has_external:
        for ip in lb_ips:
            tx.element("no-endpoint-services", f"{ip} . {key}", external_verdict, name)
    if sp.node_port:
        if cats.has_any:
            tx.element("service-nodeports", f"{protocol} . {sp.node_port}", f"goto {external_chain}")
        if not has_external:
            tx.element("no-endpoint-nodeports", f"{protocol} . {sp.node_port}", external_verdict, name)

    # internal traffic: masquerade off-cluster (or all, masqueradeAll) traffic to the cluster IP
    pod_cidrs = _cidrs(settings.pod_cidrs, ipv6)
    if has_internal:
        if settings.masquerade_all:
            tx.rule(internal_policy, f"{ipx} daddr {cluster_ip} jump {MARK_MASQ}")
        elif pod_cidrs:
            tx.rule(internal_policy, f"{ipx} daddr {cluster_ip} {ipx} saddr != {_set_of(pod_cidrs)} jump {MARK_MASQ}")

    if uses_external_chain:
        if not etp_local:
            tx.rule(external_chain, f"jump {MARK_MASQ}")
        else:
            if pod_cidrs:
                tx.rule(external_chain, f"{ipx} saddr {_set_of(pod_cidrs)} goto {cluster_chain}",
                        "short-circuit pod traffic")
            tx.rule(external_chain, f"fib saddr type local jump {MARK_MASQ}", "masquerade local traffic")
            tx.rule(external_chain, f"fib saddr type local goto {cluster_chain}", "short-circuit local traffic")
        if has_external:
            tx.rule(external_chain, f"goto {external_policy}")

    if uses_fw:
        sources = list(source_ranges)
        node_ip = next(iter(_family(settings.node_ips, ipv6)), None)
        if node_ip and any(ipaddress.ip_address(node_ip) in ipaddress.ip_network(s) for s in source_ranges):
            sources += lb_ips  # allowFromNode: the node's traffic to its own LB IP comes from that IP
        tx.rule(fw_chain, f"{ipx} saddr != {{ {' , '.join(sources)} }} drop")

    if uses_cluster_chain:
        _service_to_endpoints(tx, cluster_chain, cats.cluster, affinity, ipx)
    if uses_local_chain:
        _service_to_endpoints(tx, local_chain, cats.local, affinity, ipx)

    for e in cats.reachable:
        chain = expected_name("endpoint", e.chain)
        ip = canonical_ip(e.endpoint.ip) or e.endpoint.ip
        tx.rule(chain, f"{ipx} saddr {ip} jump {MARK_MASQ}")  # hairpin
        if affinity:
            tx.rule(chain, f"update @{expected_name('affinity', e.chain)} {{ {ipx} saddr }}")
        target = f"[{ip}]:{e.endpoint.port}" if ipv6 else f"{ip}:{e.endpoint.port}"
        tx.rule(chain, f"meta l4proto {protocol} dnat to {target}")


def _service_to_endpoints(tx: _Tx, chain: str, endpoints: list[ExpectedEndpoint], affinity: bool, ipx: str) -> None:
    """writeServiceToEndpointRules(), proxier.go: affinity first, then `numgen random mod N vmap`."""
    if affinity:
        for e in endpoints:
            affinity_set, endpoint_chain = expected_name("affinity", e.chain), expected_name("endpoint", e.chain)
            tx.rule(chain, f"{ipx} saddr @{affinity_set} goto {endpoint_chain}")
    branches = " , ".join(f"{i} : goto {expected_name('endpoint', e.chain)}" for i, e in enumerate(endpoints))
    tx.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {branches} }}")


def expected_ruleset(service_ports: list[ServicePort], settings: NftProxySettings) -> str:
    """kube-proxy's `ip kube-proxy` (or `ip6 kube-proxy`) table for these service ports, as `nft -f` input."""
    tx = _Tx("ip6" if settings.ipv6 else "ip")
    _base(tx, settings)
    for sp in service_ports:
        _service_port(tx, sp, settings)
    return tx.text()
