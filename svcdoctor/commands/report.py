"""`svcdoctor report`: one self-contained HTML file for a support ticket (issue #12): the cluster at a glance, the
findings of `check`, and every service with its per-node paths and the pictures of its chains.

A cluster of 10,000 services must not take much longer than `check` (benchmarks/bench_report.py). So every node's
rules are indexed once (not once per service, and without parsing them), each service is explained against only
its own API objects, and in a big cluster a service `check` found nothing wrong with is explained on its busiest
node only, from the rule text when its ports have the common shape (`model/quick_explain.py`: the same answer as
`explain`, without parsing a rule), and not drawn: its other nodes have the rules kube-proxy would write there, and
their counters are listed. The per-service work runs in forked workers, which also compress the packed sections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

import networkx as nx

from svcdoctor.checks.findings import SEVERITY_RANK, Finding
from svcdoctor.inputs import LoadedInput, no_cyclic_gc
from svcdoctor.model.cluster import ClusterModel
from svcdoctor.model.explain import ServiceView, build_service_view
from svcdoctor.model.graph import (
    annotate_endpoints,
    build_service_graph,
    service_blackholes,
    service_entry_rules,
    traffic,
)
from svcdoctor.model.nft.graph import service_key_graph
from svcdoctor.model.nft.view import add_nft_nodes, nft_service_names
from svcdoctor.model.quick_explain import QuickNode, quick_service_view
from svcdoctor.model.service_rules import NodeServiceIndex, index_node_services

# above this many services, a service without findings is explained on its busiest node only
ALL_NODES_UP_TO = 300


@dataclass(slots=True)
class ServiceReport:
    key: str  # "ns/name"
    view: ServiceView
    findings: list[Finding]
    pictures: list[tuple[str, list[str], nx.MultiDiGraph]]  # (node drawn, other nodes with the same chains, graph)
    entry_packets: dict[str, int]  # node -> packets counted on the service's entry rules
    explained_nodes: list[str]  # the nodes `view` covers (the busiest only, for a quiet service of a big cluster)
    drawn: bool = True  # False: a quiet service of a big cluster, shown without its picture


@dataclass(slots=True)
class ServiceEntry:
    """A service of the report before it is explained: its name, API ports and findings."""

    key: str  # "ns/name"
    api_ports: list
    findings: list[Finding]

    @property
    def worst(self) -> int:
        return min((SEVERITY_RANK.get(f.severity, 9) for f in self.findings), default=9)


@dataclass(slots=True)
class ReportResult:
    loaded: LoadedInput
    check: object  # commands.check.CheckResult
    nodes: list[dict]  # `nodes`' rows
    services: list[ServiceEntry]  # the services with findings first, the worst first; then by name
    indexes: dict[str, NodeServiceIndex]  # node -> its rules by service port, worked out once
    generated_at: str
    quick: dict[str, QuickNode] | None = None  # for quiet services of a big cluster (model/quick_explain.py)

    @property
    def all_nodes(self) -> bool:
        """Whether a service without findings is explained on every node (else on its busiest)."""
        return len(self.services) <= ALL_NODES_UP_TO


def run_report(loaded: LoadedInput, check, nodes: list[dict]) -> ReportResult:
    """``check``: `check`'s result on the same input; ``nodes``: `nodes`' rows (the CLI runs both: commands do
    not import each other)."""
    by_service: dict[str, list[Finding]] = {}
    for f in check.findings:
        if f.service:
            by_service.setdefault(_service_key(f.service), []).append(f)
    indexes = {node: index_node_services(rules) for node, rules in loaded.rules.items()}
    api_ports = loaded.cluster.services() if loaded.cluster is not None else {}  # "ns/name" -> its ports
    keys = _service_keys(api_ports, indexes, nft_service_names(loaded.nft) if loaded.nft else set()) | set(by_service)
    services = [ServiceEntry(k, api_ports.get(k, []), by_service.get(k, [])) for k in keys]
    services.sort(key=lambda s: (s.worst, s.key))
    result = ReportResult(loaded, check, nodes, services, indexes, _now())
    if not result.all_nodes:
        result.quick = {node: QuickNode(node, rules, indexes[node]) for node, rules in loaded.rules.items()}
    return result


def explain_service(result: ReportResult, entry: ServiceEntry) -> ServiceReport:
    return service_report(result.loaded, result.indexes, entry.key, entry.api_ports, entry.findings,
                          result.all_nodes, result.quick)


def service_report(loaded: LoadedInput, indexes: dict[str, NodeServiceIndex], key: str, api_ports: list,
                   findings: list[Finding], all_nodes: bool,
                   quick: dict[str, QuickNode] | None = None) -> ServiceReport:
    """A service with findings, or any service of a small cluster: explained on every node, with its pictures.
    A quiet service of a big cluster: explained on its busiest node, the common shape read from the rule text
    (`quick_service_view`, the same answer without parsing), and not drawn."""
    ns, name = key.split("/", 1)
    cluster = _only_service(loaded.cluster, api_ports)
    packets = {node: _entry_packets(ix, key) for node, ix in indexes.items()}
    nodes = list(loaded.rules)
    full = all_nodes or bool(findings) or not nodes
    if not full:
        nodes = [max(nodes, key=lambda n: packets[n])]
    view = None
    if not full and quick is not None:
        view = quick_service_view(ns, name, quick[nodes[0]], loaded.cluster, api_ports)
    if view is None:
        view = build_service_view(ns, name, {n: loaded.rules[n] for n in nodes if n not in loaded.nft}, cluster,
                                  indexes={n: indexes[n] for n in nodes})
    if loaded.nft:  # nftables-mode nodes: their tables, not their (empty) iptables
        add_nft_nodes(view, {n: loaded.nft[n] for n in nodes if n in loaded.nft}, cluster)
    pictures = _pictures(loaded, view, nodes) if full else []
    return ServiceReport(key, view, findings, pictures, packets, nodes, drawn=full)


def _pictures(loaded: LoadedInput, view: ServiceView, nodes: list[str]) -> list[tuple[str, list[str], nx.MultiDiGraph]]:
    """One picture per set of chains: nodes whose graphs hold the same chains share the busiest one's."""
    groups: dict[tuple, list[tuple[str, nx.MultiDiGraph]]] = {}
    for node in nodes:
        if node in loaded.nft:
            g = nx.compose_all([service_key_graph(rs, f"{view.namespace}/{view.name}") for rs in loaded.nft[node]])
        else:
            g = build_service_graph(loaded.rules[node], service_entry_rules(view, node),
                                    service_blackholes(view, node))
        annotate_endpoints(g, view, node)
        if g.number_of_nodes():
            groups.setdefault(tuple(sorted(g.nodes)), []).append((node, g))
    out = []
    for members in groups.values():
        drawn, g = max(members, key=lambda m: traffic(m[1]))
        out.append((drawn, [n for n, _ in members if n != drawn], g))
    return out


