"""What one service port's rules do on one node, as a `PortShape`: where each destination goes first, which
endpoints each balancing chain spreads over, what the external and firewall chains do, what the filter drops.

The node's rules and kube-proxy's plan (`model/expected.py`) are both read into this shape by the same code, so a
spelling difference (kube-proxy's restore input against `iptables-save`'s order, `/32` masks, quoting, comments
dropped in large-cluster mode, docs/reference/kube-proxy-layout.md §2.8–2.9) never becomes a difference.

Rules are read as their text through `model/rule_text.py`. A node with 10,000 services has 110,000 rules in
40,000 chains; `rules.py` keeps them unparsed until asked, and building a `Rule` for each would cost more than
the whole check may take.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from svcdoctor.model import rule_text
from svcdoctor.model.expected import ExpectedServicePort, plan_service_port, split_probability
from svcdoctor.model.hashes import (
    CLUSTER_CHAIN_PREFIX,
    ENDPOINT_CHAIN_PREFIX,
    EXTERNAL_CHAIN_PREFIX,
    FIREWALL_CHAIN_PREFIX,
    KUBE_MARK_DROP,
    KUBE_MARK_MASQ,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    LEGACY_XLB_PREFIX,
    LOCAL_CHAIN_PREFIX,
    chain_kind,
    chain_prefix,
    chain_suffix,
    service_hash,
)
from svcdoctor.model.proxy_settings import ProxySettings
from svcdoctor.model.rules import Chain, NodeRules
from svcdoctor.model.service_rules import FILTER_ENTRY_CHAINS, NAT_ENTRY_CHAINS, service_port_of_comment

# A destination of a service port: (kind, address, port). kind is clusterIP | externalIP | loadBalancer |
# nodePort | healthCheck | firewall | other (an address the Service does not have); address is "" for node ports.
Dest = tuple[str, str, str]

BALANCER_PREFIX = {"svc": CLUSTER_CHAIN_PREFIX, "svl": LOCAL_CHAIN_PREFIX}
ENTRY_TARGET_KINDS = ("svc", "svl", "ext", "fw", "xlb")  # what KUBE-SERVICES / KUBE-NODEPORTS jump to

_DEST_WORDS = {
    "clusterIP": "cluster IP {ip}:{port}",
    "externalIP": "external IP {ip}:{port}",
    "loadBalancer": "load-balancer IP {ip}:{port}",
    "nodePort": "NodePort {port}",
    "healthCheck": "health check node port {port}",
    "firewall": "load-balancer firewall for {ip}:{port}",
    "other": "{ip}:{port}",
}


def describe(dest: Dest) -> str:
    kind, ip, port = dest
    return _DEST_WORDS.get(kind, "{ip}:{port}").format(ip=ip, port=port)


def evidence(table: str, line: str) -> str:
    return f"{table}: {line}"


def chain_lines(chain: Chain | None) -> list[str]:
    """A chain's rules as dump lines, counters included, without building Rule objects for them."""
    return chain.lines() if chain is not None else []


# --- the shape of one service port's rules ----------------------------------------------------------------

@dataclass(slots=True)
class Hop:
    """Where a destination goes first: a kube-proxy chain (nat) or a verdict (filter), and the rule saying so."""

    target: str
    line: str  # evidence: "nat: …" / "filter: …"
    packets: int = 0


@dataclass(slots=True)
class Jump:
    """One rule of a balancing chain (KUBE-SVC/KUBE-SVL) that sends new connections to an endpoint chain."""

    sep: str
    probability: float | None  # as written; None on the last, unconditional rule
    line: str  # the rule as the dump has it (nat)


