"""Tie one node's rules to Service ports: which rules belong to which "ns/name[:port]".

Two sources of truth, cross-checked (docs/reference/kube-proxy-layout.md §1.2): the rule comments kube-proxy writes
("ns/name:port cluster IP", "ns/name:port -> ip:port", …) and the chain names, which are hashes of the same
service port name. Comments vanish in large-cluster mode (docs/reference/kube-proxy-layout.md §2.8); hashes never do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model import rule_text
from svcdoctor.model.hashes import chain_kind, chain_suffix, service_hash
from svcdoctor.model.partial import is_partial
from svcdoctor.model.rules import NodeRules, Rule

# comment suffixes kube-proxy writes after the service port name, and what they say about the rule
_COMMENT_SUFFIXES = (
    (" cluster IP", "clusterIP"),
    (" external IP", "externalIP"),
    (" loadbalancer IP", "loadBalancer"),
    (" has no endpoints", "no-endpoints"),
    (" has no local endpoints", "no-local-endpoints"),
    (" health check node port", "health-check"),
)
_COMMENT_WRAPPERS = (
    ("masquerade traffic for ", " external destinations"),
    ("pod traffic for ", " external destinations"),
    ("masquerade LOCAL traffic for ", " external destinations"),
    ("route LOCAL traffic for ", " external destinations"),
    ("other traffic to ", " will be dropped by KUBE-PROXY-FIREWALL"),
)


# the chains where kube-proxy puts a service port's entry and blackhole rules
NAT_ENTRY_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS")
FILTER_ENTRY_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")


def service_port_of_comment(comment: str | None) -> tuple[str | None, str | None]:
    """("ns/name[:port]", what) from a kube-proxy comment; (None, None) if it names no service port."""
    if not comment or "/" not in comment:
        return None, None
    for suffix, what in _COMMENT_SUFFIXES:
        if comment.endswith(suffix):
            return comment[: -len(suffix)], what
    for prefix, suffix in _COMMENT_WRAPPERS:
        if comment.startswith(prefix) and comment.endswith(suffix):
            return comment[len(prefix) : -len(suffix)], "ext"
    if " traffic not accepted by " in comment:
        return comment.split(" traffic not accepted by ", 1)[0], "firewall-drop"
    if " -> " in comment:
        return comment.split(" -> ", 1)[0], "endpoint"
    if " " not in comment:
        return comment, "bare"
    return None, None


def split_service_port_name(spn: str) -> tuple[str, str, str]:
    """"ns/name:port" -> (ns, name, port name or "")."""
    ns, _, rest = spn.partition("/")
    name, _, port = rest.partition(":")
    return ns, name, port


@dataclass(slots=True)
class ServicePortRules:
    """The rules of one service port on one node that its entries start from."""

    svc_port_name: str | None
    protocol: str | None
    suffix: str | None  # the 16-character hash of its KUBE-SVC/SVL/EXT/FW chains
    nat_entries: list[Rule] = field(default_factory=list)  # KUBE-SERVICES / KUBE-NODEPORTS rules
    filter_rules: list[Rule] = field(default_factory=list)  # REJECT / DROP / health check / firewall rules
    # a partial input (model/partial.py): the port's chains that are there although no entry rule to them is
    chains_without_entry: list[str] = field(default_factory=list)


@dataclass(slots=True)
class NodeServiceIndex:
    """Entry rules of one node grouped by service port (by hash suffix and by comment name)."""

    by_suffix: dict[str, ServicePortRules] = field(default_factory=dict)
    by_name: dict[str, list[ServicePortRules]] = field(default_factory=dict)  # "ns/name" -> its ports' rules

    def ports_of_service(self, namespace: str, name: str) -> list[ServicePortRules]:
        return self.by_name.get(f"{namespace}/{name}", [])

    def service_names(self) -> set[str]:
        return set(self.by_name)


def _protocol(rule: Rule) -> str | None:
    p = rule_protocol(rule)
    return p.lower() if p else None


def rule_comment(rule: Rule) -> str | None:
    """``rule.comment``, read from the rule's text while the rule is still unparsed and its comment is spelled the
    plain way (one quoted ``--comment``, as iptables-save and kube-proxy write it): indexing a node of 10,000
    services then parses none of its rules. Any other spelling asks the parser."""
    if rule._parsed is None:  # noqa: SLF001 - a parsed rule answers at once
        found = rule_text.plain_comment(rule.spec)
        if found is not rule_text.UNPLAIN:
            return found
    return rule.comment


def rule_protocol(rule: Rule) -> str | None:
    """``rule.value("-p")``, from the text while the rule is unparsed (as `rule_comment`)."""
    if rule._parsed is None and "--protocol" not in rule.spec:  # noqa: SLF001
        return rule_text.option(" " + rule.spec, "-p")
    return rule.value("-p")


def _index_chains_without_entry(nat, index: NodeServiceIndex, entry_for, interesting) -> None:
    """In a partial input, a service's chains can be there without the KUBE-SERVICES rules that jump to them
    (`iptables -t nat -S KUBE-SVC-… -v` for a few chains): they are tied to their port by their comments, checked
    against the chain's hash, so that `explain` shows what they do."""
    for name, chain in nat.chains.items():
        if chain_kind(name) not in ("svc", "svl", "ext", "fw", "xlb"):
            continue
        suffix = chain_suffix(name)
        if suffix in index.by_suffix and index.by_suffix[suffix].nat_entries:
            continue
        rules = chain.rules
        if interesting is not None and not any(interesting(rule) for rule in rules):
            continue
        spn = next((found for rule in rules if (found := service_port_of_comment(rule_comment(rule))[0])), None)
        if spn is None:
            continue
        protocol = next((p for p in ("tcp", "udp", "sctp") if service_hash(spn, p) == suffix), None)
        if protocol is None:
            continue  # the comment names another port than the hash: not ours to guess
        entry_for(suffix, spn, protocol).chains_without_entry.append(name)


