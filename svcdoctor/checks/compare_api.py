"""Desired versus programmed, on every node: what kube-proxy would write there against what the node's rules do.

With the API objects, `model/expected.py` says what kube-proxy would program on each node (from the node's proxy
settings, `model/proxy_settings.py`). Both that plan and the node's rules are read into the same `PortShape`
(`model/port_shape.py`), service port by service port, so what is compared is behaviour: where each destination
of the port goes first, which endpoints each balancing chain spreads over and how evenly, what the external
chain does with outside clients, which sources the firewall chain lets in, what the filter table drops.

Without the API there is nothing to expect; `checks/drift.py` compares the nodes with each other instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from svcdoctor.checks.drift import NodeInput
from svcdoctor.checks.findings import Finding, finding, no_endpoints_finding
from svcdoctor.checks.port_findings import check_split, comment_port, legacy_drops, local_drops
from svcdoctor.model import rule_text
from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.expected import LARGE_CLUSTER_ENDPOINTS, ExpectedServicePort, decide_service_port
from svcdoctor.model.hashes import (
    ENDPOINT_CHAIN_PREFIX,
    HASHED_PREFIXES,
    chain_kind,
    chain_prefix,
    chain_suffix,
    endpoint_hash,
    service_hash,
)
from svcdoctor.model.partial import is_partial
from svcdoctor.model.port_shape import (
    BALANCER_PREFIX,
    Addresses,
    Dest,
    ExpectedPort,
    Jump,
    NodeProgram,
    PortShape,
    describe,
    dnat_of,
    evidence,
    expect_decisions,
    nat_dest,
)
from svcdoctor.model.proxy_settings import ProxySettings
from svcdoctor.model.service_rules import service_port_of_comment

__all__ = ["NodeInput", "PortContext", "Planner", "compare_port", "diff_nodes"]


# --- kube-proxy's plans, every node --------------------------------------------------------------------------

def _node_dependent(sp: ServicePort) -> bool:
    """Whether kube-proxy's plan for the port differs between nodes with the same settings: local endpoints
    matter under a Local policy, and the node's IP decides whether the LB firewall lets the node itself in."""
    return (sp.internal_traffic_policy == "Local" or sp.external_traffic_policy == "Local"
            or bool(sp.load_balancer_source_ranges and sp.load_balancer_ips))


def _shared_key(sp: ServicePort, settings: ProxySettings) -> tuple[str, bool | None]:
    """What kube-proxy's decisions for a port that is not node-dependent take from the node's settings
    (model/expected.py: _decide): the address family, and whether addresses are printed parsed (1.30+), which
    only the external and load-balancer IPs and the source ranges are."""
    prints_addresses = bool(sp.external_ips or sp.load_balancer_ips or sp.load_balancer_source_ranges)
    return settings.ip_family, (settings.kube_minor >= 30 if prints_addresses else None)


_UNPLANNED = object()


class Planner:
    """Plans service ports for every node, once per distinct answer: a port whose policies are Cluster gets the
    same decisions on every node of an address family (the common case, and 10,000 plans are not free). Those
    depend on no more of a node than `_shared_key` says, so they can be made before any node's rules are read
    (`share`: check's workers read their own node, checks/engine.py)."""

    def __init__(self, cluster: ClusterModel):
        self.cluster = cluster
        self._shared: dict[tuple[str, bool | None], list] = {}  # _shared_key -> plans, one slot per port
        self._large: dict[str, bool] = {}
        self._hashes: dict[str, ServicePort] | None = None

    def hashes(self) -> dict[str, ServicePort]:
        """{hash suffix: service port} of every port of the cluster (kube-proxy's chain names)."""
        if self._hashes is None:
            self._hashes = {service_hash(sp.svc_port_name, sp.protocol): sp for sp in self.cluster.service_ports}
        return self._hashes

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

    def ports(self, settings: ProxySettings, chosen: set[int] | None = None) -> list[ExpectedPort | None]:
        """kube-proxy's plan for every service port of the cluster on the node `settings` describe (None: a
        port kube-proxy does not proxy, or one not among the `chosen` indexes), in the order of
        `cluster.service_ports`."""
        large = self.large_cluster(settings)
        generic = replace(settings, node_name="-", node_ips=())
        out: list[ExpectedPort | None] = []
        for index, sp in enumerate(self.cluster.service_ports):
            if chosen is not None and index not in chosen:
                out.append(None)
            elif _node_dependent(sp):
                out.append(_expect(sp, settings, large))
            else:
                out.append(self._shared_plan(index, sp, generic, large))
        return out

    def share(self, settings: ProxySettings) -> None:
        """Plan ahead every port that is planned the same on every node like `settings` (all but the
        node-dependent ones)."""
        large = self.large_cluster(settings)
        generic = replace(settings, node_name="-", node_ips=())
        for index, sp in enumerate(self.cluster.service_ports):
            if not _node_dependent(sp):
                self._shared_plan(index, sp, generic, large)

    def _shared_plan(self, index: int, sp: ServicePort, generic: ProxySettings, large: bool) -> ExpectedPort | None:
        # `generic`: the node's settings without its name and addresses
        key = _shared_key(sp, generic)
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = [_UNPLANNED] * len(self.cluster.service_ports)
        exp = shared[index]
        if exp is _UNPLANNED:
            exp = shared[index] = _expect(sp, generic, large)
        return exp


