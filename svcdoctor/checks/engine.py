"""`check`'s engine over a loaded input: which nodes are checked and with which proxy settings, and the findings for
one service (what `explain` shows, from the same functions that `check` runs over every service)."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from svcdoctor.checks.compare_api import DiffScope, NodeDiff, Planner, diff_node, diff_nodes, merge_diffs
from svcdoctor.checks.drift import NodeInput, compare_nodes
from svcdoctor.checks.findings import Finding, check_node_health, dedupe_findings, sort_findings
from svcdoctor.collect.snapshot import NodeCapture
from svcdoctor.inputs import LoadedInput, NodeRead, read_node
from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.proxy_settings import ProxySettings, node_settings
from svcdoctor.model.rules import NodeRules


def check_service(loaded: LoadedInput, service: str) -> list[Finding]:
    """`check`'s per-service findings for one service ("ns/name"), on the same engine and with the same answers,
    reading only that service's rules: what `explain` shows. Node-wide findings are not included."""
    skipped = skipped_nodes(loaded)
    checked = [n for n in sorted(loaded.rules) if n not in skipped and n not in loaded.nft]
    cluster = loaded.cluster
    found: list[Finding] = []
    for family in FAMILIES:
        if cluster is None:
            found += compare_nodes(nodes_without_api(loaded, checked, family), service=service)[0]
        else:
            ports = [sp for sp in cluster.service_ports if sp.service_key == service]
            found += diff_nodes(nodes_with_api(loaded, checked, {}, family), cluster, ports,
                                lambda orphan_of: orphan_of == service, service=service)
    found += nft_findings(loaded, lambda key: True, service)
    return dedupe_findings(sort_findings([f for f in found if f.service == service]))


def skipped_nodes(loaded: LoadedInput) -> dict[str, str]:
    """Nodes whose services are not checked: ipvs and nftables modes keep (some of) their rules elsewhere, so
    their iptables rules say nothing per service."""
    return {n: f"kube-proxy runs in {loaded.capture(n).proxy_mode} mode there" for n in sorted(loaded.rules)
            if (loaded.capture(n).proxy_mode or "iptables") != "iptables" and n not in loaded.nft}


FAMILIES = ("IPv4", "IPv6")


def family_rules(loaded: LoadedInput, family: str) -> dict:
    """Each node's rules for one address family: iptables for IPv4, ip6tables (dual-stack nodes) for IPv6."""
    return loaded.rules if family == "IPv4" else loaded.rules6


def nodes_without_api(loaded: LoadedInput, checked: list[str], family: str = "IPv4") -> list[NodeInput]:
    rules = family_rules(loaded, family)
    return [NodeInput(n, rules[n], None, "") for n in checked if n in rules]  # no settings needed: nothing planned


def nodes_with_api(loaded: LoadedInput, checked: list[str], overrides: dict[str, ProxySettings],
                   family: str = "IPv4", rules: dict | None = None) -> list[NodeInput]:
    """Each node with its proxy settings: given, else from kube-proxy's ConfigMap, else read from its rules.
    ``rules``: the rules to read settings from, when not the family's iptables rules (nftables nodes have none)."""
    rules = rules if rules is not None else family_rules(loaded, family)
    return [node_with_api(loaded, node, rules[node], overrides, family) for node in checked if node in rules]


def node_with_api(loaded: LoadedInput, node: str, rules: NodeRules, overrides: dict[str, ProxySettings],
                  family: str = "IPv4") -> NodeInput:
    """One node with its proxy settings (nodes_with_api). kube-proxy runs one proxier per family; the IPv6 one is
    told apart by an IPv6 node address first."""
    if node in overrides and family == "IPv4":
        return NodeInput(node, rules, overrides[node], "given")
    api = loaded.snapshot.api
    ips = _addresses(loaded.node_ips.get(node, []) + (loaded.cluster.node_ips.get(node, []) if loaded.cluster
                                                      else []))
    ips = sorted(dict.fromkeys(ips), key=lambda ip: (":" in ip) != (family == "IPv6"))
    s, source = node_settings(node, rules, ips, api.kube_proxy_config, loaded.pod_cidrs.get(node))
    return NodeInput(node, rules, s, source)


def _addresses(ips: list[str]) -> list[str]:
    # node.json and the Node objects are untrusted input: an address that is not one is left out, not fatal
    out = []
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except (ValueError, TypeError):
            continue
        out.append(ip)
    return out


def diff_nodes_in_parallel(nodes: list[NodeInput], cluster: ClusterModel, ports: list[ServicePort] | None,
                           report_orphans: Callable[[str | None], bool]) -> list[Finding]:
    """`diff_nodes` with the work per node spread over the machine's cores.

    kube-proxy's plan is worked out once here, for every distinct set of proxy settings (on a cluster they are
    nearly always the same), then each node's rules are compared with it in a forked worker: the workers inherit
    the parsed rules and the plan without copying, and send back only their findings, merged as `diff_nodes`
    merges them.
    """
    if not _worth_forking(len(nodes)) or not _at_least_rules(nodes, PARALLEL_MIN_RULES):
        return diff_nodes(nodes, cluster, ports, report_orphans)
    scope = DiffScope.of(cluster, ports, report_orphans)
    planner = Planner(cluster)
    planner.hashes()
    for node in nodes:
        if node.settings is not None:
            planner.ports(node.settings)  # as diff_nodes asks for it when it checks the whole cluster
    return merge_diffs(in_workers(lambda node: diff_node(node, scope, planner), nodes))


