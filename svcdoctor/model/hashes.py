"""kube-proxy's chain-name hashes (docs/reference/kube-proxy-layout.md §1; pkg/proxy/iptables/proxier.go portProtoHash).

suffix = base32(sha256(servicePortName + protocol))[:16]; the SEP suffix also appends the endpoint "ip:port".
servicePortName is "ns/name" + (":" + portName only when the port has a name); protocol is lower case.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")
# the same four by role: all endpoints (cluster policy), local endpoints, external traffic, LB source ranges
CLUSTER_CHAIN_PREFIX, LOCAL_CHAIN_PREFIX, EXTERNAL_CHAIN_PREFIX, FIREWALL_CHAIN_PREFIX = SERVICE_CHAIN_PREFIXES
ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-"
LEGACY_XLB_PREFIX = "KUBE-XLB-"  # replaced by KUBE-EXT/KUBE-SVL in kubernetes PR #109060 (1.24)
HASHED_PREFIXES = SERVICE_CHAIN_PREFIXES + (ENDPOINT_CHAIN_PREFIX, LEGACY_XLB_PREFIX)


# kube-proxy's fixed chains (pkg/proxy/iptables/proxier.go: kubeServicesChain, kubeNodePortsChain, …)
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_MARK_DROP = "KUBE-MARK-DROP"  # before 1.25: marked packets are dropped by kubelet's KUBE-FIREWALL
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's chain; kube-proxy writes a copy of its one rule


def service_port_name(namespace: str, name: str, port_name: str | None) -> str:
    base = f"{namespace}/{name}"
    return f"{base}:{port_name}" if port_name else base


# base32 (RFC 4648) by pairs of characters: ten bits at a time
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_PAIRS = tuple(a + b for a in _BASE32 for b in _BASE32)


def _hash16(text: str) -> str:
    # 10 bytes are exactly 16 base32 characters, the same prefix as encoding all 32. base64.b32encode is a Python
    # loop: reading it as one 80-bit number, eight lookups, is four times faster (check hashes 40,000 names)
    n = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:10], "big")
    pairs = _BASE32_PAIRS
    return (pairs[n >> 70] + pairs[n >> 60 & 1023] + pairs[n >> 50 & 1023] + pairs[n >> 40 & 1023]
            + pairs[n >> 30 & 1023] + pairs[n >> 20 & 1023] + pairs[n >> 10 & 1023] + pairs[n & 1023])


@lru_cache(maxsize=65536)
def service_hash(svc_port_name: str, protocol: str) -> str:
    """The 16-character suffix shared by KUBE-SVC/SVL/EXT/FW (and old KUBE-XLB) of one service port."""
    return _hash16(svc_port_name + protocol.lower())


def endpoint_string(ip: str, port: int) -> str:
    # net.JoinHostPort: IPv6 addresses are bracketed
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def endpoint_hash(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """The 16-character suffix of KUBE-SEP for one endpoint ("ip:port", the endpoint's target port)."""
    return _hash16(svc_port_name + protocol.lower() + endpoint)


def service_chain(prefix: str, svc_port_name: str, protocol: str) -> str:
    return prefix + service_hash(svc_port_name, protocol)


def endpoint_chain(svc_port_name: str, protocol: str, endpoint: str) -> str:
    return ENDPOINT_CHAIN_PREFIX + endpoint_hash(svc_port_name, protocol, endpoint)


def chain_kind(chain: str) -> str | None:
    """'svc', 'svl', 'ext', 'fw', 'sep', 'xlb' for kube-proxy's hashed chains, else None."""
    if chain.startswith("KUBE-") and len(chain) in (24, 25):
        kind = chain[5:8]
        if kind in ("SVC", "SVL", "EXT", "SEP", "XLB") and chain[8] == "-":
            return kind.lower()
        if chain.startswith("KUBE-FW-"):
            return "fw"
    return None


def chain_suffix(chain: str) -> str:
    """The hash of a hashed chain's name: "KUBE-SVC-ABC…" -> "ABC…" (base32 has no "-")."""
    return chain[chain.rfind("-") + 1 :]


def chain_prefix(chain: str) -> str:
    """The kind part of a hashed chain's name, dash included: "KUBE-SVC-ABC…" -> "KUBE-SVC-"."""
    return chain[: len(chain) - len(chain_suffix(chain))]