def plan_settings(sp: ServicePort, settings: ProxySettings) -> ProxySettings:
    """The settings a port's rules are written with on a node (a finding's evidence): the node's, or for a port
    planned the same on every node, the node's without its name and addresses."""
    return settings if _node_dependent(sp) else replace(settings, node_name="-", node_ips=())


def _expect(sp: ServicePort, settings: ProxySettings, large: bool) -> ExpectedPort | None:
    # kube-proxy's decisions, in the shape a node's rules are read into; its rules are written only for a port
    # that differs from the node's (ExpectedPort.written)
    plan = decide_service_port(sp, settings)
    return expect_decisions(plan, large) if plan is not None else None


# --- one port on one node -----------------------------------------------------------------------------------

@dataclass(slots=True)
class PortContext:
    node: str
    spn: str
    service: str  # "ns/name"
    protocol: str
    node_ip_known: bool = True  # whether the settings know the node's IP (the LB firewall lets the node in)
    settings: ProxySettings | None = None  # the node's: kube-proxy's rules are written with them for evidence

    def written(self, exp: ExpectedPort) -> ExpectedPort:
        """The plan with its rules written (and read back), as kube-proxy would write them on the node."""
        return exp.written(plan_settings(exp.plan.service_port, self.settings) if self.settings else None)


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
    return _PortComparison(ctx, ctx.written(exp), act).findings()


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


