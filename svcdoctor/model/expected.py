"""What kube-proxy (iptables mode, 1.28–1.32) programs on one node, computed from the API objects.

A port of `syncProxyRules()` in kubernetes v1.28.0 `pkg/proxy/iptables/proxier.go`
(docs/reference/kube-proxy-layout.md §2), with `proxy.CategorizeEndpoints()` (`pkg/proxy/topology.go`) for the endpoint choice. The result is kube-proxy's
iptables-restore *input* (what it writes, not what `iptables-save` prints back, see docs/reference/kube-proxy-layout.md §2.9), sorted the way
the Go tests' `sortIPTablesRules()` sorts it, so that it equals the upstream expected dumps line for line.

Deltas up to 1.32 are behind `ProxySettings.kube_minor` (docs/reference/kube-proxy-layout.md §2.11). Not modelled: topology-aware routing
(hints), and kube-proxy preferring the local copy of an endpoint listed twice with different nodes.

Pure: no I/O, no typer/rich/docker/kubernetes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from svcdoctor.model import rule_text
from svcdoctor.model.cluster import ClusterModel, Endpoint, ServicePort
from svcdoctor.model.hashes import (
    KUBE_EXTERNAL_SERVICES,
    KUBE_FIREWALL,
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    SERVICE_CHAIN_PREFIXES,
    endpoint_chain,
    service_chain,
)
from svcdoctor.model.proxy_settings import ProxySettings, is_ipv6

# Above this many endpoints kube-proxy drops the comments of SVC->SEP and SEP rules (largeClusterEndpointsThreshold).
LARGE_CLUSTER_ENDPOINTS = 1000

NODEPORTS_LAST_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
# nfacct counters of kube-proxy 1.31+ (pkg/proxy/metrics); rules use them only when the counter could be created.
NFACCT_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NODEPORTS = "localhost_nps_accepted_pkts"


@dataclass(slots=True)
class ExpectedEndpoint:
    endpoint: Endpoint
    chain: str  # KUBE-SEP-…
    local: bool


@dataclass(slots=True)
class ExpectedServicePort:
    """kube-proxy's decisions for one service port on one node, and the rules they produce."""

    service_port: ServicePort
    name: str  # ServicePortName.String(): "ns/svc" or "ns/svc:port"
    protocol: str  # lower case, as in the rules
    cluster_ip: str
    external_ips: list[str]
    load_balancer_ips: list[str]
    source_ranges: list[str]
    health_check_node_port: int | None
    svc_chain: str
    svl_chain: str
    ext_chain: str
    fw_chain: str
    cluster_endpoints: list[ExpectedEndpoint]  # what KUBE-SVC balances over (ready, else serving+terminating)
    local_endpoints: list[ExpectedEndpoint]  # what KUBE-SVL balances over
    reachable_endpoints: list[ExpectedEndpoint]  # every endpoint that gets a KUBE-SEP chain on this node
    has_endpoints: bool  # any usable endpoint anywhere in the cluster
    has_internal_endpoints: bool  # ClusterIP traffic is DNATed (else REJECT/DROP in filter)
    has_external_endpoints: bool  # NodePort/LB/external IP traffic from outside is DNATed
    uses_cluster_chain: bool
    uses_local_chain: bool
    uses_external_chain: bool
    uses_fw_chain: bool
    internal_chain: str  # where ClusterIP traffic goes: KUBE-SVC or KUBE-SVL
    external_policy_chain: str  # where external traffic ends up: KUBE-SVC or KUBE-SVL
    internal_filter: str | None  # "REJECT" | "DROP" | None: filter verdict for ClusterIP traffic
    external_filter: str | None  # "REJECT" | "DROP" | None: filter verdict for outside external traffic
    external_policy_local: bool = False  # externalTrafficPolicy Local, on a Service reachable from outside
    firewall_admits_node: bool = False  # a source range holds the node's IP: KUBE-FW lets its own VIP traffic in
    nat_chains: list[str] = field(default_factory=list)  # declared for this port, in write order
    rules: list[tuple[str, str, str]] = field(default_factory=list)  # (table, chain, "-A chain …"), write order

    def chain_names(self) -> dict[str, str | None]:
        """kube-proxy's chain names for this port, None where kube-proxy does not create the chain."""
        return {
            "svc": self.svc_chain if self.uses_cluster_chain else None,
            "svl": self.svl_chain if self.uses_local_chain else None,
            "ext": self.ext_chain if self.uses_external_chain else None,
            "fw": self.fw_chain if self.uses_fw_chain else None,
        }

    def filter_rules(self) -> list[tuple[str, str]]:
        """(chain, rule) of the filter table for this port: REJECT/DROP, firewall DROP, health check ACCEPT."""
        return [(chain, line) for table, chain, line in self.rules if table == "filter"]


