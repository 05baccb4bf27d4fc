"""The kube-proxy settings that change its iptables rules, for one node: from kube-proxy's ConfigMap, else read
back from the node's own rules.

Only what changes the rules of kube-proxy's `syncProxyRules()` (kubernetes pkg/proxy/iptables/proxier.go) is
kept: the local-traffic detector, masquerading, node port addresses, the mark bit, and version deltas
(docs/reference/kube-proxy-layout.md §2.11).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from svcdoctor.errors import InputError
from svcdoctor.model import rule_text
from svcdoctor.model.hashes import (
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_SERVICES,
    LOCAL_CHAIN_PREFIX,
    CLUSTER_CHAIN_PREFIX,
    EXTERNAL_CHAIN_PREFIX,
)
from svcdoctor.model.rules import Chain, NodeRules

SETTINGS_SAMPLE = 64  # service chains read to guess the proxy settings: they all say the same thing


def is_ipv6(text: str) -> bool:
    return ":" in text


def valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
            if not valid_ip(ip):
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
        return next((ip for ip in self.node_ips if is_ipv6(ip) == self.ipv6), None)

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
    ipv6 = bool(node_ips) and is_ipv6(node_ips[0])

    def of_family(cidrs: Iterable[str]) -> str | None:
        return next((c.strip() for c in cidrs if c.strip() and is_ipv6(c) == ipv6), None)

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

class _RuleReading:
    """What a node's rules say about the settings, rule by rule; `settings()` weighs it at the end."""

    def __init__(self) -> None:
        self.cluster_cidr: str | None = None
        self.local_interface: str | None = None
        self.masq_all_votes = 0
        self.detector_votes = 0
        self.random_fully = False
        self.mark_bit = 14
        self.mark_text: str | None = None
        self.localhost = True
        self.nodeport_ips: list[str] = []
        self.saw_forward = False
        self.saw_invalid_drop = False
        self.nfacct = False
        self.ipv6: bool | None = None

    def read(self, line: str) -> None:
        words = rule_text.words(line)
        if len(words) < 2 or words[0] != "-A":
            return
        chain = words[1]
        target, _ = rule_text.option_of_words(words, "-j", "--jump")
        if "nfacct" in words:
            self.nfacct = True
        if chain.startswith((CLUSTER_CHAIN_PREFIX, LOCAL_CHAIN_PREFIX)) and target == KUBE_MARK_MASQ:
            self.service_masquerade(words)
        elif chain.startswith(EXTERNAL_CHAIN_PREFIX):
            self.pod_traffic(words)
        elif chain == KUBE_POSTROUTING and target == "MASQUERADE":
            self.random_fully = "--random-fully" in words
        elif chain == KUBE_MARK_MASQ and target == "MARK":
            self.mark(words)
        elif chain == KUBE_SERVICES and target == KUBE_NODEPORTS:
            self.nodeports_jump(words)
        elif chain == KUBE_FORWARD:
            self.saw_forward = True
            state, _ = rule_text.option_of_words(words, "--ctstate")
            if state == "INVALID" and target == "DROP":
                self.saw_invalid_drop = True

    def service_masquerade(self, words: list[str]) -> None:
        """The ClusterIP rule of KUBE-SVC/SVL masquerades what does not come from a pod (`! -s CIDR`,
        `! -i IFACE`), or everything (masqueradeAll)."""
        dest, _ = rule_text.option_of_words(words, "-d", "--destination")
        if dest is None:
            return  # not the ClusterIP rule
        self.ipv6 = is_ipv6(dest) if self.ipv6 is None else self.ipv6
        src, negated = rule_text.option_of_words(words, "-s", "--source")
        iface, iface_negated = rule_text.option_of_words(words, "-i", "--in-interface")
        if src is not None and negated:
            self.cluster_cidr = self.cluster_cidr or src
            self.detector_votes += 1
        elif iface is not None and iface_negated:
            # detect-local-mode BridgeInterface / InterfaceNamePrefix
            self.local_interface = self.local_interface or iface
            self.detector_votes += 1
        else:
            self.masq_all_votes += 1

    def pod_traffic(self, words: list[str]) -> None:
        """The "pod traffic for … external destinations" rule of an ETP=Local KUBE-EXT picks pods by the
        detector's IfLocal match."""
        comment, _ = rule_text.option_of_words(words, "--comment")
        if not (comment and comment.startswith("pod traffic for ")):
            return
        src, negated = rule_text.option_of_words(words, "-s", "--source")
        iface, iface_negated = rule_text.option_of_words(words, "-i", "--in-interface")
        if src is not None and not negated:
            self.cluster_cidr = self.cluster_cidr or src
        elif iface is not None and not iface_negated:
            self.local_interface = self.local_interface or iface

    def mark(self, words: list[str]) -> None:
        or_mark, _ = rule_text.option_of_words(words, "--or-mark")
        if or_mark:
            self.mark_text = or_mark  # kube-proxy's own spelling (restore input); iptables-save prints --set-xmark
        bits = rule_text.hex_mark(or_mark or rule_text.option_of_words(words, "--set-xmark", "--set-mark")[0])
        if bits and bits & (bits - 1) == 0:
            self.mark_bit = bits.bit_length() - 1

    def nodeports_jump(self, words: list[str]) -> None:
        """`! -d 127.0.0.0/8`: localhostNodePorts false; `! -d ::1/128`: IPv6; `-d IP`: nodePortAddresses."""
        dest, negated = rule_text.option_of_words(words, "-d", "--destination")
        if dest is None:
            return
        if negated and dest.startswith("127."):
            self.localhost = False
        elif negated and dest.startswith("::1"):
            self.ipv6 = True
        elif not negated and valid_ip(rule_text.address(dest)):
            self.nodeport_ips.append(rule_text.address(dest))

    def settings(self, node_name: str, node_ips: tuple[str, ...], kube_minor: int | None) -> ProxySettings:
        ipv6 = self.ipv6
        if ipv6 is None:
            ipv6 = bool(node_ips) and is_ipv6(node_ips[0])
        liberal = self.saw_forward and not self.saw_invalid_drop
        minor = kube_minor if kube_minor is not None else (31 if self.nfacct else 29 if liberal else 28)
        nodeport_cidrs = tuple(f"{ip}/128" if is_ipv6(ip) else f"{ip}/32" for ip in self.nodeport_ips)
        localhost = self.localhost
        if nodeport_cidrs:
            localhost = any(ipaddress.ip_address(ip).is_loopback for ip in self.nodeport_ips)
        return ProxySettings(
            node_name=node_name,
            node_ips=node_ips,
            cluster_cidr=self.cluster_cidr,
            local_interface=None if self.cluster_cidr else self.local_interface,
            masquerade_all=self.masq_all_votes > 0 and self.masq_all_votes >= self.detector_votes,
            node_port_addresses=nodeport_cidrs,
            random_fully=self.random_fully,
            localhost_node_ports=localhost,
            masquerade_bit=self.mark_bit,
            masquerade_mark=self.mark_text if rule_text.hex_mark(self.mark_text) == 1 << self.mark_bit else None,
            conntrack_tcp_be_liberal=liberal,
            kube_minor=minor,
            nfacct=self.nfacct,
            ip_family="IPv6" if ipv6 else "IPv4",
        )


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
    reading = _RuleReading()
    for line in lines:
        reading.read(line)
    return reading.settings(node_name, tuple(node_ips), kube_minor)