# Below this many rules on the nodes together (dump lines, for nodes not read yet), forking costs more than it saves.
PARALLEL_MIN_RULES = 100_000


def _worth_forking(tasks: int) -> bool:
    return (tasks >= 2 and (os.cpu_count() or 1) >= 2
            and "fork" in multiprocessing.get_all_start_methods())


def _at_least_rules(nodes: list[NodeInput], limit: int) -> bool:
    # counted chain by chain until the limit: 120,000 chains on three big nodes
    count = 0
    for node in nodes:
        for table in node.rules.tables.values():
            for chain in table.chains.values():
                count += chain.rule_count
                if count >= limit:
                    return True
    return False


def in_workers(work: Callable, items: list) -> list:
    """[work(item) for item in items], each in a forked worker: a worker per item, up to two per core (three
    nodes on two cores then take one and a half node's time, not two). The workers inherit everything `work`
    needs without copying (closures and big parsed rules are never pickled) and send back only its result."""
    global _WORK
    _WORK = (work, items)
    try:
        with multiprocessing.get_context("fork").Pool(min(len(items), 2 * (os.cpu_count() or 1))) as pool:
            return pool.map(_work_on, range(len(items)), chunksize=1)
    finally:
        _WORK = None


_WORK: tuple | None = None  # what the forked workers inherit


def _work_on(index: int):
    work, items = _WORK
    return work(items[index])


# --- a big bundle: each node read in the worker that checks it ----------------------------------------------------

@dataclass(slots=True)
class NodeCheck:
    """What `check` found on one node it read in a worker (its rules stay there)."""

    read: NodeRead  # what reading the node said (its rules left out)
    health: list[Finding] = field(default_factory=list)  # check_node_health
    has_kube_proxy_rules: bool = False
    settings_source: str = ""  # where its IPv4 proxier's settings came from
    diff: NodeDiff | None = None  # against kube-proxy's plan, IPv4
    diff6: NodeDiff | None = None  # and IPv6, on a node with kube-proxy's ip6tables rules


def reads_in_workers(loaded: LoadedInput) -> bool:
    """Whether check reads the nodes load left unread (LoadedInput.deferred) in forked workers: big enough,
    and cores to share them (else they are read and checked here, as any other input)."""
    lines = sum(node.iptables_save.count("\n") for node in loaded.deferred.values())
    return _worth_forking(len(loaded.deferred)) and lines >= PARALLEL_MIN_RULES


def check_deferred_nodes(loaded: LoadedInput, overrides: dict[str, ProxySettings], ports: list[ServicePort] | None,
                         report_orphans: Callable[[str | None], bool]) -> list[NodeCheck]:
    """Read and check each node load left unread in a forked worker of its own (the snapshot's order), and file
    what the readings said in `loaded` (warnings, failures; not the rules, which stay in the workers).

    kube-proxy's plans are made here first, for the nodes' address families (a node's settings change nothing
    in them but what Planner's `_shared_key` says): the workers inherit them, read their node's dumps (parsing
    a big dump costs as much as comparing it), work out its settings and compare its rules with the plans."""
    planner = Planner(loaded.cluster)
    planner.hashes()
    planner.share(ProxySettings(node_name="-"))
    if any((node.ip6tables_save or "").strip() for node in loaded.deferred.values()):
        planner.share(ProxySettings(node_name="-", ip_family="IPv6"))
    scope = DiffScope.of(loaded.cluster, ports, report_orphans)
    checks = in_workers(lambda capture: _read_and_check(loaded, capture, overrides, scope, planner),
                        list(loaded.deferred.values()))
    loaded.deferred = {}
    for check in checks:
        loaded.take(check.read)
    return checks


def _read_and_check(loaded: LoadedInput, capture: NodeCapture, overrides: dict[str, ProxySettings],
                    scope: DiffScope, planner: Planner) -> NodeCheck:
    """What `check` works out for one node (commands/check.py: _run), from its capture."""
    read = read_node(capture)
    check = NodeCheck(read)
    if read.failure is None:
        rules = read.rules
        check.health = check_node_health(capture.name, rules, capture.proxy_mode, read.other, capture.backend)
        check.has_kube_proxy_rules = rules.has_kube_proxy_rules()
        node = node_with_api(loaded, capture.name, rules, overrides)
        check.settings_source = node.settings_source
        check.diff = diff_node(node, scope, planner)
        if read.rules6 is not None:
            check.diff6 = diff_node(node_with_api(loaded, capture.name, read.rules6, overrides, "IPv6"), scope,
                                    planner)
    read.rules = read.rules6 = read.other = None  # not sent back: parsed again there, they would cost as much
    return check


