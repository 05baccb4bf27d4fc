"""What kube-proxy (iptables mode, 1.28–1.32) programs on one node, computed from the API objects.

A port of `syncProxyRules()` in kubernetes v1.28.0 `pkg/proxy/iptables/proxier.go` (kube-proxy-layout.md §2),
with `proxy.CategorizeEndpoints()` (`pkg/proxy/topology.go`) for the endpoint choice. The result is kube-proxy's
iptables-restore *input* (what it writes, not what `iptables-save` prints back, see layout §2.9), sorted the way
the Go tests' `sortIPTablesRules()` sorts it, so that it equals the upstream expected dumps line for line.

Deltas up to 1.32 are behind `ProxySettings.kube_minor` (layout §2.11). Not modelled: topology-aware routing
(hints), and kube-proxy preferring the local copy of an endpoint listed twice with different nodes.

Pure: no I/O, no typer/rich/docker/kubernetes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from svcdoctor.exit_codes import InputError
from svcdoctor.model.cluster import ClusterModel, Endpoint, ServicePort
from svcdoctor.model.hashes import endpoint_chain, service_chain

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's chain; kube-proxy writes a copy of its one rule

# Above this many endpoints kube-proxy drops the comments of SVC->SEP and SEP rules (largeClusterEndpointsThreshold).
LARGE_CLUSTER_ENDPOINTS = 1000

NODEPORTS_LAST_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
# nfacct counters of kube-proxy 1.31+ (pkg/proxy/metrics); rules use them only when the counter could be created.
NFACCT_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NODEPORTS = "localhost_nps_accepted_pkts"


@dataclass(slots=True, frozen=True)
class ProxySettings:
    """The kube-proxy settings that change its iptables rules (the fake proxier's, or a real node's)."""

    node_name: str
    node_ips: tuple[str, ...] = ()  # the node's addresses; the first of the proxier's family is kube-proxy's nodeIP
    cluster_cidr: str | None = None  # DetectLocalByCIDR; None (and no local_interface) = no local detector
    masquerade_all: bool = False
    node_port_addresses: tuple[str, ...] = ()  # CIDRs (or "primary", 1.29+); empty = every local address
    random_fully: bool = True  # iptables supports MASQUERADE --random-fully (the fake proxier's does not)
    localhost_node_ports: bool = True
    masquerade_bit: int = 14
    masquerade_mark: str | None = None  # the mark as written; None = kube-proxy's fmt "%#08x" ("0x00004000")
    conntrack_tcp_be_liberal: bool = False  # 1.29+: no KUBE-FORWARD INVALID drop when the sysctl is set
    kube_minor: int = 28  # Kubernetes 1.<minor>
    nfacct: bool = False  # 1.31+: kube-proxy could create its nfacct counters
    ip_family: str = "IPv4"  # IPv4 | IPv6: which single-stack proxier this is
    # detect-local-mode BridgeInterface ("cbr0") or InterfaceNamePrefix ("veth+"), used when cluster_cidr is None
    local_interface: str | None = None

    def __post_init__(self) -> None:
        # settings come from files and ConfigMaps: refuse nonsense here, with one readable line
        for ip in self.node_ips:
            if not _valid_ip(ip):
                raise InputError(f"proxy settings: node IP {ip!r} is not an IP address")
        if self.cluster_cidr is not None:
            try:
                ipaddress.ip_network(self.cluster_cidr, strict=False)
            except ValueError:
                raise InputError(f"proxy settings: clusterCIDR {self.cluster_cidr!r} is not a CIDR") from None
        if self.ip_family not in ("IPv4", "IPv6"):
            raise InputError(f"proxy settings: ipFamily must be IPv4 or IPv6, not {self.ip_family!r}")
        if not 0 <= self.masquerade_bit <= 31:
            raise InputError(f"proxy settings: masqueradeBit {self.masquerade_bit} is outside 0..31")

    @property
    def mark(self) -> str:
        # Go's %#08x pads the digits (not the "0x") to 8: 1<<14 -> "0x00004000"
        return self.masquerade_mark or "0x%08x" % (1 << self.masquerade_bit)

    @property
    def local_detector(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(IfLocal, IfNotLocal) match arguments of kube-proxy's LocalTrafficDetector, None for the no-op one."""
        if self.cluster_cidr:
            return ("-s", self.cluster_cidr), ("!", "-s", self.cluster_cidr)
        if self.local_interface:
            return ("-i", self.local_interface), ("!", "-i", self.local_interface)
        return None

    @property
    def ipv6(self) -> bool:
        return self.ip_family == "IPv6"

    @property
    def node_ip(self) -> str | None:
        return next((ip for ip in self.node_ips if _is_ipv6(ip) == self.ipv6), None)

    @classmethod
    def from_json(cls, data: dict) -> ProxySettings:
        """From a settings document (camelCase keys, as in tests/fixtures/kube_proxy_cases/*/settings.json)."""
        known = {
            "nodeName": "node_name",
            "nodeIPs": "node_ips",
            "clusterCIDR": "cluster_cidr",
            "masqueradeAll": "masquerade_all",
            "nodePortAddresses": "node_port_addresses",
            "randomFully": "random_fully",
            "localhostNodePorts": "localhost_node_ports",
            "masqueradeBit": "masquerade_bit",
            "masqueradeMark": "masquerade_mark",
            "conntrackTCPBeLiberal": "conntrack_tcp_be_liberal",
            "kubeMinor": "kube_minor",
            "nfacct": "nfacct",
            "ipFamily": "ip_family",
            "localInterface": "local_interface",
        }
        kwargs = {}
        for key, attr in known.items():
            if key in data:
                value = data[key]
                kwargs[attr] = tuple(value or ()) if attr in ("node_ips", "node_port_addresses") else value
        if not kwargs.get("node_name"):
            raise InputError("proxy settings need a nodeName")
        return cls(**kwargs)

    def to_json(self) -> dict:
        return {
            "nodeName": self.node_name,
            "nodeIPs": list(self.node_ips),
            "clusterCIDR": self.cluster_cidr,
            "masqueradeAll": self.masquerade_all,
            "nodePortAddresses": list(self.node_port_addresses),
            "randomFully": self.random_fully,
            "localhostNodePorts": self.localhost_node_ports,
            "masqueradeBit": self.masquerade_bit,
            "masqueradeMark": self.masquerade_mark,
            "conntrackTCPBeLiberal": self.conntrack_tcp_be_liberal,
            "kubeMinor": self.kube_minor,
            "nfacct": self.nfacct,
            "ipFamily": self.ip_family,
            "localInterface": self.local_interface,
        }


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


