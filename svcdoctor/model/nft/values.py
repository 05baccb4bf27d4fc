"""Comparing a packet's values with what a rule or set element holds: exact literals, prefixes and ranges (interval
sets), concatenations part by part. Addresses compare as addresses (IPv6 written any way)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=4096)
def _network(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=16384)
def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _literal_matches(actual, pattern) -> bool:
    if actual == pattern:
        return True
    if isinstance(pattern, int) or isinstance(actual, int):
        if isinstance(pattern, str) and "-" in pattern and isinstance(actual, int):
            low, _, high = pattern.partition("-")
            return low.isdigit() and high.isdigit() and int(low) <= actual <= int(high)
        return str(actual) == str(pattern)
    if not isinstance(actual, str) or not isinstance(pattern, str):
        return False
    if "/" in pattern:
        net, addr = _network(pattern), _address(actual)
        return net is not None and addr is not None and addr.version == net.version and addr in net
    if "-" in pattern and ("." in pattern or ":" in pattern):
        low, _, high = pattern.partition("-")
        a, lo, hi = _address(actual), _address(low), _address(high)
        if a is not None and lo is not None and hi is not None and a.version == lo.version == hi.version:
            return lo <= a <= hi
    a, p = _address(actual), _address(pattern)
    if a is not None and p is not None:
        return a == p
    return actual.lower() == pattern.lower()


def value_matches(actual, pattern) -> bool:
    """Whether a packet's value (a literal or a tuple for a concatenation) is matched by ``pattern``: a literal, a
    prefix, a range, an anonymous set (a list), or a tuple of those."""
    if isinstance(pattern, list):
        return any(value_matches(actual, p) for p in pattern)
    if isinstance(pattern, tuple) or isinstance(actual, tuple):
        if not (isinstance(pattern, tuple) and isinstance(actual, tuple)) or len(pattern) != len(actual):
            return False
        return all(_literal_matches(a, p) for a, p in zip(actual, pattern))
    return _literal_matches(actual, pattern)


def normalise_address(text: str) -> str:
    """An address as Python (and nft) prints it: IPv6 compressed, lower case."""
    addr = _address(text)
    return str(addr) if addr is not None else text
