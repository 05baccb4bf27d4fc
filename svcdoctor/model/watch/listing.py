"""What a node printed for one chain, as the watch model reads it.

The text itself (the sampler's `#chain`/`#status` protocol) is parsed in svcdoctor/collect/sampler.py, next to
the script that prints it; the model only sees these listings. A dual-stack node has two of every chain:
kube-proxy's IPv6 proxier gives its ip6tables chains the same names as the IPv4 ones (the IP family is not part
of the hash, docs/reference/kube-proxy-layout.md §1.1), so a listing also says which family it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.rules import NodeRules, Rule

IPV4, IPV6 = "IPv4", "IPv6"  # as explain names the families (model/explain.py Entry.family)
FAMILIES = (IPV4, IPV6)


@dataclass(slots=True)
class ChainListing:
    """One chain as `iptables -t TABLE -S CHAIN -v` (or ip6tables) printed it; ``present`` False when the chain
    does not exist."""

    table: str
    chain: str
    present: bool
    rules: list[Rule] = field(default_factory=list)
    error: str | None = None  # the listing failed for another reason than "no such chain"
    family: str = IPV4


Listings = dict[tuple[str, str], ChainListing]  # (table, chain) -> its listing, for one node and one family


def listings_from_rules(rules: NodeRules, wanted: list[tuple[str, str]], family: str = IPV4) -> Listings:
    """The same listings, taken from a full dump (tests, and reading a chain the plan found in the first dump)."""
    out = {}
    for table, name in wanted:
        chain = rules.chain(table, name)
        out[(table, name)] = ChainListing(table, name, chain is not None, list(chain.rules) if chain else [],
                                          family=family)
    return out