@dataclass(slots=True)
class PortShape:
    """What one service port's rules do on one node (or what kube-proxy would have them do)."""

    nat: dict[Dest, Hop] = field(default_factory=dict)
    filter: dict[Dest, Hop] = field(default_factory=dict)
    balancers: dict[str, list[Jump]] = field(default_factory=dict)  # "svc"/"svl" -> jumps, for chains present
    balancer_chains: dict[str, str] = field(default_factory=dict)  # "svc"/"svl" -> chain name
    affinity: dict[str, bool] = field(default_factory=dict)  # "svc"/"svl" -> has ClientIP affinity checks
    seps: dict[str, tuple[str, str]] = field(default_factory=dict)  # endpoint chain -> (DNAT "ip:port", line)
    ext: str | None = None  # the KUBE-EXT chain, when present
    ext_final: str | None = None  # "svc" | "svl" | None: where outside clients are sent in the end
    ext_masquerade: bool = False  # outside clients are SNATed
    ext_lines: list[str] = field(default_factory=list)
    fw: str | None = None
    fw_sources: frozenset[str] = frozenset()
    fw_lines: list[str] = field(default_factory=list)
    # kube-proxy before 1.24 (kubernetes PR #109060): KUBE-XLB sends outside clients to this node's endpoints,
    # or marks them for kubelet's KUBE-FIREWALL to drop ("… has no local endpoints" -j KUBE-MARK-DROP)
    xlb: str | None = None
    xlb_drops: list[str] = field(default_factory=list)  # the KUBE-MARK-DROP rules of KUBE-XLB

    @property
    def empty(self) -> bool:
        return not (self.nat or self.filter or self.balancers or self.ext or self.fw)


class Addresses:
    """Tells the kind of an address of a service port: its cluster IP, an external IP, a load-balancer IP."""

    __slots__ = ("cluster_ip", "external", "load_balancer")

    def __init__(self, cluster_ip: str | None = None, external: Iterable[str] = (), load_balancer: Iterable[str] = ()):
        self.cluster_ip = cluster_ip
        self.external = frozenset(external)
        self.load_balancer = frozenset(load_balancer)

    @property
    def known(self) -> bool:
        """Whether the API told the addresses; without it, kube-proxy's comments tell the kinds."""
        return self.cluster_ip is not None

    def kind(self, ip: str, line: str) -> str:
        if self.cluster_ip is None:  # no API: the comment kube-proxy wrote says it (entries keep comments)
            _, what = service_port_of_comment(rule_text.comment(line))
            if what in ("clusterIP", "externalIP", "loadBalancer"):
                return what
            target = rule_text.target_name(line) or ""
            return "clusterIP" if chain_kind(target) in ("svc", "svl") else "externalIP"
        if ip == self.cluster_ip:
            return "clusterIP"
        if ip in self.load_balancer:
            return "loadBalancer"
        if ip in self.external:
            return "externalIP"
        return "other"


def nat_dest(chain: str, line: str, addrs: Addresses) -> Dest | None:
    """The destination a nat entry rule matches; None for 1.31's localhost NodePort copy (nfacct-counted), which
    takes the same path as the node port rule."""
    port = rule_text.option(line, "--dport") or ""
    if chain == KUBE_NODEPORTS:
        dest = rule_text.option(line, "-d")
        if dest is not None and dest.startswith("127."):
            return None
        return ("nodePort", "", port)
    ip = rule_text.address(rule_text.option(line, "-d"))
    return (addrs.kind(ip, line), ip, port)


def filter_dest(chain: str, line: str, addrs: Addresses) -> Dest:
    """The destination a filter rule of kube-proxy's (REJECT, DROP, health check ACCEPT) matches."""
    port = rule_text.option(line, "--dport") or ""
    if chain == KUBE_NODEPORTS:
        return ("healthCheck", "", port)
    ip = rule_text.address(rule_text.option(line, "-d"))
    if chain == KUBE_PROXY_FIREWALL:
        return ("firewall", ip, port)
    if chain == KUBE_SERVICES and not addrs.known:
        return ("clusterIP", ip, port)  # kube-proxy blackholes only cluster-IP traffic in filter KUBE-SERVICES
    if not ip:
        return ("nodePort", "", port)
    return (addrs.kind(ip, line), ip, port)


LinesOf = Callable[[str], "list[str] | None"]  # a chain's lines; None: no such chain