def _family_ips(ips: Iterable[str], ipv6: bool, normalise: bool) -> list[str]:
    """kube-proxy's MapIPsByIPFamily: keep valid addresses of the proxier's family (1.30+ prints them parsed)."""
    out = []
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            continue  # "Skipping invalid IP"
        if (addr.version == 6) == ipv6:
            out.append(str(addr) if normalise else ip.strip())
    return out


def _family_cidrs(cidrs: Iterable[str], ipv6: bool, normalise: bool) -> list[str]:
    """kube-proxy's MapCIDRsByIPFamily on loadBalancerSourceRanges (already whitespace-trimmed)."""
    out = []
    for cidr in cidrs:
        text = cidr.strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # "Skipping invalid CIDR"
        if (net.version == 6) == ipv6:
            # 1.28 writes the trimmed string; 1.30 writes the parsed net.IPNet (host bits cleared)
            out.append(str(net) if normalise else text)
    return out


def split_probability(n: int) -> str:
    # computeProbability: fmt.Sprintf("%0.10f", 1.0/float64(n)); Python rounds the double the same way
    return f"{1.0 / n:0.10f}"


def _q(text: str) -> str:
    return f'"{text}"'


def _service_policies(sp: ServicePort) -> tuple[bool, bool]:
    """(ExternalPolicyLocal, InternalPolicyLocal) as kube-proxy's service.go computes them (service level)."""
    # apiservice.ExternallyAccessible: by type, not by this port's node port (pkg/apis/core/v1/helper)
    accessible = sp.type in ("NodePort", "LoadBalancer") or (sp.type == "ClusterIP" and bool(sp.external_ips))
    return accessible and sp.external_traffic_policy == "Local", sp.internal_traffic_policy == "Local"


def proxied_cluster_ip(sp: ServicePort, settings: ProxySettings) -> str | None:
    """The cluster IP kube-proxy proxies the port on, None when it does not proxy it at all (headless,
    ExternalName, or no cluster IP of this proxier's family)."""
    if sp.type == "ExternalName":
        return None
    cluster_ip = next((ip for ip in sp.cluster_ips if ip and ip != "None" and is_ipv6(ip) == settings.ipv6), None)
    if cluster_ip is None:
        return None
    return canonical_ip(cluster_ip)  # ClusterIP() is a net.IP in every version


def canonical_ip(text: str) -> str | None:
    """An address as Go's net.IP prints it (IPv6 compressed, lower case); None when it is not one. The C parser:
    ten thousand services' cluster IPs through the ipaddress module cost half a second of a big check."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        return None


@dataclass(slots=True)
class EndpointCategories:
    """proxy.CategorizeEndpoints' answer (kubernetes pkg/proxy/topology.go; topology hints not modelled)."""

    cluster: list[ExpectedEndpoint]  # what KUBE-SVC balances over
    local: list[ExpectedEndpoint]  # what KUBE-SVL balances over
    reachable: list[ExpectedEndpoint]  # every endpoint that gets a KUBE-SEP chain
    has_any: bool  # any usable endpoint anywhere in the cluster


