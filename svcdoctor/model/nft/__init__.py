"""kube-proxy's nftables mode: its tables read into memory (ruleset.py) from `nft -j list table` JSON
(read_json.py) or `nft list table` text (read_text.py), its hashed names verified (names.py), its rule layout
("generation") told apart (layout.py), and the explain walk (explain.py). Pure: no I/O."""

from __future__ import annotations

from svcdoctor.model.nft.read_json import looks_like_json, read_json_listing
from svcdoctor.model.nft.read_text import read_text_listing
from svcdoctor.model.nft.ruleset import NftRuleset

KUBE_PROXY_TABLE = "kube-proxy"


def read_listing(text: str, source: str = "") -> list[NftRuleset]:
    """Every table in an `nft -j list …` or `nft list …` output, whichever it is."""
    if looks_like_json(text):
        return read_json_listing(text, source)
    return read_text_listing(text, source)


def kube_proxy_tables(tables: list[NftRuleset]) -> list[NftRuleset]:
    """kube-proxy's own tables (`ip kube-proxy`, `ip6 kube-proxy`), IPv4 first."""
    mine = [t for t in tables if t.name == KUBE_PROXY_TABLE and t.family in ("ip", "ip6")]
    return sorted(mine, key=lambda t: t.family)


__all__ = ["KUBE_PROXY_TABLE", "NftRuleset", "kube_proxy_tables", "read_listing"]