def index_node_services(
    rules: NodeRules, only: str | None = None, suffixes: frozenset[str] = frozenset()
) -> NodeServiceIndex:
    """Group the entry rules by service port.

    ``only`` ("ns/name") restricts to one service, found by its name in the rule text or by the hash ``suffixes``
    of its ports (so a big node's other 10,000 services are never parsed in full).
    """
    index = NodeServiceIndex()
    needle = f"{only}:" if only else None
    needle_bare = f"{only} " if only else None

    def interesting(rule: Rule) -> bool:
        if only is None:
            return True
        spec = rule.spec
        if suffixes and rule.target and rule.target[-16:] in suffixes:
            return True
        return needle in spec or needle_bare in spec or f'"{only}"' in spec or f" {only} " in spec

    def entry_for(suffix: str | None, spn: str | None, proto: str | None) -> ServicePortRules:
        if suffix is None and spn is not None and proto is not None:
            suffix = service_hash(spn, proto)
        key = suffix or f"?{spn}/{proto}"
        spr = index.by_suffix.get(key)
        if spr is None:
            spr = index.by_suffix[key] = ServicePortRules(spn, proto, suffix)
            if spn:
                index.by_name.setdefault(spn.split(":", 1)[0], []).append(spr)
        elif spr.svc_port_name is None and spn:
            spr.svc_port_name = spn
            index.by_name.setdefault(spn.split(":", 1)[0], []).append(spr)
        if spr.protocol is None and proto:
            spr.protocol = proto
        return spr

    nat = rules.table("nat")
    if nat is not None:
        for chain_name in NAT_ENTRY_CHAINS:
            chain = nat.chain(chain_name)
            if chain is None:
                continue
            for rule in chain.rules:
                target = rule.target
                if not target or chain_kind(target) not in ("svc", "svl", "ext", "fw", "xlb"):
                    continue
                if not interesting(rule) and only is not None:
                    continue
                spn, _ = service_port_of_comment(rule_comment(rule))
                entry_for(chain_suffix(target), spn, _protocol(rule)).nat_entries.append(rule)
    if nat is not None and is_partial(rules):
        _index_chains_without_entry(nat, index, entry_for, interesting if only is not None else None)
    flt = rules.table("filter")
    if flt is not None:
        for chain_name in FILTER_ENTRY_CHAINS:
            chain = flt.chain(chain_name)
            if chain is None:
                continue
            for rule in chain.rules:
                if rule.target not in ("DROP", "REJECT", "ACCEPT"):
                    continue
                if only is not None and not interesting(rule):
                    continue
                comment = rule_comment(rule)
                spn, what = service_port_of_comment(comment)
                if spn is None:
                    continue
                suffix = None
                if what == "firewall-drop":
                    suffix = comment.rsplit("KUBE-FW-", 1)[-1] if "KUBE-FW-" in comment else None
                entry_for(suffix, spn, _protocol(rule)).filter_rules.append(rule)
    return index