def _nft_settings(loaded: LoadedInput) -> dict[tuple[str, str], ProxySettings]:
    """(node, family) -> the proxier's settings, for each kube-proxy table an nftables node has (`ip`: IPv4, `ip6`:
    IPv6). A family whose settings come out for the other family (no node address of it known) is left out:
    nothing is planned for it rather than the wrong family's plan."""
    out = {}
    for family, table_family in (("IPv4", "ip"), ("IPv6", "ip6")):
        nodes = sorted(n for n, tables in loaded.nft.items() if any(t.family == table_family for t in tables))
        for node in nodes_with_api(loaded, nodes, {}, family, rules=loaded.rules):
            if node.settings is not None and node.settings.ip_family == family:
                out[(node.name, family)] = node.settings
    return out


def nft_findings(loaded: LoadedInput, wanted: Callable[[str], bool], service: str | None = None) -> list[Finding]:
    """nftables-mode nodes: every hashed name checked (checks/nft_names.py); without the API objects the nodes
    against each other (checks/nft_drift.py: node-drift); with them, through the routing model
    (model/routing.py), with the API objects, each node's routes read from kube-proxy's table against the routes
    kube-proxy's decisions give (checks/compare_routes.py), and the "no local endpoints" drops the table holds
    (`_local_drops`); the same finding ids as the iptables comparison.
    `wanted(service)` chooses the services (namespace, selector)."""
    if not loaded.nft:
        return []
    from svcdoctor.checks.nft_names import nft_name_findings

    named = [f for node, tables in sorted(loaded.nft.items()) for rs in tables
             for f in nft_name_findings(node, rs, wanted, service)]
    if loaded.cluster is None:  # nothing says what kube-proxy should write: the nodes against each other
        from svcdoctor.checks.nft_drift import nft_drift_findings

        return named + nft_drift_findings(loaded.nft, wanted, service)
    return named + _nft_route_findings(loaded, wanted, service)


def _nft_route_findings(loaded: LoadedInput, wanted: Callable[[str], bool], service: str | None) -> list[Finding]:
    from svcdoctor.checks.compare_routes import compare_routes
    from svcdoctor.model.explain import ServiceView
    from svcdoctor.model.expected import plan_service_port
    from svcdoctor.model.nft.view import add_nft_nodes
    from svcdoctor.model.routing import expected_routes, routes_from_view

    from svcdoctor.checks.findings import no_endpoints_finding
    from svcdoctor.model.port_shape import describe

    cluster = loaded.cluster
    settings = _nft_settings(loaded)
    config_known = loaded.snapshot.api.kube_proxy_config is not None
    out: list[Finding] = []
    without_endpoints: set[str] = set()
    for key, ports in sorted(cluster.services().items()):
        if (service is not None and key != service) or not wanted(key):
            continue
        namespace, name = key.split("/", 1)
        view = add_nft_nodes(ServiceView(namespace, name, [], ports), loaded.nft, cluster)
        for pv in view.ports:
            sp = next((p for p in ports if p.svc_port_name == pv.svc_port_name), None)
            for nv in pv.nodes:
                out += _local_drops(nv.node, key, pv.svc_port_name, nv.entries)
                have_all = routes_from_view(nv.entries)
                for family in sorted(nv.families):  # one proxier, one table per family (ip, ip6)
                    node_settings_ = settings.get((nv.node, family))
                    plan = plan_service_port(sp, node_settings_) if sp is not None and node_settings_ else None
                    if plan is None:
                        continue
                    if not plan.has_endpoints and plan.name not in without_endpoints:
                        without_endpoints.add(plan.name)  # once per port, as the iptables comparison says it
                        out.append(no_endpoints_finding(key, plan.name,
                                                        describe(("clusterIP", plan.cluster_ip, sp.port))))
                    want = expected_routes(plan, node_settings_)
                    have = {k: r for k, r in have_all.items() if k[1] == family}
                    out += compare_routes(nv.node, key, pv.svc_port_name, want, have, masquerade_known=config_known)
    return out


# kube-proxy's nftables maps of what it drops or rejects undnatted (docs/explanation/kube-proxy-nftables.md)
NO_ENDPOINT_MAPS = ("map no-endpoint-services", "map no-endpoint-nodeports")


def _local_drops(node: str, service: str, spn: str, entries) -> list[Finding]:
    """The "no local endpoints" drops of a port on an nftables node, as checks/port_findings.py reports the
    iptables DROP rules: entries whose traffic an element of `no-endpoint-services` / `no-endpoint-nodeports` drops
    (a Local traffic policy without a pod on the node; no endpoint at all is `goto reject-chain` there, a reject).
    nftables keeps no counters on them, so they stay warnings."""
    from svcdoctor.checks.port_findings import local_drops
    from svcdoctor.model.port_shape import Hop

    drops = []
    for entry in entries:
        rule = entry.blackhole_rule
        if entry.verdict == "drop" and rule is not None and rule.chain in NO_ENDPOINT_MAPS:
            ip, _, port = entry.destination.rpartition(":")
            drops.append(((entry.kind, ip.strip("[]"), port), Hop("DROP", f"{rule.chain}: {rule.text}")))
    return local_drops(node, service, spn, drops)