def categorize_endpoints(endpoints: list[ExpectedEndpoint], uses_cluster: bool, uses_local: bool
                         ) -> EndpointCategories:
    """Ready endpoints, else serving and terminating ones (cluster-wide and on this node separately)."""
    cluster_eps: list[ExpectedEndpoint] = []
    local_eps: list[ExpectedEndpoint] = []
    has_any = False
    if uses_cluster:
        cluster_eps = [e for e in endpoints if e.endpoint.ready]
        if not cluster_eps:
            # no ready endpoint anywhere: fall back to serving+terminating ones
            cluster_eps = [e for e in endpoints if e.endpoint.serving and e.endpoint.terminating]
        has_any = bool(cluster_eps)
    if uses_local:
        local_ready = local_terminating = False
        for e in endpoints:
            if e.endpoint.ready:
                has_any = True
                local_ready = local_ready or e.local
            elif e.endpoint.serving and e.endpoint.terminating:
                has_any = True
                local_terminating = local_terminating or e.local
        if local_ready:
            local_eps = [e for e in endpoints if e.local and e.endpoint.ready]
        elif local_terminating:
            local_eps = [e for e in endpoints if e.local and e.endpoint.serving and e.endpoint.terminating]
    if not uses_local:
        reachable = list(cluster_eps)
    elif not uses_cluster:
        reachable = list(local_eps)
    else:
        merged = {e.endpoint.address: e for e in cluster_eps}
        merged.update({e.endpoint.address: e for e in local_eps})
        reachable = sorted(merged.values(), key=lambda e: e.endpoint.address)
    return EndpointCategories(cluster_eps, local_eps, reachable, has_any)


def plan_service_port(
    sp: ServicePort, settings: ProxySettings, large_cluster: bool = False
) -> ExpectedServicePort | None:
    """What kube-proxy writes for one service port, or None when kube-proxy does not proxy it at all
    (headless, ExternalName, or no cluster IP of this proxier's family)."""
    plan = decide_service_port(sp, settings)
    if plan is not None:
        write_service_port(plan, settings, large_cluster)
    return plan


def decide_service_port(sp: ServicePort, settings: ProxySettings) -> ExpectedServicePort | None:
    """kube-proxy's decisions for one service port, with no rule written (`rules` and `nat_chains` stay empty):
    what `check` compares a node with (model/port_shape.py: expect_decisions); None as for `plan_service_port`."""
    cluster_ip = proxied_cluster_ip(sp, settings)
    if cluster_ip is None:
        return None
    return _decide(sp, settings, cluster_ip)


def write_service_port(plan: ExpectedServicePort, settings: ProxySettings, large_cluster: bool = False) -> None:
    """Write the rules of a decided port into its plan, in syncProxyRules' order."""
    writer = _PortRuleWriter(plan, settings, large_cluster)
    writer.entry_rules()
    writer.external_entry_rules()
    writer.node_port_rules()
    writer.service_chain_masquerade()
    writer.external_chain()
    writer.firewall_chain()
    writer.balancing_chains()
    writer.endpoint_chains()