class _PortComparison:
    """The node differs from the plan somewhere: say where, once per cause. A node applying another traffic
    policy, or rejecting the port as empty, explains the endpoint differences that follow from it; the two
    flags carry that from one step to the next."""

    def __init__(self, ctx: PortContext, exp: ExpectedPort, act: PortShape):
        self.ctx, self.exp, self.act = ctx, exp, act
        self.plan, self.want = exp.plan, exp.shape
        self.node = ctx.node
        self.out: list[Finding] = []
        self.policy_trouble = False  # the node applies another policy: endpoint differences follow from it
        self.no_dnat_rules = False  # the node rejects the port as having no endpoints: its endpoints are told

    def findings(self) -> list[Finding]:
        if self.act.empty:
            self.no_rules_at_all()
            return self.out
        self.external_chain()
        self.first_hops()  # 1.
        self.filter_verdicts()  # 2.
        self.balancing_chains()  # 3.
        self.endpoint_chain_names()
        self.firewall_sources()  # 4.
        self.local_drops()
        return self.out

    def add(self, fid: str, message: str, proof: Iterable[str] = (), severity: str | None = None) -> None:
        self.out.append(finding(fid, self.node, self.ctx.service, f"{self.ctx.spn}: {message}", proof, severity))

    def expected(self, chain: str | None, limit: int = 3) -> list[str]:
        return [f"expected nat: {ln}" for ln in self.exp.expected_lines.get(chain or "", [])[:limit]]

    def no_rules_at_all(self) -> None:
        plan, want, node = self.plan, self.want, self.node
        if plan.has_endpoints:
            dests = ", ".join(describe(d) for d in want.nat) or "its destinations"
            self.add("missing-service-rules",
                     f"{node} has no rules for it; kube-proxy would send {dests} to "
                     f"{len(plan.reachable_endpoints)} endpoint(s)",
                     [f"expected {hop.line}" for hop in list(want.nat.values())[:3]]
                     + [f"no chain {c} on {node}" for c in sorted(self.exp.chains)[:2]])
            return
        for dest, hop in want.filter.items():
            self.add("missing-entry",
                     f"it has no endpoints and {node} has no {hop.target} rule for {describe(dest)}: connections "
                     f"there time out instead of being refused", [f"expected {hop.line}"], "warning")

    def external_chain(self) -> None:
        """First, as a node applying the other traffic policy explains several differences below."""
        want, act = self.want, self.act
        if want.ext is not None and act.ext is not None and (
                want.ext_final != act.ext_final or want.ext_masquerade != act.ext_masquerade):
            self.policy_trouble = True
            self.add("policy-mismatch", _external_mismatch(self.node, self.plan, want, act),
                     [evidence("nat", ln) for ln in act.ext_lines] + self.expected(want.ext, 4))

    def first_hops(self) -> None:
        """1. Where each destination goes first."""
        want, act, node = self.want, self.act, self.node
        for dest in sorted(want.nat.keys() | act.nat.keys()):
            e, a = want.nat.get(dest), act.nat.get(dest)
            if e is not None and a is not None:
                if e.target == a.target:
                    continue
                self.policy_trouble = True
                self.add("policy-mismatch", _first_hop_mismatch(node, dest, e.target, a.target, self.plan),
                         [a.line, f"expected {e.line}"])
            elif e is not None:
                if dest in act.filter:
                    continue  # the node blackholes it: told below
                self.add("missing-entry",
                         f"{node} has no rule for {describe(dest)}: kube-proxy would send it to {e.target}, so "
                         f"there it reaches no endpoint", [f"expected {e.line}"])
            elif dest not in want.filter:  # (a destination kube-proxy would blackhole: the endpoints tell why)
                self.add("stale-entry",
                         f"{node} still sends {describe(dest)} to {a.target}, but the Service has no such "
                         f"{'address' if dest[0] == 'other' else 'port'} now (an old cluster IP, port or node "
                         f"port?)", [a.line])

    def filter_verdicts(self) -> None:
        """2. What the filter table drops or rejects."""
        want, act = self.want, self.act
        for dest in sorted(want.filter.keys() | act.filter.keys()):
            e, a = want.filter.get(dest), act.filter.get(dest)
            if e is not None and a is not None:
                if e.target != a.target:
                    self._other_verdict(dest, e.line, e.target, a.line, a.target)
            elif a is not None:
                self._verdict_not_planned(dest, a.line, a.target)
            else:
                self._verdict_missing(dest, e.line, e.target)

    def _other_verdict(self, dest: Dest, want_line: str, want_target: str, line: str, target: str) -> None:
        plan, node = self.plan, self.node
        if target == "REJECT" and plan.has_endpoints:
            self.no_dnat_rules = True
            self.add("missing-service-rules",
                     f"{node} still rejects {describe(dest)} as having no endpoints; kube-proxy would {want_target} "
                     f"it (no local endpoint), the EndpointSlices list {len(plan.cluster_endpoints)} elsewhere",
                     [line, f"expected {want_line}"])
        else:
            self.policy_trouble = True
            self.add("policy-mismatch", f"{node} answers {describe(dest)} with {target}; kube-proxy would "
                                        f"{want_target} it", [line, f"expected {want_line}"])

    def _verdict_not_planned(self, dest: Dest, line: str, target: str) -> None:
        plan, node = self.plan, self.node
        local_eps = [e.endpoint.address for e in plan.local_endpoints]
        if target == "REJECT":
            self.no_dnat_rules = True
            self.add("missing-service-rules",
                     f"{node} still rejects {describe(dest)} as having no endpoints, but the EndpointSlices list "
                     f"{len(plan.reachable_endpoints) or len(plan.cluster_endpoints)} usable endpoint(s)", [line])
        elif target == "DROP" and dest[0] == "firewall":
            self.policy_trouble = True
            self.add("policy-mismatch", f"{node} drops clients of {dest[1]}:{dest[2]} outside source ranges the "
                                        f"Service no longer has (loadBalancerSourceRanges)", [line])
        elif target == "DROP" and local_eps:
            self.add("missing-endpoint",
                     f"{node} drops {describe(dest)} as having no local endpoint, but {', '.join(local_eps)} "
                     f"{'runs' if len(local_eps) == 1 else 'run'} on {node}", [line])
        elif target == "DROP":
            self.policy_trouble = True
            self.add("policy-mismatch",
                     f"{node} drops {describe(dest)} as if the traffic policy were Local; the Service says "
                     f"{_policy_words(plan, dest)}", [line])
        else:
            self.add("stale-entry", f"{node} still accepts {describe(dest)} for a health check the Service no "
                                    f"longer has", [line], "warning")

    def _verdict_missing(self, dest: Dest, want_line: str, want_target: str) -> None:
        node = self.node
        if want_target == "ACCEPT":
            self.add("missing-entry", f"{node} has no ACCEPT for {describe(dest)}: the load balancer's health "
                                      f"checks of this node fail", [f"expected {want_line}"], "warning")
        elif dest not in self.act.nat and not self.policy_trouble:
            # (a destination the node DNATs instead: its endpoints or its policy tell why)
            self.add("missing-entry",
                     f"{node} has no rule for {describe(dest)}: kube-proxy would {want_target} it (no "
                     f"{'endpoints' if want_target == 'REJECT' else 'local endpoint'}), so connections time out "
                     f"instead", [f"expected {want_line}"], "warning")

    def balancing_chains(self) -> None:
        """3. The endpoints each balancing chain spreads over, how evenly, and with which affinity."""
        listed = _usable(self.plan.service_port)
        told_stale: set[str] = set()
        affinity_chains: list[tuple[str, list[Jump]]] = []
        for role in ("svc", "svl"):
            wanted, have = self.want.balancers.get(role), self.act.balancers.get(role)
            chain_name = (self.act.balancer_chains.get(role) or self.want.balancer_chains.get(role)
                          or BALANCER_PREFIX[role])
            self._balancer(role, chain_name, wanted, have, listed, told_stale)
            if have is not None:
                split = check_split(self.node, self.ctx.service, self.ctx.spn, chain_name, have, self.act.seps)
                if split is not None:
                    self.out.append(split)
            if wanted is not None and have is not None and self.want.affinity.get(role) != self.act.affinity.get(role):
                affinity_chains.append((chain_name, have))
        if affinity_chains:
            says = self.plan.service_port.session_affinity
            has = any(self.act.affinity.get(role) for role in self.act.affinity)
            self.add("policy-mismatch",
                     f"{' and '.join(c for c, _ in affinity_chains)} on {self.node} {'have' if has else 'have no'} "
                     f"ClientIP affinity rules; the Service says sessionAffinity {says}",
                     [evidence("nat", j.line) for _, have in affinity_chains for j in have][:4])

    def _balancer(self, role: str, chain_name: str, wanted: list[Jump] | None, have: list[Jump] | None,
                  listed: dict[str, str], told_stale: set[str]) -> None:
        node, act, want = self.node, self.act, self.want
        wanted_seps = {j.sep: want.seps.get(j.sep, ("", ""))[0] for j in wanted or ()}
        wanted_by_address = {addr: sep for sep, addr in wanted_seps.items()}
        have_seps = {j.sep for j in have or ()}
        renamed: set[str] = set()
        misplaced: list[Jump] = []
        for jump in have or ():
            if jump.sep in wanted_seps:
                continue
            dest, dnat_line = act.seps.get(jump.sep, ("", ""))
            proof = [evidence("nat", jump.line)] + ([evidence("nat", dnat_line)] if dnat_line else [])
            if dest in wanted_by_address:
                renamed.add(dest)
                self.add("hash-mismatch",
                         f"{jump.sep} on {node} DNATs to {dest}, an endpoint of the port, but kube-proxy names that "
                         f"chain {wanted_by_address[dest]}: not written by kube-proxy, or renamed", proof)
            elif listed.get(dest) == "":
                misplaced.append(jump)  # a usable endpoint, in a chain kube-proxy would not put it in
            elif (dest or jump.sep) not in told_stale:
                told_stale.add(dest or jump.sep)
                why = (f"which the EndpointSlices list as {listed[dest]}" if dest in listed
                       else "which no EndpointSlice lists: an old pod?")
                not_hash = dest and endpoint_hash(self.ctx.spn, self.ctx.protocol, dest) != chain_suffix(jump.sep)
                self.add("stale-endpoint",
                         f"{node} still sends new connections to {dest or jump.sep} (via {chain_name}), {why}"
                         + (" The chain name is not kube-proxy's hash for it either." if not_hash else ""),
                         proof)
        if misplaced and not self.policy_trouble:
            self.policy_trouble = True
            addrs = ", ".join(act.seps.get(j.sep, (j.sep,))[0] for j in misplaced)
            self.add("policy-mismatch",
                     f"{chain_name} on {node} sends to {addrs}, which kube-proxy would "
                     + ("not count as local to this node" if role == "svl" else
                        f"not use from here ({_policy_words(self.plan, ('clusterIP', '', ''))}, "
                        f"{_policy_words(self.plan, ('nodePort', '', ''))})"),
                     [evidence("nat", j.line) for j in misplaced])
        if self.no_dnat_rules or (role == "svl" and self.policy_trouble):
            return
        for sep, addr in wanted_seps.items():
            if sep in have_seps or addr in renamed:
                continue
            jump_line = next((j.line for j in wanted or () if j.sep == sep), "")
            where = (f"{chain_name} on {node} has no rule for it" if have is not None
                     else f"{node} has no {chain_name}")
            self.add("missing-endpoint",
                     f"endpoint {addr} is in the EndpointSlices but {where}, so it gets no "
                     f"{'local ' if role == 'svl' else ''}traffic from this node",
                     ([f"{chain_name}: {len(have)} endpoint rule(s)"] if have is not None else [])
                     + [f"expected nat: {jump_line}"])

    def endpoint_chain_names(self) -> None:
        """An endpoint chain kube-proxy would name for one address but that DNATs to another."""
        for sep, (want_dest, _) in self.want.seps.items():
            have_dest, line = self.act.seps.get(sep, ("", ""))
            if have_dest and have_dest != want_dest:
                self.add("hash-mismatch", f"{sep} on {self.node} DNATs to {have_dest}, but kube-proxy's chain of "
                                          f"that name goes to {want_dest}: not written by kube-proxy, or edited",
                         [evidence("nat", line)])

    def firewall_sources(self) -> None:
        """4. Who the load-balancer firewall lets in."""
        want, act = self.want, self.act
        if want.fw is None or act.fw is None:
            return
        wanted_sources, have_sources = want.fw_sources, act.fw_sources
        if not self.ctx.node_ip_known:
            # without the node's IP, whether kube-proxy lets the node reach its own LB IP cannot be told
            lbs = set(self.plan.load_balancer_ips)
            wanted_sources, have_sources = wanted_sources - lbs, have_sources - lbs
        if wanted_sources != have_sources:
            self.add("policy-mismatch",
                     f"{act.fw} on {self.node} lets in {', '.join(sorted(have_sources)) or 'nobody'}; the Service's "
                     f"loadBalancerSourceRanges allow {', '.join(sorted(wanted_sources)) or 'nobody'}",
                     [evidence("nat", ln) for ln in act.fw_lines] + self.expected(want.fw, 4))

    def local_drops(self) -> None:
        """What the API says, confirmed by the node's own blackhole rules (or a pre-1.24 KUBE-XLB's drop)."""
        want, act = self.want, self.act

        def planned_drop(dest: Dest) -> bool:
            return dest in want.filter and want.filter[dest].target == "DROP"

        drops = [(dest, hop) for dest, hop in sorted(act.filter.items())
                 if hop.target == "DROP" and dest[0] != "firewall" and planned_drop(dest)]
        drops += [(dest, hop) for dest, hop in legacy_drops(act) if dest not in act.filter and planned_drop(dest)]
        self.out.extend(local_drops(self.node, self.ctx.service, self.ctx.spn, drops))


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

