"""Where a command's input comes from (a bundle, the demo, a live kind cluster), read once and parsed; and the
lookups every command makes in it (a node's capture, a service's rules). Commands import this, never each other."""

from __future__ import annotations

import difflib
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture
from svcdoctor.errors import InputError, SvcdoctorError, UnknownServiceError, UsageError
from svcdoctor.model.cluster import ClusterModel, build_cluster_model
from svcdoctor.model.explain import ServiceView, build_service_view, known_services, merge_family
from svcdoctor.model.hashes import service_hash
from svcdoctor.model.partial import missing_pieces
from svcdoctor.model.parse import parse_pasted_rules, parse_rules, parse_service_rules
from svcdoctor.model.rules import NodeRules
from svcdoctor.model.service_rules import NodeServiceIndex, index_node_services


@dataclass(slots=True)
class InputOptions:
    bundle: str | None = None
    demo: bool = False
    cluster: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    no_api: bool = False
    nodes: list[str] = field(default_factory=list)
    service: str | None = None  # "ns/name": live collection may fetch only what it needs
    via: str = "auto"  # auto | docker | api (svcdoctor/collect/live.py, choose_via)
    api_read: object | None = None  # collect.live.ApiReadOptions: --parallel, --node-selector, --sample, --proxy-*


@dataclass(slots=True)
class LoadedInput:
    snapshot: ClusterSnapshot
    rules: dict[str, NodeRules]  # node -> parsed rules (nodes that could be read)
    other_backend: dict[str, NodeRules]
    failed: dict[str, str]  # node -> why it could not be read
    cluster: ClusterModel | None
    warnings: list[str]
    rules6: dict[str, NodeRules] = field(default_factory=dict)  # node -> its ip6tables rules, when there are any
    # node -> kube-proxy's nftables tables (ip, then ip6) on nodes in nftables mode (model/nft)
    nft: dict[str, list] = field(default_factory=dict)
    # per-service rule indexes, worked out once per run (resolving a name and explaining it use the same one)
    index_cache: dict = field(default_factory=dict)
    # nodes whose rules load left unread (load(defer=True)): `check` reads each in the worker that compares it,
    # and files only what the reading said (`take`: warnings, failures); read_deferred() reads them here
    deferred: dict[str, NodeCapture] = field(default_factory=dict)

    def take(self, read: NodeRead) -> None:
        """File what reading one node gave."""
        if read.failure is not None:
            self.failed[read.name] = read.failure
            return
        if read.nft is not None:
            self.nft[read.name] = read.nft
        self.warnings.extend(read.warnings)
        if read.rules is not None:
            self.rules[read.name] = read.rules
        if read.other is not None:
            self.other_backend[read.name] = read.other
        if read.rules6 is not None:
            self.rules6[read.name] = read.rules6

    def read_deferred(self) -> None:
        """Read here the nodes load left unread, as load would have."""
        for name in list(self.deferred):
            self.take(read_node(self.deferred.pop(name)))

    def rules_for(self, address: str) -> dict[str, NodeRules]:
        """The nodes' rules for one address family: ip6tables for an IPv6 address, iptables otherwise."""
        return self.rules6 if ":" in address else self.rules

    def capture(self, node: str) -> NodeCapture | None:
        """What was read from one node (its backend, proxy mode, role, IP); None for a node not in the input."""
        by_name = self.index_cache.get("captures")
        if by_name is None or len(by_name) != len(self.snapshot.nodes):
            # an index, not a scan per call: commands ask for every node's capture (5,000 nodes through the API)
            by_name = self.index_cache["captures"] = {n.name: n for n in self.snapshot.nodes}
        return by_name.get(node)

    @property
    def node_ips(self) -> dict[str, list[str]]:
        """node -> its addresses (node.json's, else the Node object's); worked out once (it is asked per node)."""
        out = self.index_cache.get("node_ips")
        if out is None:
            out = {}
            for n in self.snapshot.nodes:
                ips = [n.internal_ip] if n.internal_ip else []
                if not ips and self.cluster is not None:
                    ips = self.cluster.node_ips.get(n.name, [])
                out[n.name] = ips
            self.index_cache["node_ips"] = out
        return out

    @property
    def pod_cidrs(self) -> dict[str, list[str]]:
        """node -> the podCIDRs of its Node object (the API's), worked out once."""
        out = self.index_cache.get("pod_cidrs")
        if out is None:
            out = self.index_cache["pod_cidrs"] = {
                (item.get("metadata") or {}).get("name") or "": list((item.get("spec") or {}).get("podCIDRs") or [])
                for item in self.snapshot.api.nodes or []}
        return out