def _decide(sp: ServicePort, settings: ProxySettings, cluster_ip: str) -> ExpectedServicePort:
    """kube-proxy's decisions for the port (syncProxyRules up to the first rule it writes): addresses of this
    family, the policies, which endpoints each chain uses, which chains exist, what the filter table does."""
    ipv6 = settings.ipv6
    normalise = settings.kube_minor >= 30
    protocol = sp.protocol.lower()
    name = sp.svc_port_name
    external_ips = _family_ips(sp.external_ips, ipv6, normalise)
    lb_ips = _family_ips(sp.load_balancer_ips, ipv6, normalise)
    source_ranges = _family_cidrs(sp.load_balancer_source_ranges, ipv6, normalise)
    etp_local, itp_local = _service_policies(sp)
    # apiservice.NeedsHealthCheck: LoadBalancer with externalTrafficPolicy Local only
    hcnp = (sp.health_check_node_port or None) if sp.type == "LoadBalancer" and etp_local else None
    # BaseServicePortInfo.ExternallyAccessible: this port, after the family filtering above
    externally_accessible = bool(sp.node_port) or bool(lb_ips) or bool(external_ips)
    uses_cluster_endpoints = not itp_local or externally_accessible
    uses_local_endpoints = itp_local or (etp_local and externally_accessible)

    endpoints = [ExpectedEndpoint(ep, endpoint_chain(name, protocol, ep.address), ep.node == settings.node_name)
                 for ep in sp.endpoints if is_ipv6(ep.ip) == ipv6]
    eps = categorize_endpoints(endpoints, uses_cluster_endpoints, uses_local_endpoints)
    svc_chain, svl_chain, ext_chain, fw_chain = (service_chain(p, name, protocol) for p in SERVICE_CHAIN_PREFIXES)

    has_internal = eps.has_any and (bool(eps.local) if itp_local else True)
    has_external = eps.has_any and (bool(eps.local) if etp_local else True)
    internal_filter = external_filter = None
    if not eps.has_any:
        internal_filter = external_filter = "REJECT"
    else:
        internal_filter = None if has_internal else "DROP"
        external_filter = None if has_external else "DROP"
    if not externally_accessible:
        external_filter = None  # kube-proxy computes a target but has no external destination to use it on
    uses_fw_chain = eps.has_any and bool(lb_ips) and bool(source_ranges)
    return ExpectedServicePort(
        service_port=sp,
        name=name,
        protocol=protocol,
        cluster_ip=cluster_ip,
        external_ips=external_ips,
        load_balancer_ips=lb_ips,
        source_ranges=source_ranges,
        health_check_node_port=hcnp,
        svc_chain=svc_chain,
        svl_chain=svl_chain,
        ext_chain=ext_chain,
        fw_chain=fw_chain,
        cluster_endpoints=eps.cluster,
        local_endpoints=eps.local,
        reachable_endpoints=eps.reachable,
        has_endpoints=eps.has_any,
        has_internal_endpoints=has_internal,
        has_external_endpoints=has_external,
        uses_cluster_chain=bool(eps.cluster) and uses_cluster_endpoints,
        uses_local_chain=bool(eps.local) and uses_local_endpoints,
        uses_external_chain=eps.has_any and externally_accessible,
        uses_fw_chain=uses_fw_chain,
        internal_chain=svl_chain if itp_local else svc_chain,
        external_policy_chain=svl_chain if etp_local else svc_chain,
        internal_filter=internal_filter,
        external_filter=external_filter,
        external_policy_local=etp_local,
        firewall_admits_node=uses_fw_chain and _in_any(settings.node_ip, source_ranges),
    )


def _in_any(ip: str | None, cidrs: list[str]) -> bool:
    """Whether an address is in one of the CIDRs (kube-proxy: a node's request to its own LB IP loops back with the
    VIP as source, so KUBE-FW lets the VIPs in too when a source range holds the node's IP)."""
    if not ip:
        return False
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