def read_shape(
    suffix: str,
    nat_entries: Iterable[tuple[str, str]],
    filter_entries: Collection[tuple[str, str]],
    lines_of: LinesOf,
    addrs: Addresses,
) -> PortShape:
    """One service port's shape from its entry rules [(chain, line)] and a way to get the lines of a chain."""
    shape = PortShape()
    _read_nat_entries(shape, nat_entries, addrs)
    _read_filter_entries(shape, filter_entries, addrs)
    # (each chain is looked up here, once: most ports have one or two of the six, and check reads 10^4 ports)
    for role, prefix in BALANCER_PREFIX.items():
        name = prefix + suffix
        lines = lines_of(name)
        if lines is not None:
            _read_balancer(shape, role, name, lines, lines_of)
    name = EXTERNAL_CHAIN_PREFIX + suffix
    lines = lines_of(name)
    if lines is not None:
        _read_external_chain(shape, name, lines)
    name = FIREWALL_CHAIN_PREFIX + suffix
    lines = lines_of(name)
    if lines is not None:
        _read_firewall_chain(shape, name, lines)
    _read_legacy_external_chain(shape, lines_of)
    return shape


def _read_nat_entries(shape: PortShape, entries: Iterable[tuple[str, str]], addrs: Addresses) -> None:
    for chain, line in entries:
        dest = nat_dest(chain, line, addrs)
        if dest is not None and dest not in shape.nat:
            shape.nat[dest] = Hop(rule_text.target_name(line) or "", evidence("nat", line), rule_text.packets(line))


def _read_filter_entries(shape: PortShape, entries: Collection[tuple[str, str]], addrs: Addresses) -> None:
    if not entries:
        return
    # without the API the nat entry's comment tells a load-balancer IP from an external one; its DROP cannot
    named = {(ip, port): kind for kind, ip, port in shape.nat} if not addrs.known else {}
    for chain, line in entries:
        dest = filter_dest(chain, line, addrs)
        if named and dest[0] == "externalIP":
            dest = (named.get((dest[1], dest[2]), dest[0]), dest[1], dest[2])
        if dest not in shape.filter:
            shape.filter[dest] = Hop(rule_text.target_name(line) or "", evidence("filter", line),
                                     rule_text.packets(line))


def _read_balancer(shape: PortShape, role: str, name: str, lines: list[str], lines_of: LinesOf) -> None:
    """A KUBE-SVC/KUBE-SVL chain: its jumps to endpoint chains (affinity checks aside) and where those DNAT to."""
    jumps: list[Jump] = []
    affinity = False
    seps = shape.seps
    for line in lines:
        jump = rule_text.jump_to(line, ENDPOINT_CHAIN_PREFIX)
        if jump is None:
            continue  # the masquerade rule
        sep, probability, affinity_check = jump
        if affinity_check:
            affinity = True  # a returning client goes to its endpoint; not part of the split
            continue
        jumps.append(Jump(sep, probability, line))
        if sep not in seps:
            seps[sep] = dnat_of(lines_of(sep))
    shape.balancers[role] = jumps
    shape.balancer_chains[role] = name
    shape.affinity[role] = affinity


def _read_external_chain(shape: PortShape, name: str, lines: list[str]) -> None:
    """KUBE-EXT: whether outside clients are SNATed and which balancing chain they end in."""
    shape.ext, shape.ext_lines = name, lines
    for line in lines:
        if rule_text.is_source_conditional(line):
            continue  # pod traffic and the node's own traffic: internal, whatever the policy
        target = rule_text.target_name(line) or ""
        if target == KUBE_MARK_MASQ:
            shape.ext_masquerade = True
        elif chain_kind(target) in ("svc", "svl"):
            shape.ext_final = chain_kind(target)


def _read_firewall_chain(shape: PortShape, name: str, lines: list[str]) -> None:
    """KUBE-FW: the source ranges it lets on to KUBE-EXT."""
    shape.fw, shape.fw_lines = name, lines
    shape.fw_sources = frozenset(
        rule_text.network(rule_text.option(line, "-s")) for line in lines
        if chain_kind(rule_text.target_name(line) or "") == "ext")


def _read_legacy_external_chain(shape: PortShape, lines_of: LinesOf) -> None:
    """The KUBE-XLB chain a pre-1.24 node's entries jump to: its KUBE-MARK-DROP rules drop outside clients
    when the node has no local endpoint (kubernetes v1.23 pkg/proxy/iptables/proxier.go)."""
    xlb = next((hop.target for hop in shape.nat.values() if hop.target.startswith(LEGACY_XLB_PREFIX)), None)
    if xlb is None:
        return
    shape.xlb = xlb
    shape.xlb_drops = [line for line in lines_of(xlb) or () if rule_text.target_name(line) == KUBE_MARK_DROP]