def _entry_packets(index: NodeServiceIndex, key: str) -> int:
    return sum(r.packets or 0 for spr in index.by_name.get(key, []) for r in spr.nat_entries + spr.filter_rules)


def _only_service(cluster: ClusterModel | None, ports: list) -> ClusterModel | None:
    # build_service_view looks a service's ports up among all of them: hand it only this one's (10,000 services
    # would make that 10^8 comparisons); pods and node addresses stay shared
    if cluster is None:
        return None
    return ClusterModel(ports, cluster.pods_by_ip, cluster.pod_nodes, cluster.node_ips, cluster.warnings)


def _service_keys(api_ports: dict, indexes: dict[str, NodeServiceIndex],
                  nft_names: set[str] = frozenset()) -> set[str]:
    keys = set(api_ports) | set(nft_names)
    for index in indexes.values():
        keys |= index.service_names()
    return {k for k in keys if "/" in k}


def _service_key(service: str) -> str:
    ns, _, rest = service.partition("/")
    return f"{ns}/{rest.split(':', 1)[0]}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_path(loaded: LoadedInput, generated_at: str) -> str:
    """svcdoctor-report-<cluster>-<time>.html, in the current directory."""
    cluster = re.sub(r"[^A-Za-z0-9._-]+", "-", loaded.snapshot.cluster or "input").strip("-.") or "input"
    return f"svcdoctor-report-{cluster}-{generated_at.replace(':', '').replace('-', '')}.html"


def write_report(loaded: LoadedInput, check, nodes: list[dict], path: str | None, docs_url: str | None,
                 stream=None) -> dict:
    """Build the report and write it to ``path`` (or ``stream`` for -); returns what was written."""
    from svcdoctor.errors import InputError
    from svcdoctor.render import report_html as page

    def section(entry: ServiceEntry) -> tuple[str, str]:
        return page.service_section(explain_service(result, entry), len(result.services), len(loaded.rules))

    def work(item: tuple[str, list[int]]) -> tuple:
        # one service's (head, body); or a pack's heads and the pack itself, compressed in the worker (the parent
        # then receives a tenth of the text, and gzip runs on every core)
        kind, which = item
        if kind == "one":
            return section(result.services[which[0]])
        heads, bodies = zip(*(section(result.services[i]) for i in which))
        return list(heads), page.pack(list(bodies))

    with no_cyclic_gc():
        result = run_report(loaded, check, nodes)
        is_packed = page.packed(result.services)
        in_packs = [i for i, p in enumerate(is_packed) if p]
        items = [("one", [i]) for i, p in enumerate(is_packed) if not p]
        items += [("pack", in_packs[k:k + page.PACK_SIZE]) for k in range(0, len(in_packs), page.PACK_SIZE)]
        sections: list = [None] * len(result.services)
        packs = []
        for (kind, which), done in zip(items, parallel_map(work, items, len(sections))):
            if kind == "one":
                sections[which[0]] = done
            else:
                for i, head in zip(which, done[0]):
                    sections[i] = (head, None)
                packs.append(done[1])
        html = page.report_html(result, sections, docs_url, packs)
    path = path or default_path(loaded, result.generated_at)
    if stream is not None:
        stream.write(html)
    else:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(html)
        except OSError as e:
            raise InputError(f"{path}: cannot write: {e.strerror}") from None
    return {"path": path, "bytes": len(html.encode()), "services": len(result.services),
            "findings": len(result.check.findings)}


PARALLEL_ABOVE = 500  # services; fewer are done before a second process would have started


def parallel_map(fn, items: list, services: int | None = None) -> list:
    """``[fn(x) for x in items]``, on every core for a big cluster (``services``: how many the items hold, when not
    one each): forked workers inherit the parsed input (no copy is sent), and send back only text. Where fork is
    missing (or one core), in this process."""
    import multiprocessing
    import os

    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if (len(items) if services is None else services) < PARALLEL_ABOVE or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(x) for x in items]
    global _WORK
    _WORK = (fn, items)
    step = -(-len(items) // (workers * 4))
    chunks = [(i, min(i + step, len(items))) for i in range(0, len(items), step)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_run_chunk, chunks)
    _WORK = None
    return [text for part in parts for text in part]


_WORK = None  # (fn, items) for the forked workers, which inherit it


def _run_chunk(bounds: tuple[int, int]) -> list:
    fn, items = _WORK
    return [fn(x) for x in items[bounds[0]:bounds[1]]]