class _PortRuleWriter:
    """Writes one port's rules into its plan, in syncProxyRules' write order (grouping by chain happens later)."""

    def __init__(self, plan: ExpectedServicePort, settings: ProxySettings, large_cluster: bool):
        self.plan = plan
        self.settings = settings
        self.large_cluster = large_cluster
        self.proto = ("-m", plan.protocol, "-p", plan.protocol)
        self.port = str(plan.service_port.port)
        self.node_port = plan.service_port.node_port or 0
        self.detector = settings.local_detector
        self.lb_chain = plan.fw_chain if plan.uses_fw_chain else plan.ext_chain

    def nat(self, chain: str, *args: str) -> None:
        self.plan.rules.append(("nat", chain, " ".join(("-A", chain) + args)))

    def filter(self, chain: str, *args: str) -> None:
        self.plan.rules.append(("filter", chain, " ".join(("-A", chain) + args)))

    def _blackhole_comment(self, verdict: str | None) -> str:
        return _q(f"{self.plan.name} has no endpoints" if verdict == "REJECT" else
                  f"{self.plan.name} has no local endpoints")

    def entry_rules(self) -> None:
        """The cluster IP: to the internal chain, or to the filter verdict."""
        plan, name = self.plan, self.plan.name
        if plan.has_internal_endpoints:
            self.nat(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} cluster IP"), *self.proto,
                     "-d", plan.cluster_ip, "--dport", self.port, "-j", plan.internal_chain)  # fmt: skip
        else:
            self.filter(KUBE_SERVICES, "-m", "comment", "--comment", self._blackhole_comment(plan.internal_filter),
                        *self.proto, "-d", plan.cluster_ip, "--dport", self.port, "-j", plan.internal_filter)

    def external_entry_rules(self) -> None:
        """External IPs and load-balancer IPs: to the external (or firewall) chain, and the filter verdicts."""
        plan, name = self.plan, self.plan.name
        blackhole = self._blackhole_comment(plan.external_filter)
        for ip in plan.external_ips:
            if plan.has_endpoints:
                self.nat(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} external IP"), *self.proto,
                         "-d", ip, "--dport", self.port, "-j", plan.ext_chain)  # fmt: skip
            if not plan.has_external_endpoints:
                self.filter(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", blackhole, *self.proto,
                            "-d", ip, "--dport", self.port, "-j", plan.external_filter)  # fmt: skip
        for ip in plan.load_balancer_ips:
            if plan.has_endpoints:
                self.nat(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} loadbalancer IP"), *self.proto,
                         "-d", ip, "--dport", self.port, "-j", self.lb_chain)  # fmt: skip
            if plan.uses_fw_chain:
                self.filter(KUBE_PROXY_FIREWALL, "-m", "comment", "--comment",
                            _q(f"{name} traffic not accepted by {plan.fw_chain}"),
                            *self.proto, "-d", ip, "--dport", self.port, "-j", "DROP")  # fmt: skip
        if not plan.has_external_endpoints:
            for ip in plan.load_balancer_ips:
                self.filter(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", blackhole, *self.proto,
                            "-d", ip, "--dport", self.port, "-j", plan.external_filter)  # fmt: skip

    def node_port_rules(self) -> None:
        """The node port (and 1.31's counted localhost copy), its filter verdict, the health check node port."""
        plan, name, settings = self.plan, self.plan.name, self.settings
        node_port = str(self.node_port)
        if self.node_port:
            if plan.has_endpoints:
                if _localhost_node_ports(settings) and _uses_nfacct(settings):
                    self.nat(KUBE_NODEPORTS, "-m", "comment", "--comment", name, *self.proto, "-d", "127.0.0.0/8",
                             "--dport", node_port, "-m", "nfacct", "--nfacct-name", NFACCT_LOCALHOST_NODEPORTS,
                             "-j", plan.ext_chain)  # fmt: skip
                self.nat(KUBE_NODEPORTS, "-m", "comment", "--comment", name, *self.proto, "--dport", node_port,
                         "-j", plan.ext_chain)  # fmt: skip
            if not plan.has_external_endpoints:
                self.filter(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment",
                            self._blackhole_comment(plan.external_filter),
                            "-m", "addrtype", "--dst-type", "LOCAL", *self.proto, "--dport", node_port,
                            "-j", plan.external_filter)  # fmt: skip
        if plan.health_check_node_port:
            # always, even without local endpoints: the LB's health check must get its 503
            self.filter(KUBE_NODEPORTS, "-m", "comment", "--comment", _q(f"{name} health check node port"),
                        "-m", "tcp", "-p", "tcp", "--dport", str(plan.health_check_node_port),
                        "-j", "ACCEPT")  # fmt: skip

    def service_chain_masquerade(self) -> None:
        """Off-cluster traffic to a service VIP may bounce off-node, so the internal chain masquerades it."""
        plan = self.plan
        if not plan.has_internal_endpoints:
            return
        cip = ("-m", "comment", "--comment", _q(f"{plan.name} cluster IP"), *self.proto,
               "-d", plan.cluster_ip, "--dport", self.port)  # fmt: skip
        if self.settings.masquerade_all:
            self.nat(plan.internal_chain, *cip, "-j", KUBE_MARK_MASQ)
        elif self.detector:
            self.nat(plan.internal_chain, *cip, *self.detector[1], "-j", KUBE_MARK_MASQ)

    def external_chain(self) -> None:
        """KUBE-EXT: masquerade everything (Cluster), or keep pods and the node itself apart (Local)."""
        plan, name = self.plan, self.plan.name
        if not plan.uses_external_chain:
            return
        ext = plan.ext_chain
        plan.nat_chains.append(ext)
        if not plan.external_policy_local:
            self.nat(ext, "-m", "comment", "--comment", _q(f"masquerade traffic for {name} external destinations"),
                     "-j", KUBE_MARK_MASQ)  # fmt: skip
        else:
            if self.detector:
                # pods reaching an external IP of their own cluster are treated as internal traffic
                self.nat(ext, "-m", "comment", "--comment", _q(f"pod traffic for {name} external destinations"),
                         *self.detector[0], "-j", plan.svc_chain)  # fmt: skip
            # the node itself picks the (local) VIP as source, so its traffic needs masquerading
            self.nat(ext, "-m", "comment", "--comment",
                     _q(f"masquerade LOCAL traffic for {name} external destinations"),
                     "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)  # fmt: skip
            self.nat(ext, "-m", "comment", "--comment", _q(f"route LOCAL traffic for {name} external destinations"),
                     "-m", "addrtype", "--src-type", "LOCAL", "-j", plan.svc_chain)  # fmt: skip
        if plan.has_external_endpoints:
            self.nat(ext, "-j", plan.external_policy_chain)

    def firewall_chain(self) -> None:
        """KUBE-FW: loadBalancerSourceRanges (and the node itself, when a range holds its IP) go on to KUBE-EXT."""
        plan = self.plan
        if not plan.uses_fw_chain:
            return
        fw_chain = plan.fw_chain
        plan.nat_chains.append(fw_chain)
        fw = ("-m", "comment", "--comment", _q(f"{plan.name} loadbalancer IP"))
        for cidr in plan.source_ranges:
            self.nat(fw_chain, *fw, "-s", cidr, "-j", plan.ext_chain)
        if plan.firewall_admits_node:
            # a node's request to its own VIP loops back with the VIP as source
            for ip in plan.load_balancer_ips:
                self.nat(fw_chain, *fw, "-s", ip, "-j", plan.ext_chain)
        # no target: what falls off the end is not DNATed and filter KUBE-PROXY-FIREWALL drops it
        dropped = f"other traffic to {plan.name} will be dropped by KUBE-PROXY-FIREWALL"
        self.nat(fw_chain, "-m", "comment", "--comment", _q(dropped))

    def balancing_chains(self) -> None:
        plan = self.plan
        if plan.uses_cluster_chain:
            plan.nat_chains.append(plan.svc_chain)
            _service_to_endpoint_rules(plan, self.nat, plan.svc_chain, plan.cluster_endpoints, self.large_cluster)
        if plan.uses_local_chain:
            plan.nat_chains.append(plan.svl_chain)
            _service_to_endpoint_rules(plan, self.nat, plan.svl_chain, plan.local_endpoints, self.large_cluster)

    def endpoint_chains(self) -> None:
        """KUBE-SEP: the hairpin masquerade, then the DNAT (recording the client for ClientIP affinity)."""
        plan = self.plan
        affinity = plan.service_port.session_affinity == "ClientIP"
        comment = () if self.large_cluster else ("-m", "comment", "--comment", plan.name)
        for e in plan.reachable_endpoints:
            plan.nat_chains.append(e.chain)
            self.nat(e.chain, *comment, "-s", e.endpoint.ip, "-j", KUBE_MARK_MASQ)  # hairpin: a pod reaching itself
            recent = ("-m", "recent", "--name", e.chain, "--set") if affinity else ()
            self.nat(e.chain, *comment, *recent, *self.proto, "-j", "DNAT", "--to-destination", e.endpoint.address)


def _service_to_endpoint_rules(plan, nat, chain: str, endpoints: list[ExpectedEndpoint], large_cluster: bool) -> None:
    """writeServiceToEndpointRules: affinity checks first, then the 1/(n-i) random split."""
    sp = plan.service_port

    def comment(e: ExpectedEndpoint) -> tuple[str, ...]:
        return () if large_cluster else ("-m", "comment", "--comment", _q(f"{plan.name} -> {e.endpoint.address}"))

    if sp.session_affinity == "ClientIP":
        seconds = str(sp.session_affinity_timeout or 10800)
        for e in endpoints:
            nat(chain, *comment(e), "-m", "recent", "--name", e.chain, "--rcheck", "--seconds", seconds, "--reap",
                "-j", e.chain)  # fmt: skip
    n = len(endpoints)
    for i, e in enumerate(endpoints):
        stat = ("-m", "statistic", "--mode", "random", "--probability", split_probability(n - i)) if i < n - 1 else ()
        nat(chain, *comment(e), *stat, "-j", e.chain)


def _node_port_addresses(settings: ProxySettings) -> tuple[list[ipaddress._BaseNetwork], bool]:
    """proxyutil.NewNodePortAddresses: this family's CIDRs, and whether they match every address."""
    nets = []
    for text in settings.node_port_addresses:
        if text == "primary":  # 1.29+: the node's primary IP of this family
            if settings.node_ip:
                nets.append(ipaddress.ip_network(settings.node_ip))
            continue
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if (net.version == 6) == settings.ipv6:
            nets.append(net)
    if not nets or any(net.prefixlen == 0 for net in nets):
        return [ipaddress.ip_network("::/0" if settings.ipv6 else "0.0.0.0/0")], True
    return nets, False


def _localhost_node_ports(settings: ProxySettings) -> bool:
    # NewProxier: localhostNodePorts is switched off when --nodeport-addresses cannot match 127.0.0.1
    if settings.ipv6 or not settings.localhost_node_ports:
        return False
    nets, _ = _node_port_addresses(settings)
    loopback = ipaddress.ip_address("127.0.0.0")  # ContainsIPv4Loopback tests ipv4LoopbackStart
    return any(net.version == 4 and (loopback in net or net.network_address.is_loopback) for net in nets)


def _node_port_ips(settings: ProxySettings, nets) -> list[str]:
    """GetNodeIPs: the node's addresses (and its loopback) inside the --nodeport-addresses CIDRs."""
    candidates = list(settings.node_ips) + (["::1"] if settings.ipv6 else ["127.0.0.1"])
    found = set()
    for ip in candidates:
        addr = ipaddress.ip_address(ip)
        if any(addr.version == net.version and addr in net for net in nets):
            found.add(str(addr))
    # kube-proxy collects them in a Go map (random order); sort for a stable answer
    return sorted(found)


def _comment_service_name(line: str) -> str:
    """orderByCommentServiceName's key: the comment up to the first space or colon."""
    value = rule_text.comment(line)
    if value is None:
        return ""
    cut = min((i for i in (value.find(" "), value.find(":")) if i != -1), default=len(value))
    return value[:cut]


def _chain_sort_key(chain: str) -> tuple[int, str]:
    # sortIPTablesRules: KUBE-NODEPORTS, KUBE-SERVICES, other KUBE-* alphabetically, then the rest
    if chain == KUBE_NODEPORTS:
        return (0, "")
    if chain == KUBE_SERVICES:
        return (1, "")
    return (2 if chain.startswith("KUBE-") else 3, chain)


def expected_service_ports(model: ClusterModel, settings: ProxySettings) -> list[ExpectedServicePort]:
    """kube-proxy's decisions for every proxied service port on the node `settings` describes."""
    plans = [plan_service_port(sp, settings) for sp in model.service_ports]
    proxied = [plan for plan in plans if plan is not None]
    # largeClusterMode counts every endpoint kube-proxy knows for its proxied ports, usable or not
    total = sum(len([e for e in p.service_port.endpoints if is_ipv6(e.ip) == settings.ipv6]) for p in proxied)
    if total > LARGE_CLUSTER_ENDPOINTS:
        proxied = [plan_service_port(p.service_port, settings, large_cluster=True) for p in proxied]
    # kube-proxy walks a Go map; walk in name order so the output is stable (the test sort then keeps it)
    return sorted(proxied, key=lambda p: (p.service_port.service_key, p.service_port.port_name, p.protocol))


def expected_chains(model: ClusterModel, settings: ProxySettings) -> dict[tuple[str, str], list[str]]:
    """{(table, chain): rule lines} of kube-proxy's restore input, every declared chain (even empty) included,
    tables and chains in the order of `expected_restore_text`."""
    chains: dict[tuple[str, str], list[str]] = {}

    def declare(table: str, chain: str) -> None:
        chains.setdefault((table, chain), [])

    def add(table: str, chain: str, *args: str) -> None:
        chains[(table, chain)].append(" ".join(("-A", chain) + args))

    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL):
        declare("filter", chain)
    for chain in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        declare("nat", chain)

    mark = settings.mark
    add("nat", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    # clear the mark so a packet that re-traverses the stack is not masqueraded twice
    add("nat", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
    masq = ("-m", "comment", "--comment", _q("kubernetes service traffic requiring SNAT"), "-j", "MASQUERADE")
    add("nat", KUBE_POSTROUTING, *masq, *(("--random-fully",) if settings.random_fully else ()))
    add("nat", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)

    localhost_nps = _localhost_node_ports(settings)
    if localhost_nps:
        # route_localnet opens a hole (kubernetes#90259); this copy of kubelet's rule closes it
        declare("filter", KUBE_FIREWALL)
        add("filter", KUBE_FIREWALL, "-m", "comment", "--comment", _q("block incoming localnet connections"),
            "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
            "RELATED,ESTABLISHED,DNAT", "-j", "DROP")  # fmt: skip

    for plan in expected_service_ports(model, settings):
        for chain in plan.nat_chains:
            declare("nat", chain)
        for table, chain, line in plan.rules:
            declare(table, chain)
            chains[(table, chain)].append(line)

    nets, match_all = _node_port_addresses(settings)
    last = ("-m", "comment", "--comment", _q(NODEPORTS_LAST_COMMENT))
    if match_all:
        dest: tuple[str, ...] = ("-m", "addrtype", "--dst-type", "LOCAL")
        if settings.ipv6:
            dest += ("!", "-d", "::1/128")  # localhost NodePorts never work on IPv6
        elif not localhost_nps:
            dest += ("!", "-d", "127.0.0.0/8")
        add("nat", KUBE_SERVICES, *last, *dest, "-j", KUBE_NODEPORTS)
    else:
        for ip in _node_port_ips(settings, nets):
            if ipaddress.ip_address(ip).is_loopback and not localhost_nps:
                continue
            add("nat", KUBE_SERVICES, *last, "-d", ip, "-j", KUBE_NODEPORTS)

    if not (settings.kube_minor >= 29 and settings.conntrack_tcp_be_liberal):
        nfacct = ("-m", "nfacct", "--nfacct-name", NFACCT_INVALID_DROPPED) if _uses_nfacct(settings) else ()
        add("filter", KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID", *nfacct, "-j", "DROP")
    # forward marked traffic even when the FORWARD policy is DROP (NodePorts)
    add("filter", KUBE_FORWARD, "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
        "-m", "mark", "--mark", f"{mark}/{mark}", "-j", "ACCEPT")  # fmt: skip
    add("filter", KUBE_FORWARD, "-m", "comment", "--comment", _q("kubernetes forwarding conntrack rule"),
        "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")  # fmt: skip

    return _sorted_like_tests(chains)


def _uses_nfacct(settings: ProxySettings) -> bool:
    return settings.kube_minor >= 31 and settings.nfacct


def _sorted_like_tests(chains: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for table, chain in sorted(chains, key=lambda tc: (tc[0], _chain_sort_key(tc[1]))):
        lines = chains[(table, chain)]
        if chain in (KUBE_SERVICES, KUBE_NODEPORTS):
            if table == "nat" and chain == KUBE_SERVICES:
                # the nodeports jump must stay last
                lines = sorted(lines, key=lambda ln: (NODEPORTS_LAST_COMMENT in ln, _comment_service_name(ln)))
            else:
                lines = sorted(lines, key=_comment_service_name)
        out[(table, chain)] = lines
    return out


def expected_restore_text(model: ClusterModel, settings: ProxySettings) -> dict[str, str]:
    """{"filter": text, "nat": text}: kube-proxy's iptables-restore input per table, each `*table … COMMIT\\n`."""
    chains = expected_chains(model, settings)
    out = {}
    for table in ("filter", "nat"):
        names = [chain for t, chain in chains if t == table]
        lines = [f"*{table}"]
        lines += [f":{chain} - [0:0]" for chain in names]
        for chain in names:
            lines += chains[(table, chain)]
        lines.append("COMMIT")
        out[table] = "\n".join(lines) + "\n"
    return out


def restore_input(texts: dict[str, str]) -> str:
    """The single document kube-proxy hands to `iptables-restore --noflush`: filter, then nat."""
    return texts["filter"] + texts["nat"]