def diff_nodes(
    nodes: list[NodeInput],
    cluster: ClusterModel,
    ports: list[ServicePort] | None = None,
    report_orphans: Callable[[str | None], bool] = lambda service: True,
    service: str | None = None,
    planner: Planner | None = None,
) -> list[Finding]:
    """Desired against programmed for `ports` (default: every service port) on every node given.

    Nodes without kube-proxy rules are skipped: that one node-wide finding says it all.
    `report_orphans(service or None)` decides which left-over chains are reported (namespace filters).
    `service` ("ns/name", explain of one service; `ports` are its ports): only those ports are planned and only
    the rules of that service are read, so left-over chains are those of its ports' hashes and of the entry
    rules that name it.
    """
    scope = DiffScope.of(cluster, ports, report_orphans, service)
    planner = planner or Planner(cluster)
    return merge_diffs([diff_node(node, scope, planner) for node in nodes])


@dataclass(slots=True)
class DiffScope:
    """What `diff_nodes` compares on each node (the same for all of them)."""

    cluster: ClusterModel
    chosen: set[int] | None  # indexes of the ports compared (None: all)
    report_orphans: Callable[[str | None], bool]
    only: frozenset[str] | None = None  # explain of one service: its ports' hash suffixes,
    named: frozenset[str] = frozenset()  # and its name

    @classmethod
    def of(cls, cluster: ClusterModel, ports: list[ServicePort] | None, report_orphans: Callable[[str | None], bool],
           service: str | None = None) -> DiffScope:
        chosen = None
        if ports is not None:
            selected = set(map(id, ports))
            chosen = {i for i, sp in enumerate(cluster.service_ports) if id(sp) in selected}
        if service is None:
            return cls(cluster, chosen, report_orphans)
        only = frozenset(service_hash(sp.svc_port_name, sp.protocol) for sp in ports or ())
        return cls(cluster, chosen, report_orphans, only, frozenset([service]))