def dnat_of(lines: list[str] | None) -> tuple[str, str]:
    """(DNAT destination, its rule) of an endpoint chain; the DNAT rule is kube-proxy's last in the chain."""
    for line in reversed(lines or ()):
        dest = rule_text.option(line, "--to-destination")
        if dest is not None:
            return dest, line
    return "", ""


# --- one node's rules, indexed by service port ------------------------------------------------------------

class NodeProgram:
    """A node's kube-proxy rules as text: entry rules by the hash suffix of their target, filter rules by the
    service port their comment names, and the nat chains.

    `only` (hash suffixes) keeps the entry and filter rules of those service ports alone, and entry rules whose
    comment names one of the services `named` ("ns/name": a renamed chain of theirs): explaining one service on
    a big node then reads no other service's chains."""

    __slots__ = ("node", "rules", "chains", "entries", "filters", "has_rules")

    def __init__(self, node: str, rules: NodeRules, only: frozenset[str] | None = None,
                 named: frozenset[str] = frozenset()):
        self.node = node
        self.rules = rules
        nat = rules.table("nat")
        self.chains: dict[str, Chain] = nat.chains if nat is not None else {}
        self.has_rules = rules.has_kube_proxy_rules()
        self.entries: dict[str, list[tuple[str, str]]] = {}  # suffix -> [(entry chain, line)]
        # a scoped program first looks for its hashes and names as plain text: one search per rule, not a parse
        needles = None if only is None else tuple(only) + tuple(named)
        for name in NAT_ENTRY_CHAINS:
            for line in chain_lines(self.chains.get(name)):
                if needles is not None and not _mentions_any(line, needles):
                    continue
                target = rule_text.target_name(line)
                if target and chain_kind(target) in ENTRY_TARGET_KINDS:
                    suffix = chain_suffix(target)
                    if only is None or suffix in only or _names_one_of(line, named):
                        self.entries.setdefault(suffix, []).append((name, line))
        self.filters: dict[str, list[tuple[str, str]]] = {}  # suffix -> [(filter chain, line)]
        flt = rules.table("filter")
        for name in FILTER_ENTRY_CHAINS:
            for line in chain_lines(flt.chains.get(name) if flt is not None else None):
                if rule_text.target_name(line) not in ("DROP", "REJECT", "ACCEPT"):
                    continue
                spn, _ = service_port_of_comment(rule_text.comment(line))
                if spn is None:
                    continue
                suffix = service_hash(spn, (rule_text.option(line, "-p") or "tcp").lower())
                if only is None or suffix in only or spn.split(":", 1)[0] in named:
                    self.filters.setdefault(suffix, []).append((name, line))

    def lines(self, chain: str) -> list[str] | None:
        found = self.chains.get(chain)
        if found is None:
            return None
        return found._lines if found._rules is None else chain_lines(found)  # noqa: SLF001 - see chain_lines

    def shape(self, suffix: str, addrs: Addresses, renamed: Iterable[tuple[str, str, str]] = ()) -> PortShape:
        """The port's shape on this node. `renamed` are entry rules [(chain, line, target)] whose comment names the
        port but whose target is not its hash: their chains are read in place of the port's own."""
        renamed = list(renamed)
        if not renamed:
            return read_shape(suffix, self.entries.get(suffix, ()), self.filters.get(suffix, ()), self.lines, addrs)
        aliases = {chain_prefix(target) + suffix: target for _, _, target in renamed}
        shape = read_shape(suffix, list(self.entries.get(suffix, ())) + [(c, ln) for c, ln, _ in renamed],
                           self.filters.get(suffix, ()), lambda name: self.lines(aliases.get(name, name)), addrs)
        back = {actual: wanted for wanted, actual in aliases.items()}
        for hop in shape.nat.values():
            hop.target = back.get(hop.target, hop.target)  # the name is told once, as a hash-mismatch
        return shape

    def hashed_chains(self, besides: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """kube-proxy's hashed chains on the node (KUBE-SVC/SVL/EXT/FW/SEP/XLB), except those in `besides`."""
        return [name for name in self.chains.keys() - besides if chain_kind(name) is not None]


def _mentions_any(line: str, needles: tuple[str, ...]) -> bool:
    for needle in needles:
        if rule_text.mentions(line, needle):
            return True
    return False


def _names_one_of(line: str, services: frozenset[str]) -> bool:
    if not any(rule_text.mentions(line, service) for service in services):
        return False
    spn, _ = service_port_of_comment(rule_text.comment(line))
    return spn is not None and spn.split(":", 1)[0] in services


# --- the expected side ------------------------------------------------------------------------------------

@dataclass(slots=True)
class ExpectedPort:
    """kube-proxy's plan for one service port on a node, read into the same shape as the node's rules.

    Read from the rules kube-proxy would write (`expect_port`), or worked out from its decisions alone
    (`expect_decisions`, what `check` compares 10,000 ports a node with): then the shape has no evidence lines,
    and `written()` writes the port's rules when a finding needs to quote them."""

    plan: ExpectedServicePort
    suffix: str
    addrs: Addresses
    shape: PortShape
    chains: frozenset[str]  # every nat chain kube-proxy would create for the port on the node
    expected_lines: dict[str, list[str]] | None  # chain -> "-A …" lines, for evidence; None: not written yet
    large_cluster: bool = False  # kube-proxy's largeClusterMode (its rules then have fewer comments)

    def written(self, settings: ProxySettings | None) -> ExpectedPort:
        """This plan read from its rules, evidence lines and all: itself when it was, else kube-proxy's rules for
        the port written now with the node's `settings` (the decisions are the same: they depend on no more of
        the settings than what they were made with)."""
        if self.expected_lines is not None:
            return self
        return expect_port(plan_service_port(self.plan.service_port, settings, self.large_cluster))


def expect_port(plan: ExpectedServicePort) -> ExpectedPort:
    suffix = service_hash(plan.name, plan.protocol)
    addrs = Addresses(plan.cluster_ip, plan.external_ips, plan.load_balancer_ips)
    by_chain: dict[str, list[str]] = {chain: [] for chain in plan.nat_chains}
    nat_entries, filter_entries = [], []
    for table, chain, line in plan.rules:
        if table == "nat" and chain in NAT_ENTRY_CHAINS:
            nat_entries.append((chain, line))
        elif table == "filter":
            filter_entries.append((chain, line))
        else:
            by_chain.setdefault(chain, []).append(line)
    shape = read_shape(suffix, nat_entries, filter_entries, by_chain.get, addrs)
    lines = dict(by_chain)
    for chain, line in nat_entries + filter_entries:
        lines.setdefault(chain, []).append(line)
    return ExpectedPort(plan, suffix, addrs, shape, frozenset(plan.nat_chains), lines)


def expect_decisions(plan: ExpectedServicePort, large_cluster: bool = False) -> ExpectedPort:
    """kube-proxy's plan for a port (`model/expected.py: decide_service_port`, no rule written) in the shape
    `expect_port` reads from its written rules, evidence lines left empty. Writing 10,000 ports' rules only to
    read them straight back cost `check` more than comparing them with a node's (tests/test_port_shape.py holds
    both shapes equal on kube-proxy's own test cases). Each step names the writer's step whose rules it reads."""
    addrs = Addresses(plan.cluster_ip, plan.external_ips, plan.load_balancer_ips)
    shape = PortShape()
    _planned_entries(shape, plan, addrs)
    _planned_verdicts(shape, plan, addrs)
    for role, chain, endpoints, used in (("svc", plan.svc_chain, plan.cluster_endpoints, plan.uses_cluster_chain),
                                         ("svl", plan.svl_chain, plan.local_endpoints, plan.uses_local_chain)):
        if used:
            _planned_balancer(shape, role, chain, endpoints, plan.service_port.session_affinity == "ClientIP")
    if plan.uses_external_chain:  # external_chain: outside clients are masqueraded unless the policy is Local
        shape.ext = plan.ext_chain
        shape.ext_masquerade = not plan.external_policy_local
        if plan.has_external_endpoints:
            shape.ext_final = chain_kind(plan.external_policy_chain)
    if plan.uses_fw_chain:  # firewall_chain: the source ranges, and the node's own VIPs when a range holds it
        shape.fw = plan.fw_chain
        sources = list(plan.source_ranges) + (plan.load_balancer_ips if plan.firewall_admits_node else [])
        shape.fw_sources = frozenset(rule_text.network(source) for source in sources)
    chains = [plan.ext_chain] if plan.uses_external_chain else []
    chains += [plan.fw_chain] if plan.uses_fw_chain else []
    chains += [chain for chain, used in ((plan.svc_chain, plan.uses_cluster_chain),
                                         (plan.svl_chain, plan.uses_local_chain)) if used]
    chains += [e.chain for e in plan.reachable_endpoints]
    suffix = service_hash(plan.name, plan.protocol)
    return ExpectedPort(plan, suffix, addrs, shape, frozenset(chains), None, large_cluster)


def _planned_entries(shape: PortShape, plan: ExpectedServicePort, addrs: Addresses) -> None:
    """entry_rules, external_entry_rules, node_port_rules (nat): where each destination goes first; the first
    rule for a destination counts, as `_read_nat_entries` reads them."""
    port = str(plan.service_port.port)
    hops: list[tuple[Dest, str]] = []
    if plan.has_internal_endpoints:
        hops.append((_planned_dest(plan.cluster_ip, port, addrs), plan.internal_chain))
    if plan.has_endpoints:
        hops += [(_planned_dest(ip, port, addrs), plan.ext_chain) for ip in plan.external_ips]
        lb_chain = plan.fw_chain if plan.uses_fw_chain else plan.ext_chain
        hops += [(_planned_dest(ip, port, addrs), lb_chain) for ip in plan.load_balancer_ips]
        if plan.service_port.node_port:  # (1.31's localhost copy takes the node port's path: not a destination)
            hops.append((("nodePort", "", str(plan.service_port.node_port)), plan.ext_chain))
    for dest, target in hops:
        if dest not in shape.nat:
            shape.nat[dest] = Hop(target, "")


def _planned_verdicts(shape: PortShape, plan: ExpectedServicePort, addrs: Addresses) -> None:
    """The filter rules of entry_rules, external_entry_rules and node_port_rules, as `_read_filter_entries`
    reads them."""
    port = str(plan.service_port.port)
    verdicts: list[tuple[Dest, str]] = []
    if not plan.has_internal_endpoints:
        verdicts.append((_planned_dest(plan.cluster_ip, port, addrs), plan.internal_filter))
    if not plan.has_external_endpoints:
        verdicts += [(_planned_dest(ip, port, addrs), plan.external_filter) for ip in plan.external_ips]
    if plan.uses_fw_chain:
        verdicts += [(("firewall", rule_text.address(ip), port), "DROP") for ip in plan.load_balancer_ips]
    if not plan.has_external_endpoints:
        verdicts += [(_planned_dest(ip, port, addrs), plan.external_filter) for ip in plan.load_balancer_ips]
        if plan.service_port.node_port:
            verdicts.append((("nodePort", "", str(plan.service_port.node_port)), plan.external_filter))
    if plan.health_check_node_port:
        verdicts.append((("healthCheck", "", str(plan.health_check_node_port)), "ACCEPT"))
    for dest, target in verdicts:
        if dest not in shape.filter:
            shape.filter[dest] = Hop(target, "")


def _planned_dest(ip: str, port: str, addrs: Addresses) -> Dest:
    ip = rule_text.address(ip)  # as the rule's `-d` is read back
    return (addrs.kind(ip, ""), ip, port)


def _planned_balancer(shape: PortShape, role: str, chain: str, endpoints: list, affinity: bool) -> None:
    """balancing_chains and endpoint_chains: the 1/(n-i) split over the chain's endpoints (ClientIP affinity
    checks beside it), each endpoint chain DNATing to its endpoint, as `_read_balancer` reads them."""
    n = len(endpoints)
    shape.balancers[role] = [Jump(e.chain, float(split_probability(n - i)) if i < n - 1 else None, "")
                             for i, e in enumerate(endpoints)]
    shape.balancer_chains[role] = chain
    shape.affinity[role] = affinity
    for e in endpoints:
        if e.chain not in shape.seps:
            shape.seps[e.chain] = (e.endpoint.address, "")
