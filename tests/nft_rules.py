"""Small kube-proxy-shaped nftables rulesets for tests, written from a tiny model of services (kube-proxy's input
syntax, as its knftables transactions write it; docs/explanation/kube-proxy-nftables.md), in two layouts:
"v1.34-1.35" (endpoint chains, `numgen … vmap`, `mark-for-masquerade`) and "v1.36" (DNAT through a numgen map,
inline marks, `hairpin-connections`). Names are computed with svcdoctor.model.nft.names, so a test that changes
a name by hand sees `hash-mismatch`.

    text = ruleset([Svc("ns1", "web", "172.30.0.41", 80, endpoints=["10.180.0.1", "10.180.0.2"], node_port=30080)])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.nft.names import endpoint_base, expected_name, service_base

POD_CIDR = "10.0.0.0/8"
SERVICE_CIDR = "172.30.0.0/16"
NODE_IP = "192.168.0.2"


@dataclass
class Svc:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    endpoints: list[str] = field(default_factory=list)  # IPs; target port = port
    node_port: int | None = None
    port_name: str = "p80"
    protocol: str = "tcp"
    affinity_seconds: int | None = None
    local_endpoints: list[str] = field(default_factory=list)  # for the v1.36 hairpin set


def ruleset(services: list[Svc], layout: str = "v1.34-1.35") -> str:
    lines = [
        "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }",
        "add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
        "add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }",
        "add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }",
        "add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }",
        "add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }",
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add chain ip kube-proxy services",
        "add chain ip kube-proxy masquerading",
        "add chain ip kube-proxy firewall-check",
        "add chain ip kube-proxy cluster-ips-check",
        "add chain ip kube-proxy service-endpoints-check",
        "add chain ip kube-proxy nodeport-endpoints-check",
        "add chain ip kube-proxy reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
        "add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }",
        "add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }",
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }",
        "add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; }",
        "add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }",
        "add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }",
        "add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }",
    ]
    if layout == "v1.36":
        lines.append("add set ip kube-proxy hairpin-connections { type ipv4_addr . ipv4_addr . inet_proto . "
                     "inet_service ; comment \"service hairpin connections\" ; }")
    else:
        lines.append("add chain ip kube-proxy mark-for-masquerade")
    rules = [
        "add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check",
        "add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check",
        "add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check",
        "add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check",
        "add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check",
        "add rule ip kube-proxy filter-input ct state new jump service-endpoints-check",
        "add rule ip kube-proxy filter-output ct state new jump service-endpoints-check",
        "add rule ip kube-proxy filter-output ct state new jump cluster-ips-check",
        "add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        "add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject",
        f"add rule ip kube-proxy cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop",
        "add rule ip kube-proxy nat-prerouting jump services",
        "add rule ip kube-proxy nat-output jump services",
        "add rule ip kube-proxy nat-postrouting jump masquerading",
        "add rule ip kube-proxy reject-chain reject",
        "add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        "add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport "
        "vmap @no-endpoint-nodeports",
    ]
    if layout == "v1.36":
        rules += [
            "add rule ip kube-proxy masquerading mark and 0x4000 != 0 mark set mark xor 0x4000 masquerade fully-random",
            "add rule ip kube-proxy masquerading ct status dnat ip saddr . ip daddr . meta l4proto . th dport "
            "@hairpin-connections masquerade fully-random",
            f"add rule ip kube-proxy services ip daddr @cluster-ips ip saddr != {POD_CIDR} mark set mark or 0x4000",
        ]
    else:
        rules += [
            "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000",
            "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
            "add rule ip kube-proxy masquerading mark set mark xor 0x4000",
            "add rule ip kube-proxy masquerading masquerade fully-random",
        ]
    rules += [
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    ]
    elements = [f"add element ip kube-proxy nodeport-ips {{ {NODE_IP} }}"]
    for svc in services:
        _service(svc, layout, lines, rules, elements)
    return "\n".join(lines + rules + elements) + "\n"


def _service(svc: Svc, layout: str, lines: list, rules: list, elements: list) -> None:
    base = service_base(svc.namespace, svc.name, svc.protocol, svc.port_name)
    comment = f"{svc.namespace}/{svc.name}:{svc.port_name}"
    key = f"{svc.cluster_ip} . {svc.protocol} . {svc.port}"
    elements.append(f"add element ip kube-proxy cluster-ips {{ {svc.cluster_ip} }}")
    if not svc.endpoints:
        elements.append(f"add element ip kube-proxy no-endpoint-services {{ {key} comment \"{comment}\" : "
                        "goto reject-chain }")
        if svc.node_port:
            elements.append(f"add element ip kube-proxy no-endpoint-nodeports {{ {svc.protocol} . {svc.node_port} "
                            f"comment \"{comment}\" : goto reject-chain }}")
        return
    chain = expected_name("service", base)
    lines.append(f"add chain ip kube-proxy {chain}")
    elements.append(f"add element ip kube-proxy service-ips {{ {key} : goto {chain} }}")
    if svc.node_port:
        ext = expected_name("external", base)
        lines.append(f"add chain ip kube-proxy {ext}")
        mark = "jump mark-for-masquerade" if layout != "v1.36" else "mark set mark or 0x4000"
        rules.append(f"add rule ip kube-proxy {ext} {mark}")
        rules.append(f"add rule ip kube-proxy {ext} goto {chain}")
        elements.append(f"add element ip kube-proxy service-nodeports {{ {svc.protocol} . {svc.node_port} : "
                        f"goto {ext} }}")
    if layout != "v1.36":
        rules.append(f"add rule ip kube-proxy {chain} ip daddr {svc.cluster_ip} ip saddr != {POD_CIDR} "
                     "jump mark-for-masquerade")
    endpoint_chains = []
    for ip in svc.endpoints:
        ep_base = endpoint_base(base, ip, svc.port)
        if layout != "v1.36" or svc.affinity_seconds:
            ep = expected_name("endpoint", ep_base)
            endpoint_chains.append(ep)
            lines.append(f"add chain ip kube-proxy {ep}")
            if layout != "v1.36":
                rules.append(f"add rule ip kube-proxy {ep} ip saddr {ip} jump mark-for-masquerade")
            if svc.affinity_seconds:
                aff = expected_name("affinity", ep_base)
                lines.append(f"add set ip kube-proxy {aff} {{ type ipv4_addr ; flags dynamic,timeout ; "
                             f"timeout {svc.affinity_seconds}s ; }}")
                rules.append(f"add rule ip kube-proxy {ep} update @{aff} {{ ip saddr }}")
                rules.append(f"add rule ip kube-proxy {chain} ip saddr @{aff} goto {ep}")
            rules.append(f"add rule ip kube-proxy {ep} meta l4proto {svc.protocol} dnat to {ip}:{svc.port}")
    n = len(svc.endpoints)
    if endpoint_chains:
        branches = " , ".join(f"{i} : goto {ep}" for i, ep in enumerate(endpoint_chains))
        rules.append(f"add rule ip kube-proxy {chain} numgen random mod {n} vmap {{ {branches} }}")
    else:
        branches = " , ".join(f"{i} : {ip} . {svc.port}" for i, ip in enumerate(svc.endpoints))
        rules.append(f"add rule ip kube-proxy {chain} meta l4proto {svc.protocol} dnat ip addr . port to numgen "
                     f"random mod {n} map {{ {branches} }}")
    for ip in svc.local_endpoints if layout == "v1.36" else ():
        elements.append(f"add element ip kube-proxy hairpin-connections {{ {ip} . {ip} . {svc.protocol} . "
                        f"{svc.port} }}")