def read_snapshot(opts: InputOptions, progress=None) -> ClusterSnapshot:
    if opts.bundle and opts.demo:
        raise UsageError("--bundle and --demo exclude each other")
    if opts.demo or opts.bundle:
        from svcdoctor.collect.bundle import demo_bundle_path, load_input

        return load_input(opts.bundle or demo_bundle_path())
    if _dump_on_stdin():
        raise UsageError("a dump is being piped in: add --bundle - to read it (without it svcdoctor reads the "
                         "live cluster)")
    from svcdoctor.collect.live import collect_live  # imports docker/kubernetes: only for live runs

    return collect_live(
        cluster=opts.cluster,
        nodes=opts.nodes or None,
        kubeconfig=opts.kubeconfig,
        context=opts.context,
        no_api=opts.no_api,
        service=opts.service,
        progress=progress,
        via=opts.via,
        api_read=opts.api_read,
    )


def _dump_on_stdin() -> bool:
    """Whether standard input is a pipe or a file (not a terminal, not closed): `svcdoctor explain web < dump`."""
    import os
    import stat
    import sys

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused. Parsing a big node, checking it or reporting on it makes hundreds of
    thousands of small objects and no reference cycles; the collector would walk them again and again for nothing
    (half the parse time on 10,000 services, a third of check's, two thirds of report's per-service time, measured),
    and forked workers that inherit it paused never touch (and copy) the parent's pages for it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load(opts: InputOptions, progress=None, defer: bool = False) -> LoadedInput:
    """Read the input and parse it. The cyclic garbage collector is paused while a bundle's files are read (JSON
    documents of 100,000s of objects: a third of reading them, measured) and while the rules are parsed
    (no_cyclic_gc); a live read runs network code for minutes and keeps it.

    `defer`: when every node is an iptables node checked against the API objects, leave the rules unread
    (LoadedInput.deferred): `check` reads each node in the worker that compares it (checks/engine.py)."""
    live = not (opts.bundle or opts.demo)
    snapshot = read_snapshot(opts, progress) if live else None
    with no_cyclic_gc():
        return _parse_snapshot(opts, snapshot or read_snapshot(opts, progress), defer)


def _parse_snapshot(opts: InputOptions, snapshot: ClusterSnapshot, defer: bool = False) -> LoadedInput:
    warnings: list[str] = []
    if opts.nodes:
        known = {n.name for n in snapshot.nodes}
        unknown = [n for n in opts.nodes if n not in known]
        if unknown:
            raise UsageError(f"no node named {', '.join(unknown)}; nodes: {', '.join(sorted(known))}")
        snapshot.nodes = [n for n in snapshot.nodes if n.name in set(opts.nodes)]
    single_file = len(snapshot.nodes) == 1 and snapshot.cluster is None
    cluster = None
    api = snapshot.api
    if api.available and not opts.no_api:
        cluster = build_cluster_model(api.services, api.endpointslices, api.pods, api.nodes)
        warnings.extend(cluster.warnings)
    loaded = LoadedInput(snapshot, {}, {}, {}, cluster, warnings)
    if defer and opts.service is None and cluster is not None and _checked_iptables_nodes(snapshot.nodes):
        loaded.deferred = {node.name: node for node in snapshot.nodes}
        return loaded
    read = _rules_reader(opts.service, cluster, pasted=single_file)
    for node in snapshot.nodes:
        loaded.take(read_node(node, read, single_file))
    if cluster is None and not opts.no_api and snapshot.source == "live":
        warnings.append(f"Kubernetes API not used ({api.status}): working from the rules alone "
                        "(comments and hashes); endpoint pods, nodes and API cross-checks are not shown")
    return loaded


