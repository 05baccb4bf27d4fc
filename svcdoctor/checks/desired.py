"""Desired versus programmed, on every node: what kube-proxy would write there against what the node's rules do.

With the API objects, `model/expected.py` says what kube-proxy would program on each node (from the node's proxy
settings: kube-proxy's ConfigMap, else guessed from the node's own rules, else given). Both that plan and the
node's rules are read into the same `PortShape` by the same text readers, service port by service port, so a
spelling difference (kube-proxy's restore input against `iptables-save`'s order, `/32` masks, quoting, comments
dropped in large-cluster mode) never becomes a finding. What is compared is behaviour: where each destination
of the port goes first, which endpoints each balancing chain spreads over and how evenly, what the external
chain does with outside clients, which sources the firewall chain lets in, what the filter table drops.

Without the API there is nothing to expect; nodes are compared with each other instead (`node-drift`).

Rules are read as their text. A node with 10,000 services has 110,000 rules in 40,000 chains; `rules.py` keeps
them unparsed until asked, and building a `Rule` for each would cost more than the whole check may take.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from svcdoctor.checks.findings import Finding, finding
from svcdoctor.exit_codes import InputError
from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.expected import (
    LARGE_CLUSTER_ENDPOINTS,
    ExpectedServicePort,
    ProxySettings,
    infer_settings_from_rules,
    plan_service_port,
    settings_from_kube_proxy_config,
)
from svcdoctor.model.hashes import chain_kind, endpoint_hash, service_hash
from svcdoctor.model.rules import Chain, NodeRules
from svcdoctor.model.service_rules import FILTER_ENTRY_CHAINS, NAT_ENTRY_CHAINS, service_port_of_comment

# A destination of a service port: (kind, address, port). kind is clusterIP | externalIP | loadBalancer |
# nodePort | healthCheck | firewall | other (an address the Service does not have); address is "" for node ports.
Dest = tuple[str, str, str]

UNEVEN_TOLERANCE = 0.01  # a share this far from 1/n is reported; the kernel rounds probabilities to 2**-31
SETTINGS_SAMPLE = 64  # service chains read to guess the proxy settings: they all say the same thing

_COMMENT = re.compile(r'--comment (?:"([^"]*)"|(\S+))')
_BALANCER_PREFIX = {"svc": "KUBE-SVC-", "svl": "KUBE-SVL-"}


# --- reading rule text ------------------------------------------------------------------------------------

def chain_lines(chain: Chain | None) -> list[str]:
    """A chain's rules as dump lines, counters included, without building Rule objects for them."""
    return chain.lines() if chain is not None else []


def _target(line: str) -> str | None:
    at = line.rfind(" -j ")
    if at < 0:
        at = line.rfind(" -g ")  # a rule has one or the other
        if at < 0:
            return None
    end = line.find(" ", at + 4)
    return line[at + 4 :] if end < 0 else line[at + 4 : end]


def _option(line: str, option: str) -> str | None:
    """The word after ` OPTION ` (e.g. " -d "), None if absent. kube-proxy's comments never hold an option."""
    at = line.find(option)
    if at < 0:
        return None
    start = at + len(option)
    end = line.find(" ", start)
    return line[start:] if end < 0 else line[start:end]


def _address(value: str | None) -> str:
    # iptables-save prints "-d 10.96.0.1/32" where kube-proxy wrote "-d 10.96.0.1"
    if not value:
        return ""
    if value.endswith("/32") or value.endswith("/128"):
        value = value.rsplit("/", 1)[0]
    if ":" in value and "/" not in value:
        try:
            return str(ipaddress.ip_address(value))  # IPv6 has many spellings; iptables prints the short one
        except ValueError:
            pass
    return value


def _network(value: str | None) -> str:
    """A source range as one spelling: kube-proxy 1.28 writes the user's "10.0.0.1/24", iptables and 1.30+
    print "10.0.0.0/24"; a single address has no mask."""
    try:
        return _address(str(ipaddress.ip_network(value or "", strict=False)))
    except ValueError:
        return value or ""


def _comment(line: str) -> str | None:
    m = _COMMENT.search(line)
    if m is None:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def _packets(line: str) -> int:
    """The packet counter of a dump line: `[p:b] -A …` or `… -c p b …`; 0 when the dump has none."""
    if line.startswith("["):
        try:
            return int(line[1 : line.index(":")])
        except ValueError:
            return 0
    value = _option(line, " -c ")
    return int(value) if value and value.isdigit() else 0


def _conditional(line: str) -> bool:
    """Whether a rule picks its packets by source (pod CIDR, the node itself, an interface)."""
    return " -s " in line or "--src-type" in line or " -i " in line


def _evidence(table: str, line: str) -> str:
    return f"{table}: {line}"


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

    @property
    def empty(self) -> bool:
        return not (self.nat or self.filter or self.balancers or self.ext or self.fw)


class _Addresses:
    """Tells the kind of an address of a service port: its cluster IP, an external IP, a load-balancer IP."""

    __slots__ = ("cluster_ip", "external", "load_balancer")

    def __init__(self, cluster_ip: str | None = None, external: Iterable[str] = (), load_balancer: Iterable[str] = ()):
        self.cluster_ip = cluster_ip
        self.external = frozenset(external)
        self.load_balancer = frozenset(load_balancer)

    def kind(self, ip: str, line: str) -> str:
        if self.cluster_ip is None:  # no API: the comment kube-proxy wrote says it (entries keep comments)
            _, what = service_port_of_comment(_comment(line))
            if what in ("clusterIP", "externalIP", "loadBalancer"):
                return what
            target = _target(line) or ""
            return "clusterIP" if chain_kind(target) in ("svc", "svl") else "externalIP"
        if ip == self.cluster_ip:
            return "clusterIP"
        if ip in self.load_balancer:
            return "loadBalancer"
        if ip in self.external:
            return "externalIP"
        return "other"


def _nat_dest(chain: str, line: str, addrs: _Addresses) -> Dest | None:
    port = _option(line, " --dport ") or ""
    if chain == "KUBE-NODEPORTS":
        dest = _option(line, " -d ")
        if dest is not None and dest.startswith("127."):
            return None  # 1.31's localhost NodePort copy (nfacct-counted): the same path as the node port rule
        return ("nodePort", "", port)
    ip = _address(_option(line, " -d "))
    return (addrs.kind(ip, line), ip, port)


def _filter_dest(chain: str, line: str, addrs: _Addresses) -> Dest:
    port = _option(line, " --dport ") or ""
    if chain == "KUBE-NODEPORTS":
        return ("healthCheck", "", port)
    ip = _address(_option(line, " -d "))
    if chain == "KUBE-PROXY-FIREWALL":
        return ("firewall", ip, port)
    if chain == "KUBE-SERVICES" and addrs.cluster_ip is None:
        return ("clusterIP", ip, port)  # kube-proxy blackholes only cluster-IP traffic in filter KUBE-SERVICES
    if not ip:
        return ("nodePort", "", port)
    return (addrs.kind(ip, line), ip, port)