def _is_ipv6(text: str) -> bool:
    return ":" in text


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


def _probability(n: int) -> str:
    # computeProbability: fmt.Sprintf("%0.10f", 1.0/float64(n)); Python rounds the double the same way
    return f"{1.0 / n:0.10f}"


def _q(text: str) -> str:
    return f'"{text}"'


def _service_policies(sp: ServicePort) -> tuple[bool, bool]:
    """(ExternalPolicyLocal, InternalPolicyLocal) as kube-proxy's service.go computes them (service level)."""
    # apiservice.ExternallyAccessible: by type, not by this port's node port (pkg/apis/core/v1/helper)
    accessible = sp.type in ("NodePort", "LoadBalancer") or (sp.type == "ClusterIP" and bool(sp.external_ips))
    return accessible and sp.external_traffic_policy == "Local", sp.internal_traffic_policy == "Local"


def plan_service_port(
    sp: ServicePort, settings: ProxySettings, large_cluster: bool = False
) -> ExpectedServicePort | None:
    """What kube-proxy writes for one service port, or None when kube-proxy does not proxy it at all
    (headless, ExternalName, or no cluster IP of this proxier's family)."""
    if sp.type == "ExternalName":
        return None
    ipv6 = settings.ipv6
    cluster_ip = next((ip for ip in sp.cluster_ips if ip and ip != "None" and _is_ipv6(ip) == ipv6), None)
    if cluster_ip is None or not _valid_ip(cluster_ip):
        return None
    cluster_ip = str(ipaddress.ip_address(cluster_ip))  # ClusterIP() is a net.IP in every version
    normalise = settings.kube_minor >= 30
    protocol = sp.protocol.lower()
    name = sp.svc_port_name
    external_ips = _family_ips(sp.external_ips, ipv6, normalise)
    lb_ips = _family_ips(sp.load_balancer_ips, ipv6, normalise)
    source_ranges = _family_cidrs(sp.load_balancer_source_ranges, ipv6, normalise)
    etp_local, itp_local = _service_policies(sp)
    # apiservice.NeedsHealthCheck: LoadBalancer with externalTrafficPolicy Local only
    hcnp = (sp.health_check_node_port or None) if sp.type == "LoadBalancer" and etp_local else None
    node_port = sp.node_port or 0
    # BaseServicePortInfo.ExternallyAccessible: this port, after the family filtering above
    externally_accessible = bool(node_port) or bool(lb_ips) or bool(external_ips)
    uses_cluster_endpoints = not itp_local or externally_accessible
    uses_local_endpoints = itp_local or (etp_local and externally_accessible)

    def expected(ep: Endpoint) -> ExpectedEndpoint:
        return ExpectedEndpoint(ep, endpoint_chain(name, protocol, ep.address), ep.node == settings.node_name)

    endpoints = [expected(ep) for ep in sp.endpoints if _is_ipv6(ep.ip) == ipv6]

    # proxy.CategorizeEndpoints (topology hints not modelled)
    cluster_eps: list[ExpectedEndpoint] = []
    local_eps: list[ExpectedEndpoint] = []
    has_endpoints = False
    if uses_cluster_endpoints:
        cluster_eps = [e for e in endpoints if e.endpoint.ready]
        if not cluster_eps:
            # no ready endpoint anywhere: fall back to serving+terminating ones
            cluster_eps = [e for e in endpoints if e.endpoint.serving and e.endpoint.terminating]
        has_endpoints = bool(cluster_eps)
    if uses_local_endpoints:
        local_ready = local_terminating = False
        for e in endpoints:
            if e.endpoint.ready:
                has_endpoints = True
                local_ready = local_ready or e.local
            elif e.endpoint.serving and e.endpoint.terminating:
                has_endpoints = True
                local_terminating = local_terminating or e.local
        if local_ready:
            local_eps = [e for e in endpoints if e.local and e.endpoint.ready]
        elif local_terminating:
            local_eps = [e for e in endpoints if e.local and e.endpoint.serving and e.endpoint.terminating]
    if not uses_local_endpoints:
        reachable = list(cluster_eps)
    elif not uses_cluster_endpoints:
        reachable = list(local_eps)
    else:
        merged = {e.endpoint.address: e for e in cluster_eps}
        merged.update({e.endpoint.address: e for e in local_eps})
        reachable = sorted(merged.values(), key=lambda e: e.endpoint.address)

    svc_chain, svl_chain, ext_chain, fw_chain = (
        service_chain(prefix, name, protocol) for prefix in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")
    )

    uses_cluster_chain = bool(cluster_eps) and uses_cluster_endpoints
    uses_local_chain = bool(local_eps) and uses_local_endpoints
    internal_chain, has_internal = svc_chain, has_endpoints
    if itp_local:
        internal_chain = svl_chain
        has_internal = has_internal and bool(local_eps)
    external_policy_chain, has_external = svc_chain, has_endpoints
    if etp_local:
        external_policy_chain = svl_chain
        has_external = has_external and bool(local_eps)
    uses_ext_chain = has_endpoints and externally_accessible
    uses_fw_chain = has_endpoints and bool(lb_ips) and bool(source_ranges)
    lb_chain = fw_chain if uses_fw_chain else ext_chain

    internal_filter = external_filter = None
    internal_comment = external_comment = ""
    if not has_endpoints:
        internal_filter = external_filter = "REJECT"
        internal_comment = external_comment = _q(f"{name} has no endpoints")
    else:
        if not has_internal:
            internal_filter, internal_comment = "DROP", _q(f"{name} has no local endpoints")
        if not has_external:
            external_filter, external_comment = "DROP", _q(f"{name} has no local endpoints")
    if not externally_accessible:
        external_filter = None  # kube-proxy computes a target but has no external destination to use it on

    plan = ExpectedServicePort(
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
        cluster_endpoints=cluster_eps,
        local_endpoints=local_eps,
        reachable_endpoints=reachable,
        has_endpoints=has_endpoints,
        has_internal_endpoints=has_internal,
        has_external_endpoints=has_external,
        uses_cluster_chain=uses_cluster_chain,
        uses_local_chain=uses_local_chain,
        uses_external_chain=uses_ext_chain,
        uses_fw_chain=uses_fw_chain,
        internal_chain=internal_chain,
        external_policy_chain=external_policy_chain,
        internal_filter=internal_filter,
        external_filter=external_filter,
    )

    def nat(chain: str, *args: str) -> None:
        plan.rules.append(("nat", chain, " ".join(("-A", chain) + args)))

    def filt(chain: str, *args: str) -> None:
        plan.rules.append(("filter", chain, " ".join(("-A", chain) + args)))

    proto = ("-m", protocol, "-p", protocol)
    port = str(sp.port)
    detector = settings.local_detector

    # The rules below follow syncProxyRules' write order; grouping by chain happens later.
    if has_internal:
        nat(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} cluster IP"), *proto,
            "-d", cluster_ip, "--dport", port, "-j", internal_chain)  # fmt: skip
    else:
        filt(KUBE_SERVICES, "-m", "comment", "--comment", internal_comment, *proto,
             "-d", cluster_ip, "--dport", port, "-j", internal_filter)  # fmt: skip

    for ip in external_ips:
        if has_endpoints:
            nat(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} external IP"), *proto,
                "-d", ip, "--dport", port, "-j", ext_chain)  # fmt: skip
        if not has_external:
            filt(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", external_comment, *proto,
                 "-d", ip, "--dport", port, "-j", external_filter)  # fmt: skip

    for ip in lb_ips:
        if has_endpoints:
            nat(KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{name} loadbalancer IP"), *proto,
                "-d", ip, "--dport", port, "-j", lb_chain)  # fmt: skip
        if uses_fw_chain:
            filt(KUBE_PROXY_FIREWALL, "-m", "comment", "--comment", _q(f"{name} traffic not accepted by {fw_chain}"),
                 *proto, "-d", ip, "--dport", port, "-j", "DROP")  # fmt: skip
    if not has_external:
        for ip in lb_ips:
            filt(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", external_comment, *proto,
                 "-d", ip, "--dport", port, "-j", external_filter)  # fmt: skip

    if node_port:
        if has_endpoints:
            if _localhost_node_ports(settings) and settings.kube_minor >= 31 and settings.nfacct:
                nat(KUBE_NODEPORTS, "-m", "comment", "--comment", name, *proto, "-d", "127.0.0.0/8",
                    "--dport", str(node_port), "-m", "nfacct", "--nfacct-name", NFACCT_LOCALHOST_NODEPORTS,
                    "-j", ext_chain)  # fmt: skip
            nat(KUBE_NODEPORTS, "-m", "comment", "--comment", name, *proto, "--dport", str(node_port), "-j", ext_chain)
        if not has_external:
            filt(KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", external_comment,
                 "-m", "addrtype", "--dst-type", "LOCAL", *proto, "--dport", str(node_port),
                 "-j", external_filter)  # fmt: skip

    if hcnp:
        # always, even without local endpoints: the LB's health check must get its 503
        filt(KUBE_NODEPORTS, "-m", "comment", "--comment", _q(f"{name} health check node port"),
             "-m", "tcp", "-p", "tcp", "--dport", str(hcnp), "-j", "ACCEPT")  # fmt: skip

    if has_internal:
        cip = ("-m", "comment", "--comment", _q(f"{name} cluster IP"), *proto, "-d", cluster_ip, "--dport", port)
        if settings.masquerade_all:
            nat(internal_chain, *cip, "-j", KUBE_MARK_MASQ)
        elif detector:
            # off-cluster traffic to a service VIP may bounce off-node, so it is masqueraded
            nat(internal_chain, *cip, *detector[1], "-j", KUBE_MARK_MASQ)

    if uses_ext_chain:
        plan.nat_chains.append(ext_chain)
        if not etp_local:
            nat(ext_chain, "-m", "comment", "--comment", _q(f"masquerade traffic for {name} external destinations"),
                "-j", KUBE_MARK_MASQ)  # fmt: skip
        else:
            if detector:
                # pods reaching an external IP of their own cluster are treated as internal traffic
                nat(ext_chain, "-m", "comment", "--comment", _q(f"pod traffic for {name} external destinations"),
                    *detector[0], "-j", svc_chain)  # fmt: skip
            # the node itself picks the (local) VIP as source, so its traffic needs masquerading
            nat(ext_chain, "-m", "comment", "--comment",
                _q(f"masquerade LOCAL traffic for {name} external destinations"),
                "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)  # fmt: skip
            nat(ext_chain, "-m", "comment", "--comment", _q(f"route LOCAL traffic for {name} external destinations"),
                "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_chain)  # fmt: skip
        if has_external:
            nat(ext_chain, "-j", external_policy_chain)

    if uses_fw_chain:
        plan.nat_chains.append(fw_chain)
        fw = ("-m", "comment", "--comment", _q(f"{name} loadbalancer IP"))
        node_ip = settings.node_ip
        allow_from_node = False
        for cidr in source_ranges:
            nat(fw_chain, *fw, "-s", cidr, "-j", ext_chain)
            if node_ip and ipaddress.ip_address(node_ip) in ipaddress.ip_network(cidr, strict=False):
                allow_from_node = True
        if allow_from_node:
            # a node's request to its own VIP loops back with the VIP as source
            for ip in lb_ips:
                nat(fw_chain, *fw, "-s", ip, "-j", ext_chain)
        # no target: what falls off the end is not DNATed and filter KUBE-PROXY-FIREWALL drops it
        dropped = f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
        nat(fw_chain, "-m", "comment", "--comment", _q(dropped))

    if uses_cluster_chain:
        plan.nat_chains.append(svc_chain)
        _service_to_endpoint_rules(plan, nat, svc_chain, cluster_eps, large_cluster)
    if uses_local_chain:
        plan.nat_chains.append(svl_chain)
        _service_to_endpoint_rules(plan, nat, svl_chain, local_eps, large_cluster)

    affinity = sp.session_affinity == "ClientIP"
    for e in reachable:
        plan.nat_chains.append(e.chain)
        comment = () if large_cluster else ("-m", "comment", "--comment", name)
        nat(e.chain, *comment, "-s", e.endpoint.ip, "-j", KUBE_MARK_MASQ)  # hairpin: a pod reaching itself
        recent = ("-m", "recent", "--name", e.chain, "--set") if affinity else ()
        nat(e.chain, *comment, *recent, *proto, "-j", "DNAT", "--to-destination", e.endpoint.address)
    return plan


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
        stat = ("-m", "statistic", "--mode", "random", "--probability", _probability(n - i)) if i < n - 1 else ()
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
    m = re.search(r'--comment ("[^"]*"|\S+)', line)
    if not m:
        return ""
    value = m.group(1).strip('"')
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
    total = sum(len([e for e in p.service_port.endpoints if _is_ipv6(e.ip) == settings.ipv6]) for p in proxied)
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


def settings_from_kube_proxy_config(
    config: dict,
    node_name: str,
    node_ips: Iterable[str] = (),
    pod_cidrs: Iterable[str] = (),
    kube_minor: int = 28,
    random_fully: bool = True,
) -> ProxySettings:
    """ProxySettings from kube-proxy's KubeProxyConfiguration (the parsed `config.conf` of ConfigMap
    kube-system/kube-proxy) for one node. `pod_cidrs` is the node's spec.podCIDRs (detectLocalMode NodeCIDR);
    unset fields take kube-proxy's defaults (v1alpha1 defaults.go)."""
    node_ips = tuple(node_ips)
    ipv6 = bool(node_ips) and _is_ipv6(node_ips[0])

    def of_family(cidrs: Iterable[str]) -> str | None:
        return next((c.strip() for c in cidrs if c.strip() and _is_ipv6(c) == ipv6), None)

    iptables = config.get("iptables") or {}
    detect = config.get("detectLocal") or {}
    mode = config.get("detectLocalMode") or "ClusterCIDR"
    cluster_cidr = local_interface = None
    if mode == "ClusterCIDR":
        cluster_cidr = of_family((config.get("clusterCIDR") or "").split(","))
    elif mode == "NodeCIDR":
        cluster_cidr = of_family(pod_cidrs)
    elif mode == "BridgeInterface":
        local_interface = detect.get("bridgeInterface") or None
    elif mode == "InterfaceNamePrefix":
        prefix = detect.get("interfaceNamePrefix")
        local_interface = f"{prefix}+" if prefix else None
    bit = iptables.get("masqueradeBit")
    if bit is not None and not (isinstance(bit, int) and not isinstance(bit, bool)):
        raise InputError(f"kube-proxy config: iptables.masqueradeBit {bit!r} is not a number")
    localhost = iptables.get("localhostNodePorts")
    return ProxySettings(
        node_name=node_name,
        node_ips=node_ips,
        cluster_cidr=cluster_cidr,
        local_interface=local_interface,
        masquerade_all=bool(iptables.get("masqueradeAll")),
        node_port_addresses=tuple(config.get("nodePortAddresses") or ()),
        random_fully=random_fully,
        localhost_node_ports=True if localhost is None else bool(localhost),
        masquerade_bit=14 if bit is None else bit,
        conntrack_tcp_be_liberal=bool((config.get("conntrack") or {}).get("tcpBeLiberal")),
        kube_minor=kube_minor,
        ip_family="IPv6" if ipv6 else "IPv4",
    )


# --- settings from a node's rules -------------------------------------------------------------------------

_WORD = re.compile(r'"[^"]*"|\S+')
_COUNTER_PREFIX = re.compile(r"^\[\d+:\d+\]\s*")


def _words(line: str) -> list[str]:
    line = _COUNTER_PREFIX.sub("", line.strip())
    words = [w.strip('"') if w.startswith('"') else w for w in _WORD.findall(line)]
    # `iptables -S -v` puts "-c PKTS BYTES" before the target
    out, i = [], 0
    while i < len(words):
        if words[i] == "-c" and i + 2 < len(words) and words[i + 1].isdigit() and words[i + 2].isdigit():
            i += 3
            continue
        out.append(words[i])
        i += 1
    return out


def _option(words: list[str], *names: str) -> tuple[str | None, bool]:
    """(value, negated) of the first of `names` in a rule's words."""
    for i, w in enumerate(words[:-1]):
        if w in names:
            return words[i + 1], i > 0 and words[i - 1] == "!"
    return None, False


def _hex(value: str | None) -> int | None:
    """0x4000, 0x00004000 or 0x4000/0x4000 (value/mask) -> 16384."""
    try:
        return int(value.split("/")[0], 16) if value else None
    except ValueError:
        return None


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _strip_host_mask(cidr: str) -> str:
    # iptables-save prints "-d 10.96.0.1/32"; kube-proxy wrote "-d 10.96.0.1"
    return cidr[:-3] if cidr.endswith("/32") else cidr[:-4] if cidr.endswith("/128") else cidr


def infer_settings_from_rules(
    lines: Iterable[str],
    node_name: str = "",
    node_ips: Iterable[str] = (),
    kube_minor: int | None = None,
) -> ProxySettings:
    """Guess the kube-proxy settings behind a node's rules (`-A …` lines of nat and filter, in kube-proxy's or in
    iptables-save's spelling, with or without counters). Services that exist decide most of it:

    * clusterCIDR: `! -s X` on the ClusterIP masquerade rule of a KUBE-SVC/KUBE-SVL chain, or `-s X` on an
      ETP=Local "pod traffic" rule (`-i IFACE` there: an interface detector); none (with services) = no detector;
    * masqueradeAll: the ClusterIP masquerade rule carries no source condition;
    * --random-fully on the MASQUERADE rule; the mark bit from KUBE-MARK-MASQ;
    * localhostNodePorts false when the nodeports jump excludes 127.0.0.0/8; nodePortAddresses from `-d IP` jumps;
    * conntrack liberal (1.29+) when KUBE-FORWARD has no INVALID drop; nfacct matches mean 1.31+.
    """
    cluster_cidr: str | None = None
    local_interface: str | None = None
    masq_all_votes = detector_votes = 0
    random_fully = False
    mark_bit = 14
    mark_text: str | None = None
    localhost = True
    nodeport_ips: list[str] = []
    saw_forward = saw_invalid_drop = nfacct = False
    ipv6 = None
    for line in lines:
        words = _words(line)
        if len(words) < 2 or words[0] != "-A":
            continue
        chain = words[1]
        target, _ = _option(words, "-j", "--jump")
        comment, _ = _option(words, "--comment")
        if "nfacct" in words:
            nfacct = True
        if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")) and target == KUBE_MARK_MASQ:
            dest, _ = _option(words, "-d", "--destination")
            if dest is None:
                continue  # not the ClusterIP rule
            ipv6 = _is_ipv6(dest) if ipv6 is None else ipv6
            src, negated = _option(words, "-s", "--source")
            iface, iface_negated = _option(words, "-i", "--in-interface")
            if src is not None and negated:
                cluster_cidr = cluster_cidr or src
                detector_votes += 1
            elif iface is not None and iface_negated:
                local_interface = local_interface or iface  # BridgeInterface / InterfaceNamePrefix detector
                detector_votes += 1
            else:
                masq_all_votes += 1
        elif chain.startswith("KUBE-EXT-") and comment and comment.startswith("pod traffic for "):
            src, negated = _option(words, "-s", "--source")
            iface, iface_negated = _option(words, "-i", "--in-interface")
            if src is not None and not negated:
                cluster_cidr = cluster_cidr or src
            elif iface is not None and not iface_negated:
                local_interface = local_interface or iface
        elif chain == KUBE_POSTROUTING and target == "MASQUERADE":
            random_fully = "--random-fully" in words
        elif chain == KUBE_MARK_MASQ and target == "MARK":
            or_mark, _ = _option(words, "--or-mark")
            if or_mark:
                mark_text = or_mark  # kube-proxy's own spelling (restore input); iptables-save prints --set-xmark
            bits = _hex(or_mark or _option(words, "--set-xmark", "--set-mark")[0])
            if bits and bits & (bits - 1) == 0:
                mark_bit = bits.bit_length() - 1
        elif chain == KUBE_SERVICES and target == KUBE_NODEPORTS:
            dest, negated = _option(words, "-d", "--destination")
            if dest is not None and negated and dest.startswith("127."):
                localhost = False
            elif dest is not None and negated and dest.startswith("::1"):
                ipv6 = True
            elif dest is not None and not negated and _valid_ip(_strip_host_mask(dest)):
                nodeport_ips.append(_strip_host_mask(dest))
        elif chain == KUBE_FORWARD:
            saw_forward = True
            state, _ = _option(words, "--ctstate")
            if state == "INVALID" and target == "DROP":
                saw_invalid_drop = True
    node_ips = tuple(node_ips)
    if ipv6 is None:
        ipv6 = bool(node_ips) and _is_ipv6(node_ips[0])
    liberal = saw_forward and not saw_invalid_drop
    minor = kube_minor if kube_minor is not None else (31 if nfacct else 29 if liberal else 28)
    masq_all = masq_all_votes > 0 and masq_all_votes >= detector_votes
    nodeport_cidrs = tuple(f"{ip}/128" if _is_ipv6(ip) else f"{ip}/32" for ip in nodeport_ips)
    if nodeport_cidrs and any(ipaddress.ip_address(ip).is_loopback for ip in nodeport_ips):
        localhost = True
    elif nodeport_cidrs:
        localhost = False
    return ProxySettings(
        node_name=node_name,
        node_ips=node_ips,
        cluster_cidr=cluster_cidr,
        local_interface=None if cluster_cidr else local_interface,
        masquerade_all=masq_all,
        node_port_addresses=nodeport_cidrs,
        random_fully=random_fully,
        localhost_node_ports=localhost,
        masquerade_bit=mark_bit,
        masquerade_mark=mark_text if _hex(mark_text) == 1 << mark_bit else None,
        conntrack_tcp_be_liberal=liberal,
        kube_minor=minor,
        nfacct=nfacct,
        ip_family="IPv6" if ipv6 else "IPv4",
    )
