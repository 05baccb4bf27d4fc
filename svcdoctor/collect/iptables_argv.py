"""What svcdoctor passes to a node's iptables binaries as argv (never through a shell): the binary per backend and
a check that a chain name read from rules can only be a chain name. Shared by the watch sampler
(collect/sampler.py) and the API's per-chain reads (collect/api_scoped.py)."""

from __future__ import annotations

import re

IPTABLES = {"nft": "iptables-nft", "legacy": "iptables-legacy"}
IP6TABLES = {"nft": "ip6tables-nft", "legacy": "ip6tables-legacy"}

_CHAIN_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,28}$")


def valid_chain_name(name: str) -> bool:
    """A name that can only be a chain (iptables allows 28 characters; no leading '-', so never an option)."""
    return bool(_CHAIN_NAME.match(name))