# --- settings per node --------------------------------------------------------------------------------------

def _chain_lines(chain: Chain | None) -> list[str]:
    return chain.lines() if chain is not None else []


def _settings_lines(rules: NodeRules) -> list[str]:
    """The lines that tell kube-proxy's settings: the global chains and a sample of the per-service ones."""
    out: list[str] = []
    nat = rules.table("nat")
    if nat is not None:
        for name in (KUBE_POSTROUTING, KUBE_MARK_MASQ):
            out += _chain_lines(nat.chains.get(name))
        out += [ln for ln in _chain_lines(nat.chains.get(KUBE_SERVICES))
                if rule_text.mentions(ln, KUBE_NODEPORTS) and rule_text.target_name(ln) == KUBE_NODEPORTS]
        out += _sample_service_chains(nat.chains)
    flt = rules.table("filter")
    if flt is not None:
        out += _chain_lines(flt.chains.get(KUBE_FORWARD))
    return [rule_text.strip_counters(ln) for ln in out]


def _sample_service_chains(chains: dict[str, Chain]) -> list[str]:
    """The first rule of up to SETTINGS_SAMPLE balancing chains (their ClusterIP masquerade rule) and of as many
    external chains (an ETP=Local one starts with its pod-traffic rule)."""
    out: list[str] = []
    svc = ext = 0
    for name, chain in chains.items():
        if svc >= SETTINGS_SAMPLE and ext >= SETTINGS_SAMPLE:
            break
        if name.startswith((CLUSTER_CHAIN_PREFIX, LOCAL_CHAIN_PREFIX)) and svc < SETTINGS_SAMPLE:
            svc += 1
            out += _chain_lines(chain)[:1]
        elif name.startswith(EXTERNAL_CHAIN_PREFIX) and ext < SETTINGS_SAMPLE:
            ext += 1
            out += _chain_lines(chain)[:1]
    return out


def node_settings(
    node: str,
    rules: NodeRules,
    node_ips: list[str],
    kube_proxy_config: dict | None = None,
    pod_cidrs: list[str] | None = None,
) -> tuple[ProxySettings, str]:
    """(settings, where they came from) for one node: kube-proxy's ConfigMap when given, else the node's rules."""
    inferred = infer_settings_from_rules(_settings_lines(rules), node_name=node, node_ips=node_ips)
    if kube_proxy_config is not None:
        # the ConfigMap does not say which version runs nor whether iptables has --random-fully: the rules do
        try:
            settings = settings_from_kube_proxy_config(
                kube_proxy_config, node, node_ips, pod_cidrs or (), kube_minor=inferred.kube_minor,
                random_fully=inferred.random_fully)
        except (AttributeError, TypeError, ValueError) as e:  # a field of the wrong kind (a list for an object…)
            raise InputError(f"kube-proxy config: not a KubeProxyConfiguration ({type(e).__name__}: {e})") from None
        return settings, "from the kube-proxy ConfigMap"
    return inferred, "inferred from the node's rules"