def _checked_iptables_nodes(nodes: list[NodeCapture]) -> bool:
    """Whether the nodes are several, each read and in iptables mode (what check compares node by node)."""
    return len(nodes) >= 2 and all(
        not node.error and not node.has_nftables and (node.proxy_mode or "iptables") == "iptables"
        and node.iptables_save.strip() for node in nodes)


@dataclass(slots=True)
class NodeRead:
    """What reading one node's capture gave: its rules, or why they could not be read, and what to warn about."""

    name: str
    rules: NodeRules | None = None
    rules6: NodeRules | None = None  # its ip6tables rules, when they hold kube-proxy's
    other: NodeRules | None = None  # the other iptables backend's rules
    nft: list | None = None  # kube-proxy's nftables tables
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)


def read_node(node: NodeCapture, read=parse_rules, single_file: bool = False) -> NodeRead:
    """Read one node's capture (`read`: how to parse its dumps, inputs._rules_reader). A single file's errors are
    raised; a node of a bundle that cannot be read is named as such."""
    out = NodeRead(node.name)
    if node.error:
        out.failure = node.error
        return out
    if node.has_nftables:
        try:
            out.nft = _read_nft(node)
        except SvcdoctorError as e:
            if single_file:
                raise
            out.failure = f"unreadable nftables listing: {e}"
            return out
        if not node.iptables_save.strip():
            out.rules = NodeRules()  # kubelet's iptables chains were not read; kube-proxy's are in nft
            return out
    try:
        parsed = read(node.iptables_save, node.source or node.name)
    except SvcdoctorError as e:
        if single_file:
            raise
        out.failure = f"unreadable rules: {e}"
        return out
    parsed.backend_warnings.extend(w for w in node.warnings if w not in parsed.backend_warnings)
    out.warnings.extend(parsed.warnings)
    missing = missing_pieces(parsed)
    if missing:
        out.warnings.append(f"{node.source or node.name}: a partial dump, without {'; '.join(missing)}: what is in "
                            "it is explained, and nothing missing is taken to be absent from the node")
    out.rules = parsed
    if node.other_backend_save:
        try:
            out.other = parse_rules(node.other_backend_save, f"{node.name} (other backend)")
        except SvcdoctorError as e:
            out.warnings.append(f"{node.name}: the other backend's rules could not be read: {e}")
    if node.ip6tables_save and node.ip6tables_save.strip():
        try:
            v6 = read(node.ip6tables_save, f"{node.name} (ip6tables)")
            if v6.has_kube_proxy_rules():  # kubelet's chains alone say nothing about services
                out.rules6 = v6
        except SvcdoctorError as e:
            out.warnings.append(f"{node.name}: its ip6tables rules could not be read: {e}")
    return out


def _read_nft(node: NodeCapture) -> list:
    """kube-proxy's nftables tables of one node, from its JSON listing (or the text one where there is no JSON)."""
    from svcdoctor.model.nft import kube_proxy_tables, read_listing

    text = node.nftables_json if (node.nftables_json or "").strip() else node.nftables_text or ""
    tables = kube_proxy_tables(read_listing(text, node.source or node.name))
    if not tables:
        raise InputError(f"{node.source or node.name}: no kube-proxy table (ip or ip6 kube-proxy) in the nftables "
                         "listing")
    if node.proxy_mode in (None, ""):
        node.proxy_mode = "nftables"
    return tables


