"""kube-proxy's hashed nftables object names (kubernetes pkg/proxy/nftables/proxier.go: servicePortChainNameBase,
servicePortEndpointChainNameBase, hashAndTruncate).

    <prefix><HASH>-<base>      prefix: service- local- external- firewall- endpoint- affinity-
    base = <ns>/<name>/<proto>/<portName>                      (service, local, external, firewall chains)
    base = <ns>/<name>/<proto>/<portName>__<ip>/<port>         (endpoint chains, affinity sets; IPv6 ':' -> '.')
    HASH = first 8 characters of base32(sha256(base)) (RFC 4648 alphabet)
    "<HASH>-<base>" longer than 240 characters is cut to 237 + "..."

A truncated name cannot be checked from itself (its base is incomplete): only against the name the API's Service
port would give it (`expected_name`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from dataclasses import dataclass
from functools import lru_cache

PREFIXES = ("service", "local", "external", "firewall", "endpoint", "affinity")
NAME_RE = re.compile(r"^(service|local|external|firewall|endpoint|affinity)-([A-Z2-7]{8})-(.+)$")
MAX_NAME = 240  # chainNameMaxLength less the prefix: hashAndTruncate cuts "<HASH>-<base>" beyond this


@lru_cache(maxsize=65536)
def name_hash(base: str) -> str:
    return base64.b32encode(hashlib.sha256(base.encode("utf-8")).digest()[:5]).decode("ascii")


def hash_and_truncate(base: str) -> str:
    name = f"{name_hash(base)}-{base}"
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..."


def service_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    return f"{namespace}/{name}/{protocol.lower()}/{port_name}"


def endpoint_base(service: str, ip: str, port: int) -> str:
    return f"{service}__{ip.replace(':', '.')}/{port}"


def expected_name(prefix: str, base: str) -> str:
    """The name kube-proxy gives an object: expected_name("service", service_base(…))."""
    return f"{prefix}-{hash_and_truncate(base)}"


@dataclass(frozen=True, slots=True)
class HashedName:
    kind: str  # service | local | external | firewall | endpoint | affinity
    hash: str
    base: str
    namespace: str
    service: str
    protocol: str
    port_name: str
    endpoint: str | None  # "10.180.0.1/80" (IPv6 written with '.'), endpoint chains and affinity sets only
    truncated: bool

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service}"

    @property
    def svc_port_name(self) -> str:
        """The name as the rest of svcdoctor (and kube-proxy's ServicePortName.String()) writes it: "ns/name:port"
        ("ns/name" for an unnamed port)."""
        base = self.service_key
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def port_base(self) -> str:
        return service_base(self.namespace, self.service, self.protocol, self.port_name)

    @property
    def verified(self) -> bool | None:
        """True when the hash is kube-proxy's for this base, False when not, None for a truncated name."""
        if self.truncated:
            return None
        return name_hash(self.base) == self.hash

    def endpoint_address(self) -> tuple[str, int | None] | None:
        """The endpoint's IP and port as the name writes them (an IPv6 address put back together)."""
        if not self.endpoint or "/" not in self.endpoint:
            return None
        ip, _, port = self.endpoint.rpartition("/")
        if not _is_ipv4(ip):  # IPv6 written with dots for colons ("fd00.244..5" has three dots too)
            ip = ip.replace(".", ":")
        return ip, int(port) if port.isdigit() else None


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


@lru_cache(maxsize=65536)
def parse_name(name: str) -> HashedName | None:
    """A kube-proxy hashed chain or set name, taken apart; None for any other name."""
    m = NAME_RE.match(name)
    if m is None:
        return None
    kind, digest, base = m.groups()
    truncated = base.endswith("...") and len(digest) + 1 + len(base) == MAX_NAME
    service_part, sep, endpoint = base.partition("__")
    parts = service_part.split("/", 3)
    if len(parts) != 4:
        return None
    namespace, service, protocol, port_name = parts
    return HashedName(kind, digest, base, namespace, service, protocol, port_name, endpoint if sep else None,
                      truncated)