@dataclass(slots=True)
class NoEndpoints:
    """A port kube-proxy has no endpoint for, as one node has it. `no-endpoints` is told once per port, whatever
    the nodes do about it (merge_diffs)."""

    service: str
    where: str  # what kube-proxy rejects connections to, in words
    rejects: list[str]  # the node's REJECT rules for it (a name's TCP and UDP ports are one port name)
    expected: list[str]  # the rule kube-proxy would write, as evidence when no node has one


@dataclass(slots=True)
class NodeDiff:
    """One node's findings, and the ports it has without endpoints (told once for all nodes)."""

    findings: list[Finding]
    no_endpoints: dict[str, NoEndpoints]  # service port name -> how this node has it


def merge_diffs(diffs: list[NodeDiff]) -> list[Finding]:
    """The nodes' findings in order, then `no-endpoints` once per port, with the first REJECT rule a node has."""
    out = [f for diff in diffs for f in diff.findings]
    ports: dict[str, tuple[NoEndpoints, list[str]]] = {}
    for diff in diffs:
        for spn, seen in diff.no_endpoints.items():
            ports.setdefault(spn, (seen, []))[1].extend(seen.rejects)
    for spn, (first, rejects) in sorted(ports.items()):
        out.append(no_endpoints_finding(first.service, spn, first.where, rejects[:1] or first.expected))
    return out