def _rules_reader(service: str | None, cluster: ClusterModel | None, pasted: bool):
    """How to parse a node's dump: all of it, or (for one service) only that service's chains and the chains
    every path goes through; a single file (or standard input) as a person may have pasted it."""
    if service is None:
        return parse_pasted_rules if pasted else parse_rules
    namespace, _, name = service.partition("/")
    suffixes = [service_hash(sp.svc_port_name, sp.protocol) for sp in (cluster.service_ports if cluster else [])
                if sp.namespace == namespace and sp.name == name]
    return lambda text, source: parse_service_rules(text, source, service, suffixes, pasted)


def resolve_service(service: str, namespace: str | None, loaded: LoadedInput) -> tuple[str, str]:
    """Accepts NAME with -n, NAMESPACE/NAME, or svc/NAME (kubectl's TYPE/NAME). Unknown names exit 2 with the closest
    matches, each named once."""
    from svcdoctor.model.service_ref import TYPE_PREFIXES

    for prefix in TYPE_PREFIXES:
        if service.lower().startswith(prefix):
            service = service[len(prefix):]
            break
    if "/" in service and namespace is None:
        namespace, service = service.split("/", 1)
    ns = namespace or "default"
    key = f"{ns}/{service}"
    if service_indexes(loaded, ns, service) is not None:
        return ns, service
    # every service on every node: only to suggest names
    names = known_services(loaded.rules, loaded.cluster, loaded.rules6)
    if loaded.nft:
        from svcdoctor.model.nft.view import nft_service_names

        names |= nft_service_names(loaded.nft)
    raise UnknownServiceError(f"no service {key} on any node{' or in the API' if loaded.cluster else ''}"
                              f"{_suggestions(ns, service, names)}" + _replaced_nodes(loaded))


def _suggestions(namespace: str, name: str, names: set[str]) -> str:
    """"; it exists in -n other" or "; did you mean default/web, shop/web?": each service once, by its full name."""
    elsewhere = sorted(n for n in names if n.split("/", 1)[1] == name)
    if elsewhere:
        return "; it exists in " + ", ".join(f"-n {n.split('/')[0]}" for n in elsewhere)
    by_name: dict[str, list[str]] = {}
    for n in sorted(names):
        by_name.setdefault(n.split("/", 1)[1], []).append(n)
    close = difflib.get_close_matches(f"{namespace}/{name}", sorted(names), n=3, cutoff=0.5)
    for near in difflib.get_close_matches(name, sorted(by_name), n=3):
        close += [n for n in by_name[near] if n not in close]
    if not close:
        return "; `svcdoctor services` lists them" if names else ""
    return "; did you mean " + ", ".join(close[:5]) + "?"


def resolve_target(loaded: LoadedInput, text: str, namespace: str | None, all_namespaces: bool = False
                   ) -> tuple[str, str, str | None]:
    """(namespace, name, port) for what a user typed: a name (-n, -A), NAMESPACE/NAME, svc/NAME, an address the
    service is reached at (ClusterIP[:port], external or LB IP) or a node port (:32624). The port is the service
    port the address names (its name, or number when unnamed), None for all of them."""
    from svcdoctor.model.service_ref import parse_service_ref

    ref = parse_service_ref(text)
    if ref.is_address:
        return _resolve_address(loaded, ref.host, ref.port)
    if all_namespaces and ref.namespace is None and namespace is None:
        names = sorted(n for n in known_services(loaded.rules, loaded.cluster, loaded.rules6)
                       if n.split("/", 1)[1] == ref.name)
        if len(names) > 1:
            raise UsageError(f"{ref.name} is a service in {len(names)} namespaces ({', '.join(names)}): "
                             "name one with -n NAMESPACE or NAMESPACE/NAME")
        if names:
            ns, name = names[0].split("/", 1)
            return ns, name, None
    ns, name = resolve_service(ref.name if ref.namespace is None else f"{ref.namespace}/{ref.name}",
                               namespace if ref.namespace is None else None, loaded)
    return ns, name, None