def _read_shape(
    suffix: str,
    nat_entries: Iterable[tuple[str, str]],
    filter_entries: Iterable[tuple[str, str]],
    lines_of: Callable[[str], list[str] | None],
    addrs: _Addresses,
) -> PortShape:
    """One service port's shape from its entry rules and a way to get the lines of a chain (None: no chain)."""
    shape = PortShape()
    for chain, line in nat_entries:
        dest = _nat_dest(chain, line, addrs)
        if dest is not None and dest not in shape.nat:
            shape.nat[dest] = Hop(_target(line) or "", _evidence("nat", line), _packets(line))
    # without the API the nat entry's comment tells a load-balancer IP from an external one; its DROP cannot
    named = {(ip, port): kind for kind, ip, port in shape.nat} if addrs.cluster_ip is None else {}
    for chain, line in filter_entries:
        dest = _filter_dest(chain, line, addrs)
        if named and dest[0] == "externalIP":
            dest = (named.get((dest[1], dest[2]), dest[0]), dest[1], dest[2])
        if dest not in shape.filter:
            shape.filter[dest] = Hop(_target(line) or "", _evidence("filter", line), _packets(line))
    seps = shape.seps
    for role, prefix in _BALANCER_PREFIX.items():
        name = prefix + suffix
        lines = lines_of(name)
        if lines is None:
            continue
        jumps: list[Jump] = []
        affinity = False
        for line in lines:
            # the hot loop of a big check (every endpoint of every port on every node): plain string searches
            at = line.rfind(" -j KUBE-SEP-")
            if at < 0:
                continue  # the masquerade rule
            if "--rcheck" in line:
                affinity = True  # a returning client goes to its endpoint; not part of the split
                continue
            end = line.find(" ", at + 4)
            target = line[at + 4 :] if end < 0 else line[at + 4 : end]
            probability = None
            at = line.find(" --probability ")
            if at >= 0:
                end = line.find(" ", at + 15)
                try:
                    probability = float(line[at + 15 :] if end < 0 else line[at + 15 : end])
                except ValueError:
                    pass
            jumps.append(Jump(target, probability, line))
            if target not in seps:
                seps[target] = _dnat(lines_of(target))
        shape.balancers[role] = jumps
        shape.balancer_chains[role] = name
        shape.affinity[role] = affinity
    ext = "KUBE-EXT-" + suffix
    lines = lines_of(ext)
    if lines is not None:
        shape.ext, shape.ext_lines = ext, lines
        for line in lines:
            target = _target(line) or ""
            if _conditional(line):
                continue  # pod traffic and the node's own traffic: internal, whatever the policy
            if target == "KUBE-MARK-MASQ":
                shape.ext_masquerade = True
            elif chain_kind(target) in ("svc", "svl"):
                shape.ext_final = chain_kind(target)
    fw = "KUBE-FW-" + suffix
    lines = lines_of(fw)
    if lines is not None:
        shape.fw, shape.fw_lines = fw, lines
        shape.fw_sources = frozenset(
            _network(_option(line, " -s ")) for line in lines if chain_kind(_target(line) or "") == "ext"
        )
    return shape


def _dnat(lines: list[str] | None) -> tuple[str, str]:
    """(DNAT destination, its rule) of an endpoint chain; the DNAT rule is kube-proxy's last in the chain."""
    for line in reversed(lines or ()):
        at = line.find(" --to-destination ")
        if at >= 0:
            end = line.find(" ", at + 18)
            return (line[at + 18 :] if end < 0 else line[at + 18 : end]), line
    return "", ""


# --- one node's rules, indexed by service port ------------------------------------------------------------

