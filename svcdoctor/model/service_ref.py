"""What a user types for a service, read the way kubectl reads it: `web`, `shop/web`, `svc/web` (`service/`,
`services/` too), a ClusterIP, external or load-balancer IP with or without its port (`10.200.1.73`,
`10.200.1.73:9000`, `[fd00::1]:80`), or a node port (`:32624`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TYPE_PREFIXES = ("svc/", "service/", "services/")


@dataclass(frozen=True, slots=True)
class ServiceRef:
    name: str | None = None  # a name, when the user gave one
    namespace: str | None = None  # from NAMESPACE/NAME
    host: str | None = None  # an address, when the user gave one
    port: int | None = None  # with the address; alone: a node port

    @property
    def is_address(self) -> bool:
        return self.name is None


def parse_service_ref(text: str) -> ServiceRef:
    text = text.strip()
    for prefix in TYPE_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    address = _address(text)
    if address is not None:
        return ServiceRef(host=address[0], port=address[1])
    if "/" in text:
        namespace, name = text.split("/", 1)
        return ServiceRef(name=name, namespace=namespace)
    return ServiceRef(name=text)


def _address(text: str) -> tuple[str | None, int | None] | None:
    """(host, port) for `IP`, `IP:PORT`, `[IPv6]:PORT`, `IPv6`, `:PORT`; None for a name."""
    if text.startswith(":") and text[1:].isdigit():
        return None, int(text[1:])
    if _is_ip(text):
        return text, None
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and _is_ip(host.strip("[]")):
        return host.strip("[]"), int(port)
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