def _resolve_address(loaded: LoadedInput, host: str | None, port: int | None) -> tuple[str, str, str | None]:
    from svcdoctor.model.service_list import find_by_address, list_services

    wanted = f":{port}" if host is None else (f"{host}:{port}" if port is not None else host)
    hits = find_by_address(list_services(loaded.rules, loaded.cluster, loaded.rules6, loaded.nft), host, port)
    services = sorted({s.key for s, _ in hits})
    what = "node port" if host is None else "address"
    if not services:
        raise UnknownServiceError(f"no service has the {what} {wanted} on any node; `svcdoctor services -o wide` "
                                  "lists every service's addresses and node ports")
    if len(services) > 1:
        raise UsageError(f"the {what} {wanted} belongs to several services ({', '.join(services)}): name one")
    summary = hits[0][0]
    ports = {(e.port_name, e.protocol) for _, e in hits}
    port_filter = None
    if port is not None and len(ports) == 1:  # the address names one service port: explain only that one
        port_name, protocol = next(iter(ports))
        number = summary.ports.get((port_name, protocol), {}).get("port")
        port_filter = port_name or (str(number) if number is not None else None)
    return summary.namespace, summary.name, port_filter


def _replaced_nodes(loaded: LoadedInput) -> str:
    """Why a service is in no node's iptables when another component routes Services there (not that the service
    does not exist)."""
    from svcdoctor.model.replaced import kube_proxy_replacement

    replaced = {}
    for node, rules in loaded.rules.items():
        if not rules.has_kube_proxy_rules():
            found = kube_proxy_replacement(rules)
            if found is not None:
                replaced[node] = found[0]
    if not replaced:
        return ""
    where = ", ".join(f"{name} on {node}" for node, name in sorted(replaced.items()))
    return f"; Services are not programmed in iptables where kube-proxy is replaced ({where})"


def service_indexes(loaded: LoadedInput, ns: str, name: str) -> dict[str, NodeServiceIndex] | None:
    """Each node's rules for this one service (found by name or by its ports' hashes); None if it is nowhere."""
    key = (ns, name)
    if key not in loaded.index_cache:
        loaded.index_cache[key] = _service_indexes(loaded, ns, name)
    return loaded.index_cache[key]


def _service_indexes(loaded: LoadedInput, ns: str, name: str) -> dict[str, NodeServiceIndex] | None:
    api_ports = [sp for sp in (loaded.cluster.service_ports if loaded.cluster else [])
                 if sp.namespace == ns and sp.name == name]
    suffixes = frozenset(service_hash(sp.svc_port_name, sp.protocol) for sp in api_ports)
    indexes = {n: index_node_services(r, f"{ns}/{name}", suffixes) for n, r in loaded.rules.items()}
    if api_ports or any(ix.by_suffix for ix in indexes.values()):
        return indexes
    if any(index_node_services(r, f"{ns}/{name}", suffixes).by_suffix for r in loaded.rules6.values()):
        return indexes  # an IPv6-only service: its rules are all in ip6tables
    if loaded.nft:
        from svcdoctor.model.nft.view import nft_service_names

        if f"{ns}/{name}" in nft_service_names(loaded.nft):
            return indexes  # a service of nftables-mode nodes only
    return None


def build_view(loaded: LoadedInput, ns: str, name: str, port: str | None = None) -> ServiceView:
    """The service on every node, both address families: iptables, and ip6tables where the nodes have it."""
    view = build_service_view(ns, name, loaded.rules, loaded.cluster, port_filter=port,
                              indexes=service_indexes(loaded, ns, name))
    if loaded.rules6:
        view6 = build_service_view(ns, name, loaded.rules6, loaded.cluster, port_filter=port)
        merge_family(view, view6, "IPv6")
    if loaded.nft:
        from svcdoctor.model.nft.view import add_nft_nodes

        add_nft_nodes(view, loaded.nft, loaded.cluster, port)
    return view