class NodeProgram:
    """A node's kube-proxy rules as text: entry rules by the hash suffix of their target, filter rules by the
    service port their comment names, and the nat chains."""

    __slots__ = ("node", "rules", "chains", "entries", "filters", "has_rules")

    def __init__(self, node: str, rules: NodeRules):
        self.node = node
        self.rules = rules
        nat = rules.table("nat")
        self.chains: dict[str, Chain] = nat.chains if nat is not None else {}
        self.has_rules = rules.has_kube_proxy_rules()
        self.entries: dict[str, list[tuple[str, str]]] = {}  # suffix -> [(entry chain, line)]
        for name in NAT_ENTRY_CHAINS:
            for line in chain_lines(self.chains.get(name)):
                target = _target(line)
                if target and chain_kind(target) in ("svc", "svl", "ext", "fw", "xlb"):
                    self.entries.setdefault(target[-16:], []).append((name, line))
        self.filters: dict[str, list[tuple[str, str]]] = {}  # suffix -> [(filter chain, line)]
        flt = rules.table("filter")
        for name in FILTER_ENTRY_CHAINS:
            for line in chain_lines(flt.chains.get(name) if flt is not None else None):
                if _target(line) not in ("DROP", "REJECT", "ACCEPT"):
                    continue
                spn, _ = service_port_of_comment(_comment(line))
                if spn is None:
                    continue
                protocol = (_option(line, " -p ") or "tcp").lower()
                self.filters.setdefault(service_hash(spn, protocol), []).append((name, line))

    def lines(self, chain: str) -> list[str] | None:
        found = self.chains.get(chain)
        if found is None:
            return None
        return found._lines if found._rules is None else chain_lines(found)  # noqa: SLF001 - see chain_lines

    def shape(self, suffix: str, addrs: _Addresses, renamed: Iterable[tuple[str, str, str]] = ()) -> PortShape:
        """The port's shape on this node. `renamed` are entry rules [(chain, line, target)] whose comment names the
        port but whose target is not its hash: their chains are read in place of the port's own."""
        renamed = list(renamed)
        if not renamed:
            return _read_shape(suffix, self.entries.get(suffix, ()), self.filters.get(suffix, ()), self.lines, addrs)
        aliases = {target[:-16] + suffix: target for _, _, target in renamed}
        shape = _read_shape(suffix, list(self.entries.get(suffix, ())) + [(c, ln) for c, ln, _ in renamed],
                            self.filters.get(suffix, ()), lambda name: self.lines(aliases.get(name, name)), addrs)
        back = {actual: wanted for wanted, actual in aliases.items()}
        for hop in shape.nat.values():
            hop.target = back.get(hop.target, hop.target)  # the name is told once, as a hash-mismatch
        return shape

    def hashed_chains(self, besides: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """kube-proxy's hashed chains on the node (KUBE-SVC/SVL/EXT/FW/SEP/XLB), except those in `besides`."""
        return [name for name in self.chains.keys() - besides if chain_kind(name) is not None]


# --- the expected side ------------------------------------------------------------------------------------

@dataclass(slots=True)
class ExpectedPort:
    """kube-proxy's plan for one service port on a node, read into the same shape as the node's rules."""

    plan: ExpectedServicePort
    suffix: str
    addrs: _Addresses
    shape: PortShape
    chains: frozenset[str]  # every nat chain kube-proxy would create for the port on the node
    expected_lines: dict[str, list[str]]  # chain -> "-A …" lines, for evidence


def expect_port(plan: ExpectedServicePort) -> ExpectedPort:
    suffix = service_hash(plan.name, plan.protocol)
    addrs = _Addresses(plan.cluster_ip, plan.external_ips, plan.load_balancer_ips)
    by_chain: dict[str, list[str]] = {chain: [] for chain in plan.nat_chains}
    nat_entries, filter_entries = [], []
    for table, chain, line in plan.rules:
        if table == "nat" and chain in NAT_ENTRY_CHAINS:
            nat_entries.append((chain, line))
        elif table == "filter":
            filter_entries.append((chain, line))
        else:
            by_chain.setdefault(chain, []).append(line)
    shape = _read_shape(suffix, nat_entries, filter_entries, by_chain.get, addrs)
    lines = dict(by_chain)
    for chain, line in nat_entries + filter_entries:
        lines.setdefault(chain, []).append(line)
    return ExpectedPort(plan, suffix, addrs, shape, frozenset(plan.nat_chains), lines)


def _node_dependent(sp: ServicePort) -> bool:
    """Whether kube-proxy's plan for the port differs between nodes with the same settings: local endpoints
    matter under a Local policy, and the node's IP decides whether the LB firewall lets the node itself in."""
    return (sp.internal_traffic_policy == "Local" or sp.external_traffic_policy == "Local"
            or bool(sp.load_balancer_source_ranges and sp.load_balancer_ips))


class Planner:
    """Plans every service port for every node, once per distinct answer: with the same settings, a port whose
    policies are Cluster gets the same rules on every node (the common case, and 10,000 plans are not free)."""

    def __init__(self, cluster: ClusterModel):
        self.cluster = cluster
        self._shared: dict[ProxySettings, list] = {}  # settings without the node's name and IPs -> plans
        self._large: dict[str, bool] = {}

    def large_cluster(self, settings: ProxySettings) -> bool:
        # kube-proxy's largeClusterMode counts the endpoints of every port it proxies, usable or not
        family = settings.ip_family
        if family not in self._large:
            v6 = family == "IPv6"
            total = sum(
                sum(1 for e in sp.endpoints if (":" in e.ip) == v6)
                for sp in self.cluster.service_ports
                if sp.type != "ExternalName" and any(ip and (":" in ip) == v6 for ip in sp.cluster_ips)
            )
            self._large[family] = total > LARGE_CLUSTER_ENDPOINTS
        return self._large[family]

    def ports(self, settings: ProxySettings) -> list[ExpectedPort | None]:
        """kube-proxy's plan for every service port of the cluster on the node `settings` describe (None: a
        port kube-proxy does not proxy), in the order of `cluster.service_ports`."""
        large = self.large_cluster(settings)
        generic = replace(settings, node_name="-", node_ips=())
        shared = self._shared.get(generic)
        if shared is None:
            shared = self._shared[generic] = [_UNPLANNED] * len(self.cluster.service_ports)
        out: list[ExpectedPort | None] = []
        for index, sp in enumerate(self.cluster.service_ports):
            if _node_dependent(sp):
                plan = plan_service_port(sp, settings, large)
                out.append(expect_port(plan) if plan is not None else None)
                continue
            exp = shared[index]
            if exp is _UNPLANNED:
                plan = plan_service_port(sp, generic, large)
                exp = shared[index] = expect_port(plan) if plan is not None else None
            out.append(exp)
        return out


_UNPLANNED = object()


# --- proxy settings per node -------------------------------------------------------------------------------

def _settings_lines(rules: NodeRules) -> list[str]:
    """The lines that tell kube-proxy's settings: the global chains and a sample of the per-service ones."""
    out: list[str] = []
    nat = rules.table("nat")
    if nat is not None:
        for name in ("KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
            out += [_strip_counters(ln) for ln in chain_lines(nat.chains.get(name))]
        out += [_strip_counters(ln) for ln in chain_lines(nat.chains.get("KUBE-SERVICES")) if "KUBE-NODEPORTS" in ln]
        svc = ext = 0
        for name, chain in nat.chains.items():
            if svc >= SETTINGS_SAMPLE and ext >= SETTINGS_SAMPLE:
                break
            if name.startswith(("KUBE-SVC-", "KUBE-SVL-")) and svc < SETTINGS_SAMPLE:
                svc += 1
                out += [_strip_counters(ln) for ln in chain_lines(chain)[:1]]
            elif name.startswith("KUBE-EXT-") and ext < SETTINGS_SAMPLE:
                ext += 1
                out += [_strip_counters(ln) for ln in chain_lines(chain)[:1]]
    flt = rules.table("filter")
    if flt is not None:
        out += [_strip_counters(ln) for ln in chain_lines(flt.chains.get("KUBE-FORWARD"))]
    return out


def _strip_counters(line: str) -> str:
    return line[line.index("]") + 1 :].lstrip() if line.startswith("[") else line


def node_settings(
    node: str,
    rules: NodeRules,
    node_ips: list[str],
    kube_proxy_config: dict | None = None,
    pod_cidrs: list[str] | None = None,
) -> tuple[ProxySettings, str]:
    """(settings, where they came from) for one node: kube-proxy's ConfigMap when given, else the node's rules."""
    inferred = infer_settings_from_rules(_settings_lines(rules), node_name=node, node_ips=node_ips)
    if kube_proxy_config is not None:
        # the ConfigMap does not say which version runs nor whether iptables has --random-fully: the rules do
        try:
            settings = settings_from_kube_proxy_config(
                kube_proxy_config, node, node_ips, pod_cidrs or (), kube_minor=inferred.kube_minor,
                random_fully=inferred.random_fully)
        except (AttributeError, TypeError, ValueError) as e:  # a field of the wrong kind (a list for an object…)
            raise InputError(f"kube-proxy config: not a KubeProxyConfiguration ({type(e).__name__}: {e})") from None
        return settings, "from the kube-proxy ConfigMap"
    return inferred, "inferred from the node's rules"


# --- the comparison ---------------------------------------------------------------------------------------

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


def _shares(jumps: list[Jump]) -> list[float]:
    """Each endpoint's share of new connections: rules are tried in order, `--probability p` takes p of what is
    left and the rule without one takes the rest (kube-proxy-layout.md §2.6)."""
    left, out = 1.0, []
    for jump in jumps:
        share = left * (jump.probability if jump.probability is not None else 1.0)
        out.append(share)
        left -= share
    return out


def check_split(node: str, service: str, spn: str, chain: str, jumps: list[Jump],
                seps: dict[str, tuple[str, str]]) -> Finding | None:
    """uneven-split when a balancing chain's written probabilities do not give each endpoint 1/n of the new
    connections, or leave some to match no endpoint rule at all (they fall through, not DNATed)."""
    if not jumps:
        return None
    shares = _shares(jumps)
    even = 1.0 / len(jumps)
    unmatched = 1.0 - sum(shares)
    if max(abs(s - even) for s in shares) <= UNEVEN_TOLERANCE and unmatched <= UNEVEN_TOLERANCE:
        return None
    described = ", ".join(f"{seps.get(j.sep, ('',))[0] or j.sep} {s:.1%}" for j, s in zip(jumps, shares))
    lost = f", and {unmatched:.1%} match no endpoint rule (not DNATed)" if unmatched > UNEVEN_TOLERANCE else ""
    return finding(
        "uneven-split", node, service,
        f"{spn}: {chain} on {node} splits new connections {described}{lost}; kube-proxy would give "
        + (f"each of the {len(jumps)} endpoints {even:.1%}" if len(jumps) > 1 else "its one endpoint all of them"),
        [_evidence("nat", j.line) for j in jumps])


@dataclass(slots=True)
class PortContext:
    node: str
    spn: str
    service: str  # "ns/name"
    protocol: str
    node_ip_known: bool = True  # whether the settings know the node's IP (the LB firewall lets the node in)


def _usable(sp: ServicePort) -> dict[str, str]:
    """{address: why} of every endpoint the EndpointSlices list: "" when kube-proxy may use it anywhere (ready,
    or serving and terminating), else why not."""
    out = {}
    for e in sp.endpoints:
        if e.ready or (e.serving and e.terminating):
            out[e.address] = ""
        else:
            out[e.address] = "terminating and not serving" if e.terminating else "not ready"
    return out


def compare_port(ctx: PortContext, exp: ExpectedPort, act: PortShape) -> list[Finding]:
    """Findings for one service port on one node: the node's shape against kube-proxy's."""
    want = exp.shape
    if _same(want, act):
        # what nearly every port on a healthy node looks like: only the written probabilities are left to check
        out: list[Finding] = []
        for role, jumps in act.balancers.items():
            if not _same_probabilities(want.balancers[role], jumps):
                split = check_split(ctx.node, ctx.service, ctx.spn, act.balancer_chains[role], jumps, act.seps)
                if split is not None:
                    out.append(split)
        return out
    return _compare_in_detail(ctx, exp, act)


def _compare_in_detail(ctx: PortContext, exp: ExpectedPort, act: PortShape) -> list[Finding]:
    """The node differs from the plan somewhere: say where, once per cause. A node applying another traffic
    policy, or rejecting the port as empty, explains the endpoint differences that follow from it."""
    plan, want = exp.plan, exp.shape
    node, spn, service = ctx.node, ctx.spn, ctx.service
    out: list[Finding] = []

    def add(fid: str, message: str, evidence: Iterable[str] = (), severity: str | None = None) -> None:
        out.append(finding(fid, node, service, f"{spn}: {message}", evidence, severity))

    def expected(chain: str | None, limit: int = 3) -> list[str]:
        return [f"expected nat: {ln}" for ln in exp.expected_lines.get(chain or "", [])[:limit]]

    if act.empty:
        if plan.has_endpoints:
            dests = ", ".join(describe(d) for d in want.nat) or "its destinations"
            add("missing-service-rules",
                f"{node} has no rules for it; kube-proxy would send {dests} to "
                f"{len(plan.reachable_endpoints)} endpoint(s)",
                [f"expected {hop.line}" for hop in list(want.nat.values())[:3]]
                + [f"no chain {c} on {node}" for c in sorted(exp.chains)[:2]])
        else:
            for dest, hop in want.filter.items():
                add("missing-entry",
                    f"it has no endpoints and {node} has no {hop.target} rule for {describe(dest)}: connections "
                    f"there time out instead of being refused", [f"expected {hop.line}"], "warning")
        return out

    # the external chain first: a node applying the other traffic policy explains several differences below
    ext_differs = want.ext is not None and act.ext is not None and (
        want.ext_final != act.ext_final or want.ext_masquerade != act.ext_masquerade)
    if ext_differs:
        add("policy-mismatch", _external_mismatch(node, plan, want, act),
            [_evidence("nat", ln) for ln in act.ext_lines] + expected(want.ext, 4))
    policy_trouble = ext_differs
    no_dnat_rules = False  # the node rejects the port as having no endpoints: its endpoints are told at once

    # 1. where each destination goes first
    for dest in sorted(want.nat.keys() | act.nat.keys()):
        e, a = want.nat.get(dest), act.nat.get(dest)
        if e is not None and a is not None:
            if e.target == a.target:
                continue
            policy_trouble = True
            add("policy-mismatch", _first_hop_mismatch(node, dest, e.target, a.target, plan),
                [a.line, f"expected {e.line}"])
        elif e is not None:
            if dest in act.filter:
                continue  # the node blackholes it: told below
            add("missing-entry",
                f"{node} has no rule for {describe(dest)}: kube-proxy would send it to {e.target}, so there it "
                f"reaches no endpoint", [f"expected {e.line}"])
        elif dest not in want.filter:  # (a destination kube-proxy would blackhole: the endpoints tell why)
            add("stale-entry",
                f"{node} still sends {describe(dest)} to {a.target}, but the Service has no such "
                f"{'address' if dest[0] == 'other' else 'port'} now (an old cluster IP, port or node port?)",
                [a.line])

    # 2. what the filter table drops or rejects
    local_eps = [e.endpoint.address for e in plan.local_endpoints]
    for dest in sorted(want.filter.keys() | act.filter.keys()):
        e, a = want.filter.get(dest), act.filter.get(dest)
        if e is not None and a is not None:
            if e.target == a.target:
                continue
            if a.target == "REJECT" and plan.has_endpoints:
                no_dnat_rules = True
                add("missing-service-rules",
                    f"{node} still rejects {describe(dest)} as having no endpoints; kube-proxy would {e.target} it "
                    f"(no local endpoint), the EndpointSlices list {len(plan.cluster_endpoints)} elsewhere",
                    [a.line, f"expected {e.line}"])
            else:
                policy_trouble = True
                add("policy-mismatch", f"{node} answers {describe(dest)} with {a.target}; kube-proxy would "
                                       f"{e.target} it", [a.line, f"expected {e.line}"])
            continue
        if a is not None:
            if a.target == "REJECT":
                no_dnat_rules = True
                add("missing-service-rules",
                    f"{node} still rejects {describe(dest)} as having no endpoints, but the EndpointSlices list "
                    f"{len(plan.reachable_endpoints) or len(plan.cluster_endpoints)} usable endpoint(s)", [a.line])
            elif a.target == "DROP" and dest[0] == "firewall":
                policy_trouble = True
                add("policy-mismatch", f"{node} drops clients of {dest[1]}:{dest[2]} outside source ranges the "
                                       f"Service no longer has (loadBalancerSourceRanges)", [a.line])
            elif a.target == "DROP" and local_eps:
                add("missing-endpoint",
                    f"{node} drops {describe(dest)} as having no local endpoint, but {', '.join(local_eps)} "
                    f"{'runs' if len(local_eps) == 1 else 'run'} on {node}", [a.line])
            elif a.target == "DROP":
                policy_trouble = True
                add("policy-mismatch",
                    f"{node} drops {describe(dest)} as if the traffic policy were Local; the Service says "
                    f"{_policy_words(plan, dest)}", [a.line])
            else:
                add("stale-entry", f"{node} still accepts {describe(dest)} for a health check the Service no "
                                   f"longer has", [a.line], "warning")
        elif e.target == "ACCEPT":
            add("missing-entry", f"{node} has no ACCEPT for {describe(dest)}: the load balancer's health checks "
                                 f"of this node fail", [f"expected {e.line}"], "warning")
        elif dest not in act.nat and not policy_trouble:
            # (a destination the node DNATs instead: its endpoints or its policy tell why)
            add("missing-entry",
                f"{node} has no rule for {describe(dest)}: kube-proxy would {e.target} it (no "
                f"{'endpoints' if e.target == 'REJECT' else 'local endpoint'}), so connections time out instead",
                [f"expected {e.line}"], "warning")

    # 3. the endpoints each balancing chain spreads over
    listed = _usable(plan.service_port)
    told_stale: set[str] = set()
    affinity_chains: list[tuple[str, list[Jump]]] = []
    for role in ("svc", "svl"):
        wanted = want.balancers.get(role)
        have = act.balancers.get(role)
        wanted_seps = {j.sep: want.seps.get(j.sep, ("", ""))[0] for j in wanted or ()}
        wanted_by_address = {addr: sep for sep, addr in wanted_seps.items()}
        have_seps = {j.sep for j in have or ()}
        chain_name = act.balancer_chains.get(role) or want.balancer_chains.get(role) or _BALANCER_PREFIX[role]
        renamed: set[str] = set()
        misplaced: list[Jump] = []
        for jump in have or ():
            if jump.sep in wanted_seps:
                continue
            dest, dnat_line = act.seps.get(jump.sep, ("", ""))
            evidence = [_evidence("nat", jump.line)] + ([_evidence("nat", dnat_line)] if dnat_line else [])
            if dest in wanted_by_address:
                renamed.add(dest)
                add("hash-mismatch",
                    f"{jump.sep} on {node} DNATs to {dest}, an endpoint of the port, but kube-proxy names that "
                    f"chain {wanted_by_address[dest]}: not written by kube-proxy, or renamed", evidence)
            elif listed.get(dest) == "":
                misplaced.append(jump)  # a usable endpoint, in a chain kube-proxy would not put it in
            elif (dest or jump.sep) not in told_stale:
                told_stale.add(dest or jump.sep)
                why = (f"which the EndpointSlices list as {listed[dest]}" if dest in listed
                       else "which no EndpointSlice lists: an old pod?")
                not_hash = dest and endpoint_hash(spn, ctx.protocol, dest) != jump.sep[-16:]
                add("stale-endpoint",
                    f"{node} still sends new connections to {dest or jump.sep} (via {chain_name}), {why}"
                    + (" The chain name is not kube-proxy's hash for it either." if not_hash else ""),
                    evidence)
        if misplaced and not policy_trouble:
            policy_trouble = True
            addrs = ", ".join(act.seps.get(j.sep, (j.sep,))[0] for j in misplaced)
            add("policy-mismatch",
                f"{chain_name} on {node} sends to {addrs}, which kube-proxy would "
                + ("not count as local to this node" if role == "svl" else
                   f"not use from here ({_policy_words(plan, ('clusterIP', '', ''))}, "
                   f"{_policy_words(plan, ('nodePort', '', ''))})"),
                [_evidence("nat", j.line) for j in misplaced])
        if not no_dnat_rules and not (role == "svl" and policy_trouble):
            for sep, addr in wanted_seps.items():
                if sep in have_seps or addr in renamed:
                    continue
                jump_line = next((j.line for j in wanted or () if j.sep == sep), "")
                where = (f"{chain_name} on {node} has no rule for it" if have is not None
                         else f"{node} has no {chain_name}")
                add("missing-endpoint",
                    f"endpoint {addr} is in the EndpointSlices but {where}, so it gets no "
                    f"{'local ' if role == 'svl' else ''}traffic from this node",
                    ([f"{chain_name}: {len(have)} endpoint rule(s)"] if have is not None else [])
                    + [f"expected nat: {jump_line}"])
        if have is not None:
            split = check_split(node, service, spn, chain_name, have, act.seps)
            if split is not None:
                out.append(split)
        if wanted is not None and have is not None and want.affinity.get(role) != act.affinity.get(role):
            affinity_chains.append((chain_name, have))

    if affinity_chains:
        says = plan.service_port.session_affinity
        has = any(act.affinity.get(role) for role in act.affinity)
        add("policy-mismatch",
            f"{' and '.join(c for c, _ in affinity_chains)} on {node} {'have' if has else 'have no'} ClientIP "
            f"affinity rules; the Service says sessionAffinity {says}",
            [_evidence("nat", j.line) for _, have in affinity_chains for j in have][:4])

    # an endpoint chain kube-proxy would name for one address but that DNATs to another
    for sep, (want_dest, _) in want.seps.items():
        have_dest, line = act.seps.get(sep, ("", ""))
        if have_dest and have_dest != want_dest:
            add("hash-mismatch", f"{sep} on {node} DNATs to {have_dest}, but kube-proxy's chain of that name "
                                 f"goes to {want_dest}: not written by kube-proxy, or edited",
                [_evidence("nat", line)])

    # 4. who the load-balancer firewall lets in
    if want.fw is not None and act.fw is not None:
        wanted_sources, have_sources = want.fw_sources, act.fw_sources
        if not ctx.node_ip_known:
            # without the node's IP, whether kube-proxy lets the node reach its own LB IP cannot be told
            lbs = set(plan.load_balancer_ips)
            wanted_sources, have_sources = wanted_sources - lbs, have_sources - lbs
        if wanted_sources != have_sources:
            add("policy-mismatch",
                f"{act.fw} on {node} lets in {', '.join(sorted(have_sources)) or 'nobody'}; the Service's "
                f"loadBalancerSourceRanges allow {', '.join(sorted(wanted_sources)) or 'nobody'}",
                [_evidence("nat", ln) for ln in act.fw_lines] + expected(want.fw, 4))

    # what the API says, confirmed by the node's own blackhole rules
    out.extend(local_drops(node, service, spn, [
        (dest, hop) for dest, hop in sorted(act.filter.items())
        if hop.target == "DROP" and dest[0] != "firewall" and want.filter.get(dest, hop).target == "DROP"
        and dest in want.filter]))
    return out


def local_drops(node: str, service: str, spn: str, hops: list[tuple[Dest, Hop]]) -> list[Finding]:
    """The "no local endpoints" DROPs of one port on one node: one finding for cluster-IP traffic
    (internalTrafficPolicy), one for the external destinations (externalTrafficPolicy); an error once they
    have dropped packets."""
    out = []
    for internal in (True, False):
        mine = [(d, h) for d, h in hops if (d[0] == "clusterIP") == internal]
        if not mine:
            continue
        packets = sum(h.packets for _, h in mine)
        counted = f" ({packets} packets dropped so far)" if packets else ""
        where = ", ".join(describe(d) for d, _ in mine)
        if internal:
            message = (f"{spn}: internalTrafficPolicy Local and no ready pod on {node}: connections from this node "
                       f"to {where} are dropped{counted}")
        else:
            message = (f"{spn}: externalTrafficPolicy Local and no ready pod on {node}: outside clients of {where} "
                       f"on this node are dropped{counted}")
        fid = "itp-local-no-local-endpoints" if internal else "etp-local-no-local-endpoints"
        out.append(finding(fid, node, service, message, [h.line for _, h in mine], "error" if packets else None))
    return out


def _same(want: PortShape, act: PortShape) -> bool:
    """Whether the node does what kube-proxy would, leaving the split aside. Ports with blackhole rules take the
    long way: those rules are findings of their own."""
    if want.filter or act.filter or len(want.nat) != len(act.nat):
        return False
    for dest, hop in want.nat.items():
        other = act.nat.get(dest)
        if other is None or other.target != hop.target:
            return False
    if (want.ext != act.ext or want.ext_final != act.ext_final or want.ext_masquerade != act.ext_masquerade
            or want.fw != act.fw or want.fw_sources != act.fw_sources or want.affinity != act.affinity):
        return False
    for role, jumps in want.balancers.items():
        other = act.balancers.get(role)
        if other is None or len(other) != len(jumps) or any(a.sep != b.sep for a, b in zip(jumps, other)):
            return False
    if len(act.balancers) != len(want.balancers):
        return False
    seps = act.seps
    return all(seps.get(sep, ("",))[0] == dest for sep, (dest, _) in want.seps.items())


def _same_probabilities(want: list[Jump], have: list[Jump]) -> bool:
    # the kernel keeps a probability as a 31-bit fraction: 0.3333333333 is printed back as 0.33333333349
    for w, h in zip(want, have):
        if w.probability is None or h.probability is None:
            if w.probability is not h.probability:
                return False
        elif abs(w.probability - h.probability) > 1e-6:
            return False
    return True


def _policy_words(plan: ExpectedServicePort, dest: Dest) -> str:
    sp = plan.service_port
    if dest[0] == "clusterIP":
        return f"internalTrafficPolicy {sp.internal_traffic_policy}"
    return f"externalTrafficPolicy {sp.external_traffic_policy or 'Cluster'}"


def _first_hop_mismatch(node: str, dest: Dest, want: str, have: str, plan: ExpectedServicePort) -> str:
    wk, hk = chain_kind(want), chain_kind(have)
    where = describe(dest)
    if dest[0] == "clusterIP" and (wk, hk) == ("svl", "svc"):
        return (f"{node} sends cluster traffic for {where} through {have}, kube-proxy's chain for all endpoints; "
                f"the Service says internalTrafficPolicy Local, so kube-proxy would use only this node's pods "
                f"({want})")
    if dest[0] == "clusterIP" and (wk, hk) == ("svc", "svl"):
        return (f"{node} sends cluster traffic for {where} through {have}, kube-proxy's chain for this node's "
                f"pods only; the Service says internalTrafficPolicy Cluster, so kube-proxy would use every endpoint "
                f"({want})")
    if (wk, hk) == ("fw", "ext"):
        return (f"{node} lets every client of {where} in ({have}); the Service's loadBalancerSourceRanges "
                f"would go through {want}")
    if (wk, hk) == ("ext", "fw"):
        return f"{node} filters the sources of {where} ({have}) though the Service has no loadBalancerSourceRanges"
    return f"{node} sends {where} to {have}; kube-proxy would send it to {want} ({_policy_words(plan, dest)})"


def _external_mismatch(node: str, plan: ExpectedServicePort, want: PortShape, act: PortShape) -> str:
    dests = ", ".join(describe(d) for d in want.nat if d[0] != "clusterIP") or "its external destinations"
    policy = plan.service_port.external_traffic_policy or "Cluster"
    snat = " and SNATed (the client IP is lost)" if act.ext_masquerade else ""
    if act.ext_final == "svc" and want.ext_final != "svc":
        extra = "" if want.ext_final else " and no pod on this node"
        return (f"{node} acts as externalTrafficPolicy Cluster for {dests}: outside clients are spread over every "
                f"endpoint{snat}; the Service says {policy}{extra}")
    if act.ext_masquerade and not want.ext_masquerade:
        return (f"{node} SNATs outside clients of {dests} (the client IP is lost); the Service says "
                f"externalTrafficPolicy {policy}")
    if act.ext_final == "svl" and want.ext_final == "svc":
        return (f"{node} acts as externalTrafficPolicy Local for {dests}: outside clients only reach this "
                f"node's pods; the Service says {policy}")
    if act.ext_final is None and want.ext_final is not None:
        return (f"{act.ext} on {node} sends outside clients of {dests} nowhere; kube-proxy would send them to "
                f"{want.balancer_chains.get(want.ext_final) or want.ext_final.upper()}")
    if want.ext_masquerade and not act.ext_masquerade:
        return (f"{node} does not SNAT outside clients of {dests}; with externalTrafficPolicy {policy} kube-proxy "
                f"would, so replies from pods on other nodes do not find their way back")
    return f"{act.ext} on {node} does not do what kube-proxy would for externalTrafficPolicy {policy}"


# --- every node, with the API -------------------------------------------------------------------------------

@dataclass(slots=True)
class NodeInput:
    """What the diff needs to know about one readable node."""

    name: str
    rules: NodeRules
    settings: ProxySettings | None  # None without the API: nothing is planned
    settings_source: str


def diff_nodes(
    nodes: list[NodeInput],
    cluster: ClusterModel,
    ports: list[ServicePort] | None = None,
    report_orphans: Callable[[str | None], bool] = lambda service: True,
) -> list[Finding]:
    """Desired against programmed for `ports` (default: every service port) on every node given.

    Nodes without kube-proxy rules are skipped: that one node-wide finding says it all.
    `report_orphans(service or None)` decides which left-over chains are reported (namespace filters).
    """
    selected = set(map(id, ports)) if ports is not None else None
    planner = Planner(cluster)
    out: list[Finding] = []
    all_suffixes = {service_hash(sp.svc_port_name, sp.protocol): sp for sp in cluster.service_ports}
    no_endpoints: dict[str, tuple[ExpectedPort, list[str]]] = {}
    for node in nodes:
        program = NodeProgram(node.name, node.rules)
        if not program.has_rules:
            continue
        accounted: set[str] = set()
        expected_suffixes: set[str] = set()
        plans: list[tuple[ServicePort, ExpectedPort]] = []
        for sp, exp in zip(cluster.service_ports, planner.ports(node.settings)):
            if exp is None:
                continue
            expected_suffixes.add(exp.suffix)
            accounted.update(exp.chains)
            if selected is None or id(sp) in selected:
                plans.append((sp, exp))
        # entries whose comment names a port but whose chain is not its hash
        renamed = _renamed_entries(program, expected_suffixes, {p.suffix: p for _, p in plans})
        for sp, exp in plans:
            extra = renamed.get(exp.suffix, ())
            act = program.shape(exp.suffix, exp.addrs, extra)
            ctx = PortContext(node.name, exp.plan.name, sp.service_key, exp.plan.protocol,
                              node_ip_known=node.settings.node_ip is not None)
            for _, line, target in extra:
                out.append(finding(
                    "hash-mismatch", node.name, sp.service_key,
                    f"{exp.plan.name}: {target} on {node.name} carries the port's comment but is not its hash "
                    f"(kube-proxy would name it {target[:-16]}{exp.suffix}): not written by kube-proxy, or renamed",
                    [_evidence("nat", line)]))
                accounted.add(target)
            out.extend(compare_port(ctx, exp, act))
            accounted.update(act.seps)
            accounted.update(act.balancer_chains.values())
            if not exp.plan.has_endpoints:
                hop = next((h for h in act.filter.values() if h.target == "REJECT"), None)
                seen = no_endpoints.setdefault(exp.plan.name, (exp, []))[1]
                if hop is not None:
                    seen.append(hop.line)
        out.extend(_orphans(program, accounted, all_suffixes, report_orphans))
    for spn, (exp, lines) in sorted(no_endpoints.items()):
        ports_desc = describe(next(iter(exp.shape.filter), ("clusterIP", exp.plan.cluster_ip, "")))
        out.append(finding(
            "no-endpoints", None, exp.plan.service_port.service_key,
            f"{spn} has no usable endpoint (no ready or serving pod in its EndpointSlices): kube-proxy rejects "
            f"connections to {ports_desc}", lines[:1] or [f"expected {h.line}" for h in exp.shape.filter.values()][:1]))
    return out


def _renamed_entries(program: NodeProgram, expected: set[str], wanted: dict[str, ExpectedPort]
                     ) -> dict[str, list[tuple[str, str, str]]]:
    """Entry rules of chains no port expects whose comment names a port we check: {suffix: [(chain, line, target)]}."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for suffix, entries in program.entries.items():
        if suffix in expected:
            continue
        for chain, line in entries:
            spn, _ = service_port_of_comment(_comment(line))
            if spn is None:
                continue
            protocol = (_option(line, " -p ") or "tcp").lower()
            real = service_hash(spn, protocol)
            if real in wanted and real != suffix:
                out.setdefault(real, []).append((chain, line, _target(line) or ""))
    return out


def _orphans(program: NodeProgram, accounted: set[str], known: dict[str, ServicePort],
             report: Callable[[str | None], bool]) -> list[Finding]:
    """Hashed chains kube-proxy would not have on the node that no port comparison explained."""
    out: list[Finding] = []
    left = sorted(program.hashed_chains(accounted))
    if not left:
        return out
    groups: dict[str, list[str]] = {}
    seps: list[str] = []
    for name in left:
        (seps if chain_kind(name) == "sep" else groups.setdefault(name[-16:], [])).append(name)
    folded: set[str] = set()
    for suffix, names in sorted(groups.items()):
        lines = [ln for name in names for ln in (program.lines(name) or [])]
        inner = {t for ln in lines if (t := _target(ln)) and t.startswith("KUBE-SEP-")}
        folded |= inner
        entries = program.entries.get(suffix, [])
        sp = known.get(suffix)
        spn = sp.svc_port_name if sp is not None else _comment_port(entries + [("", ln) for ln in lines])
        service = spn.split(":", 1)[0] if spn else None
        if not report(service):
            continue
        dests = [describe(_nat_dest(c, ln, _Addresses()) or ("other", "", "")) for c, ln in entries]
        what = (f"belongs to {spn}, which kube-proxy would not proxy now (headless, ExternalName, or no cluster "
                f"IP of this family)" if sp is not None
                else f"belong{'s' if len(names) == 1 else ''} to no service port the API knows"
                + (f" (its comment says {spn}: a deleted Service?)" if spn else ""))
        if entries:
            message = (f"{', '.join(sorted(names))} on {program.node} {what}, and KUBE-SERVICES still sends "
                       f"{', '.join(dests)} to {len(inner)} old endpoint(s) through it")
        else:
            message = f"{', '.join(sorted(names))} on {program.node} {what}; nothing jumps to it (left over)"
        out.append(finding(
            "orphan-chain", program.node, service, message,
            [_evidence("nat", ln) for _, ln in entries[:2]] + [_evidence("nat", ln) for ln in lines[:3]],
            "error" if entries else None))
    for name in seps:
        if name in folded:
            continue
        lines = program.lines(name) or []
        spn = _comment_port([("", ln) for ln in lines])
        service = spn.split(":", 1)[0] if spn else None
        if not report(service):
            continue
        dest, _ = _dnat(lines)
        out.append(finding(
            "orphan-chain", program.node, service,
            f"{name} on {program.node} (DNAT to {dest or 'nowhere'}{', ' + spn if spn else ''}) is an endpoint "
            f"chain of no current endpoint and nothing kube-proxy would write jumps to it (left over)",
            [_evidence("nat", ln) for ln in lines[:2]]))
    return out


def _comment_port(lines: Iterable[tuple[str, str]]) -> str | None:
    for _, line in lines:
        spn, _ = service_port_of_comment(_comment(line))
        if spn:
            return spn
    return None


# --- every node, without the API ---------------------------------------------------------------------------

def compare_nodes(
    nodes: list[NodeInput],
    wanted: Callable[[str], bool] = lambda service: True,
) -> tuple[list[Finding], set[str]]:
    """No API objects: nothing to expect, so each node is checked on its own (split, blackholes, names, left-over
    chains) and against the others (`node-drift`). Returns the findings and the services seen ("ns/name")."""
    out: list[Finding] = []
    # suffix -> node -> (signature, evidence)
    signatures: dict[str, dict[str, tuple[tuple, list[str]]]] = {}
    names: dict[str, str] = {}
    protocols: dict[str, str] = {}
    rejecting: dict[str, list[tuple[str, str]]] = {}
    hash_memo: dict[tuple[str, str, str], str] = {}
    for node in nodes:
        program = NodeProgram(node.name, node.rules)
        if not program.has_rules:
            continue
        addrs = _Addresses()
        suffixes = set(program.entries) | set(program.filters)
        accounted: set[str] = set()
        for suffix in sorted(suffixes):
            entries = program.entries.get(suffix, [])
            spn, protocol = _name_of(entries + program.filters.get(suffix, []))
            if spn is None:
                continue  # no comment to name it: the orphan scan below still sees its chains
            service = spn.split(":", 1)[0]
            if not wanted(service):
                for role, prefix in _BALANCER_PREFIX.items():
                    accounted.add(prefix + suffix)
                continue
            names[suffix], protocols[suffix] = spn, protocol
            real = service_hash(spn, protocol)
            if real != suffix:
                target = _target(entries[0][1]) if entries else suffix
                out.append(finding(
                    "hash-mismatch", node.name, service,
                    f"{spn}: {target} on {node.name} carries the port's comment but is not its hash (kube-proxy "
                    f"would name it …-{real}): not written by kube-proxy, or renamed",
                    [_evidence("nat", entries[0][1])] if entries else []))
            shape = program.shape(suffix, addrs)
            accounted.update(shape.seps)
            accounted.update(shape.balancer_chains.values())
            for name in (shape.ext, shape.fw):
                if name:
                    accounted.add(name)
            for jump_role, jumps in shape.balancers.items():
                split = check_split(node.name, service, spn, shape.balancer_chains[jump_role], jumps, shape.seps)
                if split is not None:
                    out.append(split)
            for sep, (dest, line) in shape.seps.items():
                if not dest:
                    continue
                key = (spn, protocol, dest)
                if key not in hash_memo:
                    hash_memo[key] = endpoint_hash(spn, protocol, dest)
                if hash_memo[key] != sep[-16:]:
                    out.append(finding(
                        "hash-mismatch", node.name, service,
                        f"{spn}: {sep} on {node.name} DNATs to {dest}, but kube-proxy would name that endpoint's "
                        f"chain KUBE-SEP-{hash_memo[key]}: not written by kube-proxy, or edited",
                        [_evidence("nat", line)]))
            drops = []
            for dest, hop in sorted(shape.filter.items()):
                comment = _comment(hop.line) or ""
                if hop.target == "REJECT" and comment.endswith(" has no endpoints"):
                    seen = rejecting.setdefault(suffix, [])
                    if node.name not in (n for n, _ in seen):
                        seen.append((node.name, hop.line))
                elif hop.target == "DROP" and comment.endswith(" has no local endpoints"):
                    drops.append((dest, hop))
            out.extend(local_drops(node.name, service, spn, drops))
            signatures.setdefault(suffix, {})[node.name] = _signature(shape)
        out.extend(_orphans_without_api(program, accounted, wanted))
    read = [n.name for n in nodes if n.rules.has_kube_proxy_rules()]
    for suffix, lines in sorted(rejecting.items()):
        spn = names[suffix]
        nodes_with = [n for n, _ in lines]
        node = None if len(nodes_with) == len(read) else ", ".join(nodes_with)
        out.append(finding(
            "no-endpoints", node if node is None or len(nodes_with) > 1 else nodes_with[0], spn.split(":", 1)[0],
            f"{spn} has no endpoints: kube-proxy rejects its connections"
            + ("" if node is None else f" (on {node})"), [lines[0][1]]))
    for suffix, per_node in sorted(signatures.items()):
        out.extend(_drift(names[suffix], per_node, read))
    return out, {spn.split(":", 1)[0] for spn in names.values()}


def _name_of(lines: Iterable[tuple[str, str]]) -> tuple[str | None, str]:
    for _, line in lines:
        spn, _ = service_port_of_comment(_comment(line))
        if spn:
            return spn, (_option(line, " -p ") or "tcp").lower()
    return None, "tcp"


def _signature(shape: PortShape) -> tuple[tuple, list[str]]:
    """What must be the same on every node whatever the traffic policies: the destinations handled, and the
    cluster-wide endpoint list (KUBE-SVC). KUBE-SVL and 'no local endpoints' drops legitimately differ."""
    handled = set(shape.nat)
    handled |= {d for d, hop in shape.filter.items() if hop.target == "DROP" and d[0] != "firewall"}
    endpoints = frozenset(shape.seps[j.sep][0] for j in shape.balancers.get("svc", ()) if j.sep in shape.seps)
    rejects = frozenset(d for d, hop in shape.filter.items() if hop.target == "REJECT")
    evidence = ([hop.line for hop in shape.nat.values()][:2]
                + [_evidence("nat", j.line) for j in shape.balancers.get("svc", ())][:4])
    return (frozenset(handled), endpoints, rejects), evidence


def _drift(spn: str, per_node: dict[str, tuple[tuple, list[str]]], read: list[str]) -> list[Finding]:
    """node-drift for one service port: each node whose view differs from the majority's. With no majority
    (two nodes, two views) every view is compared with the next one, so both nodes are named."""
    service = spn.split(":", 1)[0]
    nothing = (frozenset(), frozenset(), frozenset())
    views = {n: per_node[n][0] if n in per_node else nothing for n in read}
    groups: dict[tuple, list[str]] = {}
    for node in sorted(views):
        groups.setdefault(views[node], []).append(node)
    if len(groups) <= 1:
        return []
    ranked = sorted(groups, key=lambda sig: (-len(groups[sig]), groups[sig]))
    tie = len(groups[ranked[0]]) == len(groups[ranked[1]])
    out = []
    for rank, sig in enumerate(ranked):
        if rank == 0 and not tie:
            continue
        reference = ranked[1] if rank == 0 else ranked[0]
        others = groups[reference]
        parts = _drift_parts(sig, reference, nothing)
        for node in groups[sig]:
            evidence = [f"{node}: {e}" for e in per_node[node][1]] if node in per_node else [f"{node}: no rules"]
            evidence += [f"{others[0]}: {e}" for e in per_node[others[0]][1]] if others[0] in per_node else []
            out.append(finding(
                "node-drift", node, service,
                f"{spn}: {node} disagrees with {', '.join(others)} ({'; '.join(parts) or 'rules differ'})",
                evidence))
    return out


def _drift_parts(sig: tuple, reference: tuple, nothing: tuple) -> list[str]:
    if sig == nothing:
        return ["it has no rules for the port at all"]
    if reference == nothing:
        return ["the others have no rules for the port at all"]
    parts = []
    extra_eps, missing_eps = sorted(sig[1] - reference[1]), sorted(reference[1] - sig[1])
    extra_dests, missing_dests = sig[0] - reference[0], reference[0] - sig[0]
    if extra_eps:
        parts.append(f"endpoints only here: {', '.join(extra_eps)}")
    if missing_eps:
        parts.append(f"endpoints missing here: {', '.join(missing_eps)}")
    if missing_dests:
        parts.append(f"no rule here for {', '.join(describe(d) for d in sorted(missing_dests))}")
    if extra_dests:
        parts.append(f"only here: {', '.join(describe(d) for d in sorted(extra_dests))}")
    if sig[2] != reference[2]:
        parts.append("it rejects the port as having no endpoints" if sig[2]
                     else "the others reject the port as having no endpoints")
    return parts


def _orphans_without_api(program: NodeProgram, accounted: set[str], wanted: Callable[[str], bool]) -> list[Finding]:
    """Without the API, a chain is left over only when nothing jumps to it."""
    referenced: set[str] = set()
    for suffix, entries in program.entries.items():
        referenced.update(_target(ln) for _, ln in entries)
    for name in list(referenced) + [n for n in accounted if chain_kind(n) in ("ext", "fw", "svc", "svl")]:
        for line in program.lines(name) or ():
            target = _target(line)
            if target and chain_kind(target) is not None:
                referenced.add(target)
    out = []
    for name in program.hashed_chains():
        if name in referenced or name in accounted:
            continue
        lines = program.lines(name) or []
        spn = _comment_port([("", ln) for ln in lines])
        if spn and not wanted(spn.split(":", 1)[0]):
            continue
        out.append(finding(
            "orphan-chain", program.node, spn.split(":", 1)[0] if spn else None,
            f"{name} on {program.node} exists but no rule jumps to it (left over)"
            + (f"; its comment says {spn}" if spn else ""),
            [f"nat: :{name} ({len(lines)} rules)"] + [_evidence("nat", ln) for ln in lines[:2]]))
    return out
