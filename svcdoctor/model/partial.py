"""Whether a dump holds kube-proxy's whole layout or a part of it, and which part is missing.

Support engineers often get a part: `iptables-save | grep SERVICE`, `iptables -t nat -S CHAIN -v` for a few
chains. Such an input is explained as far as it goes (model/explain.py), but what is not in it must not be read
as absent from the node: a chain nothing jumps to in a grep is not left over (checks: orphan-chain), and a
masquerade mark whose KUBE-POSTROUTING is not in the input is not "no SNAT" (model/trace.py).

Only cheap facts are looked at (chains present, their rule counts, the built-in chains' few rules), so a
150,000-rule dump is not parsed in full to answer.
"""

from __future__ import annotations

from svcdoctor.model.hashes import chain_kind
from svcdoctor.model.rules import NodeRules

ENTRY_HOOKS = ("PREROUTING", "OUTPUT")  # where kube-proxy's jumps to KUBE-SERVICES sit in nat


def missing_pieces(rules: NodeRules) -> list[str]:
    """What kube-proxy's paths go through that this dump lacks (empty for a whole dump)."""
    nat = rules.table("nat")
    if nat is None:
        return []
    hashed = any(chain_kind(name) is not None for name in nat.chains)
    if not hashed:
        return []  # no service chains: nothing to explain, nothing partial about it
    out: list[str] = []
    services = nat.chains.get("KUBE-SERVICES")
    if services is None or services.rule_count == 0:
        out.append("KUBE-SERVICES' rules (the entry rules of every service)")
    elif rules.format != "restore-input" and not _hooks_jump_to(rules, "KUBE-SERVICES"):
        # kube-proxy's restore input never holds the built-in jumps (it adds them apart); a dump of a node does
        out.append("the jumps from PREROUTING and OUTPUT to KUBE-SERVICES")
    for chain, what in (("KUBE-MARK-MASQ", "KUBE-MARK-MASQ's rule (the masquerade mark)"),
                        ("KUBE-POSTROUTING", "KUBE-POSTROUTING's rules (where marked traffic is masqueraded)")):
        found = nat.chains.get(chain)
        if found is None or found.rule_count == 0:
            out.append(what)
    return out


def _hooks_jump_to(rules: NodeRules, target: str) -> bool:
    nat = rules.table("nat")
    for hook in ENTRY_HOOKS:
        chain = nat.chains.get(hook) if nat is not None else None
        if chain is not None and any(rule.target == target for rule in chain.rules):
            return True
    return False


def is_partial(rules: NodeRules) -> bool:
    return bool(missing_pieces(rules))