def diff_node(node: NodeInput, scope: DiffScope, planner: Planner) -> NodeDiff:
    """Desired against programmed on one node (`diff_nodes`)."""
    cluster, chosen, only = scope.cluster, scope.chosen, scope.only
    scoped = only is not None
    diff = NodeDiff([], {})
    program = NodeProgram(node.name, node.rules, only, scope.named)
    if not program.has_rules:
        return diff
    all_suffixes = planner.hashes()
    accounted: set[str] = set()
    expected_suffixes: set[str] = set(all_suffixes) if scoped else set()
    plans: list[tuple[ServicePort, ExpectedPort]] = []
    planned = planner.ports(node.settings, chosen if scoped else None)
    for index, (sp, exp) in enumerate(zip(cluster.service_ports, planned)):
        if exp is None:
            continue
        expected_suffixes.add(exp.suffix)
        accounted.update(exp.chains)
        if chosen is None or index in chosen:
            plans.append((sp, exp))
    # entries whose comment names a port but whose chain is not its hash
    renamed = _renamed_entries(program, expected_suffixes, {p.suffix: p for _, p in plans})
    for sp, exp in plans:
        diff.findings.extend(_check_port(program, node, sp, exp, renamed.get(exp.suffix, ()), accounted,
                                         diff.no_endpoints))
    candidates = None if only is None else [p + s for s in sorted(only | set(program.entries))
                                            for p in HASHED_PREFIXES]
    diff.findings.extend(_orphans(program, accounted, all_suffixes, scope.report_orphans, candidates))
    return diff


def _check_port(program: NodeProgram, node: NodeInput, sp: ServicePort, exp: ExpectedPort,
                extra: Iterable[tuple[str, str, str]], accounted: set[str],
                no_endpoints: dict[str, NoEndpoints]) -> list[Finding]:
    """One service port on one node against its plan; what it accounts for is added to `accounted`."""
    out: list[Finding] = []
    act = program.shape(exp.suffix, exp.addrs, extra)
    ctx = PortContext(node.name, exp.plan.name, sp.service_key, exp.plan.protocol,
                      node_ip_known=node.settings.node_ip is not None, settings=node.settings)
    for _, line, target in extra:
        out.append(finding(
            "hash-mismatch", node.name, sp.service_key,
            f"{exp.plan.name}: {target} on {node.name} carries the port's comment but is not its hash "
            f"(kube-proxy would name it {chain_prefix(target)}{exp.suffix}): not written by kube-proxy, or renamed",
            [evidence("nat", line)]))
        accounted.add(target)
    out.extend(compare_port(ctx, exp, act))
    accounted.update(act.seps)
    accounted.update(act.balancer_chains.values())
    if not exp.plan.has_endpoints:
        _no_endpoints(ctx, exp, act, no_endpoints)
    return out


def _no_endpoints(ctx: PortContext, exp: ExpectedPort, act: PortShape, seen: dict[str, NoEndpoints]) -> None:
    """Note how the node has a port without endpoints (its REJECT rule, if any), for merge_diffs."""
    reject = next((hop.line for hop in act.filter.values() if hop.target == "REJECT"), None)
    port = seen.get(exp.plan.name)
    if port is None:
        where = describe(next(iter(exp.shape.filter), ("clusterIP", exp.plan.cluster_ip, "")))
        expected = []
        if reject is None:  # (written only when it may be needed as evidence)
            expected = [f"expected {hop.line}" for hop in ctx.written(exp).shape.filter.values()][:1]
        port = seen[exp.plan.name] = NoEndpoints(exp.plan.service_port.service_key, where, [], expected)
    if reject is not None:
        port.rejects.append(reject)


def _renamed_entries(program: NodeProgram, expected: set[str], wanted: dict[str, ExpectedPort]
                     ) -> dict[str, list[tuple[str, str, str]]]:
    """Entry rules of chains no port expects whose comment names a port we check: {suffix: [(chain, line, target)]}."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for suffix, entries in program.entries.items():
        if suffix in expected:
            continue
        for chain, line in entries:
            spn, _ = service_port_of_comment(rule_text.comment(line))
            if spn is None:
                continue
            real = service_hash(spn, (rule_text.option(line, "-p") or "tcp").lower())
            if real in wanted and real != suffix:
                out.setdefault(real, []).append((chain, line, rule_text.target_name(line) or ""))
    return out


def _orphans(program: NodeProgram, accounted: set[str], known: dict[str, ServicePort],
             report: Callable[[str | None], bool], candidates: list[str] | None = None) -> list[Finding]:
    """Hashed chains kube-proxy would not have on the node that no port comparison explained (of `candidates`
    only, when given)."""
    out: list[Finding] = []
    if is_partial(program.rules):
        return out  # a grep or a few chains: what is not in the input may well be on the node
    if candidates is None:
        left = sorted(program.hashed_chains(accounted))
    else:
        left = sorted(name for name in candidates if name in program.chains and name not in accounted)
    if not left:
        return out
    groups: dict[str, list[str]] = {}
    seps: list[str] = []
    for name in left:
        (seps if chain_kind(name) == "sep" else groups.setdefault(chain_suffix(name), [])).append(name)
    folded: set[str] = set()
    for suffix, names in sorted(groups.items()):
        lines = [ln for name in names for ln in (program.lines(name) or [])]
        inner = {t for ln in lines if (t := rule_text.target_name(ln)) and t.startswith(ENDPOINT_CHAIN_PREFIX)}
        folded |= inner
        entries = program.entries.get(suffix, [])
        sp = known.get(suffix)
        spn = sp.svc_port_name if sp is not None else comment_port(entries + [("", ln) for ln in lines])
        service = spn.split(":", 1)[0] if spn else None
        if not report(service):
            continue
        dests = [describe(nat_dest(c, ln, Addresses()) or ("other", "", "")) for c, ln in entries]
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
            [evidence("nat", ln) for _, ln in entries[:2]] + [evidence("nat", ln) for ln in lines[:3]],
            "error" if entries else None))
    for name in seps:
        if name in folded:
            continue
        lines = program.lines(name) or []
        spn = comment_port([("", ln) for ln in lines])
        service = spn.split(":", 1)[0] if spn else None
        if not report(service):
            continue
        dest, _ = dnat_of(lines)
        out.append(finding(
            "orphan-chain", program.node, service,
            f"{name} on {program.node} (DNAT to {dest or 'nowhere'}{', ' + spn if spn else ''}) is an endpoint "
            f"chain of no current endpoint and nothing kube-proxy would write jumps to it (left over)",
            [evidence("nat", ln) for ln in lines[:2]]))
    return out
