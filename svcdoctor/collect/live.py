"""Collect a live cluster: every node's rules (through docker on kind, else through the Kubernetes API), and the
objects through the Kubernetes API.

Which door, as kubectl chooses its cluster (--kubeconfig, $KUBECONFIG, ~/.kube/config; --context, else the
current one): a context `kind-NAME` whose node containers run on this docker daemon (or --cluster NAME) is read
through docker, as always; any other context, or `--via api`, is read through each node's kube-proxy pod
(`api_nodes.py`). The two sources are read at the same time (the API objects in a thread of their own while the
node pool runs), and the result is the same ClusterSnapshot a bundle gives, so everything downstream works on
either.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from svcdoctor.collect import api_nodes, debug_pods, kind, kube_api, node_rules, proxy_pods
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot
from svcdoctor.errors import UnreachableError, UsageError

VIAS = ("auto", "docker", "api")


@dataclass(slots=True)
class ApiReadOptions:
    """How to read nodes through the API (the flags of the same names)."""

    parallel: int = api_nodes.DEFAULT_PARALLEL
    node_selector: str | None = None
    sample: int | None = None
    proxy_namespace: str = proxy_pods.DEFAULT_NAMESPACE
    proxy_selector: str = proxy_pods.DEFAULT_SELECTOR
    debug_pod: debug_pods.DebugPodOptions | None = None  # --debug-pod IMAGE: consent to create helper pods


def choose_via(via: str, cluster: str | None, kubeconfig: str | None, context: str | None,
               timeout: float = 10.0) -> str:
    """"docker" or "api". auto: --cluster, or a kind-NAME context whose cluster runs on this docker daemon, or no
    kubeconfig at all (the only running kind cluster, as before), is docker; every other context is the API."""
    if via != "auto":
        return via
    if cluster is not None:
        return "docker"
    if not any(p.is_file() for p in kind.kubeconfig_paths(kubeconfig)):
        return "docker"
    name = kind.kube_context_cluster(kubeconfig, context)
    if name is None:
        return "api"
    try:
        client = kind.docker_client(timeout=min(timeout, 3.0))
    except UnreachableError:
        return "api"  # no docker here: a kind cluster elsewhere is still reachable through its API
    try:
        return "docker" if name in kind.running_clusters(client) else "api"
    finally:
        client.close()


def collect_live(
    cluster: str | None = None,
    nodes: list[str] | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    no_api: bool = False,
    service: str | tuple[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    timeout: float = 10.0,
    max_workers: int | None = None,
    via: str = "auto",
    api_read: ApiReadOptions | None = None,
) -> ClusterSnapshot:
    """Read the cluster now.

    cluster: kind cluster name (default: kube context kind-NAME, else the only running kind cluster);
    nodes: restrict to these node names; service: "namespace/name" (or a tuple) to read only what `explain`
    needs from the API; timeout: seconds per node and per API request; progress: called with short status lines.

    Raises UnreachableError (exit 3: docker down, no such cluster), UsageError (exit 2: several clusters and none
    named, unknown --node or --context), InputError (exit 2: --kubeconfig missing). A node that cannot be read
    is a NodeCapture with `error` (the caller exits 4); an unreadable API is ApiObjects.status (rules only).
    """
    say = progress or (lambda _msg: None)
    api_read = api_read or ApiReadOptions()
    if choose_via(via, cluster, kubeconfig, context, timeout) == "api":
        if cluster is not None:
            raise UsageError("--cluster names a kind cluster (read through docker); with --via api pick the "
                             "cluster with --context")
        return collect_via_api(nodes, kubeconfig, context, no_api, service, say, timeout, api_read)
    if api_read.node_selector or api_read.sample:
        raise UsageError("--node-selector and --sample work through the API: add --via api")
    if api_read.debug_pod is not None:
        raise UsageError("--debug-pod reads nodes through the API (docker reads every kind node without one): "
                         "add --via api")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="svcdoctor-api") as api_pool:
        if not no_api:
            # importing the kubernetes client costs ~0.3 s of CPU: do it while docker answers, not after
            api_pool.submit(_import_kubernetes_client)
        say("connecting to docker")
        client = kind.docker_client(timeout=timeout)
        try:
            name = kind.resolve_cluster(client, cluster, kubeconfig, context)
            targets = kind.select_nodes(kind.kind_nodes(client, name), nodes)
            say(f"reading {len(targets)} node(s) of kind cluster {name}")
            api_future = api_pool.submit(_read_api, name, kubeconfig, context, no_api, service, timeout, say)
            captures = node_rules.capture_nodes(targets, timeout=timeout, max_workers=max_workers, progress=say)
            api = api_future.result()
        finally:
            client.close()
    mode = kube_api.proxy_mode(api.kube_proxy_config)
    for capture in captures:
        if not capture.error:
            capture.proxy_mode = node_proxy_mode(capture, mode)
    return ClusterSnapshot(
        cluster=name,
        nodes=captures,
        api=api,
        collected_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        source="live",
    )


def node_proxy_mode(capture, configured: str | None) -> str | None:
    """The mode kube-proxy runs in on a node: what the node shows where it shows it, else the ConfigMap's `mode:`
    (which is what every kube-proxy was told, not what each one does: `proxy-mode-mismatch` compares the two).

    Its nftables table read: nftables. The ConfigMap says nftables and nft found no kube-proxy table there: iptables
    when kube-proxy's iptables chains are there, else nothing is programmed (None: `no-kube-proxy-rules`)."""
    if capture.has_nftables:
        return "nftables"
    if configured == "nftables" and capture.nftables_json == "":
        return "iptables" if ":KUBE-SERVICES" in capture.iptables_save else None
    return configured


def _import_kubernetes_client() -> None:
    try:
        import kubernetes.client  # noqa: F401
        import kubernetes.config  # noqa: F401
    except Exception:  # noqa: BLE001 - _read_api reports a broken client properly; this is only a head start
        pass


def _read_api(cluster, kubeconfig, context, no_api, service, timeout, say) -> ApiObjects:
    if service is not None:
        namespace, name = service.split("/", 1) if isinstance(service, str) else service
        return kube_api.fetch_service_objects(
            namespace, name, kubeconfig, context, cluster, no_api=no_api, timeout=timeout, progress=say
        )
    return kube_api.fetch_api_objects(kubeconfig, context, cluster, no_api=no_api, timeout=timeout, progress=say)


def collect_via_api(nodes, kubeconfig, context, no_api, service, say, timeout, opts: ApiReadOptions) -> ClusterSnapshot:
    """Every node through its kube-proxy pod (`api_nodes.py`); the objects as on kind, at the same time."""
    if opts.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    try:
        session = kube_api.open_session(kubeconfig, context, None, timeout=timeout)
    except kube_api.ApiUnavailable as exc:
        raise UnreachableError(f"cannot read nodes through the Kubernetes API: {exc}") from exc
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="svcdoctor-api") as api_pool:
            say(f"listing nodes of context {session.context} ({session.server})")
            listed = api_nodes.list_nodes(session, opts.node_selector)
            targets = api_nodes.select(listed, nodes, opts.sample)
            api_future = api_pool.submit(_read_api, None, kubeconfig, context, no_api, service, timeout, say)
            found = api_nodes.find_proxy_pods(session, targets, opts.proxy_namespace, opts.proxy_selector)
            say(f"reading {len(targets)} node(s) through their kube-proxy pods")
            key = _service_key(service)
            captures = _capture(session, targets, found, opts, timeout, key, say,
                                _port_hashes(session, key) if key else ())
            api = api_future.result()
            if kube_api.proxy_mode(api.kube_proxy_config) == "nftables":
                api_nodes.read_nft_leftover_nodes(session, captures, found, timeout)
    finally:
        session.client.close()
    mode = kube_api.proxy_mode(api.kube_proxy_config)
    for capture in captures:
        if not capture.error:
            capture.proxy_mode = node_proxy_mode(capture, mode)
    return ClusterSnapshot(
        cluster=session.context,
        nodes=captures,
        api=api,
        collected_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        source="live",
    )


def _port_hashes(session, service: str) -> tuple[str, ...]:
    """The hash suffixes of the service's ports (its KUBE-SVC/EXT/FW/SVL chains), so that each node's short read
    (api_scoped.py) finds them where kube-proxy wrote no comments (big clusters). Best effort: one GET."""
    from svcdoctor.model.hashes import service_hash, service_port_name

    namespace, name = service.split("/", 1)
    whole = (api_nodes.WHOLE_DUMP,) if _few_services(session) else ()
    try:
        doc = kube_api._raw(session.core().read_namespaced_service, session, name=name, namespace=namespace)
    except Exception:  # noqa: BLE001 - not there, or not readable: the comments still find it
        return whole
    spec = doc.get("spec") or {}
    hashes = tuple(service_hash(service_port_name(namespace, name, p.get("name")), p.get("protocol") or "TCP")
                   for p in spec.get("ports") or [])
    # an IPv4-only Service has nothing in ip6tables: api_scoped need not ask (the hashes then say "IPv4 only")
    hashes += (api_nodes.IPV4_ONLY,) if spec.get("ipFamilies") == ["IPv4"] else ()
    return hashes + whole


def _few_services(session) -> bool:
    """Whether the cluster has few Services: each node's whole dump is then small, and one exec for it beats a
    dozen for the service's chains (api_scoped.py) on thousands of nodes. One GET of at most a page."""
    try:
        doc = kube_api._raw(session.core().list_service_for_all_namespaces, session,
                            limit=api_nodes.SCOPED_READ_MIN_SERVICES)
    except Exception:  # noqa: BLE001 - not listable: read the service's chains only, the safe size
        return False
    meta = doc.get("metadata") or {}
    remaining = meta.get("remainingItemCount")
    if isinstance(remaining, int):  # real API servers count what a limited list left out
        return len(doc.get("items") or []) + remaining < api_nodes.SCOPED_READ_MIN_SERVICES
    return not meta.get("continue")


def _capture(session, targets, found, opts: ApiReadOptions, timeout: float, service: str | None, say,
             suffixes: tuple[str, ...] = ()):
    """The nodes' captures; with --debug-pod, inside the guard that deletes every helper pod on any way out."""
    if opts.debug_pod is None:  # without consent nothing is created, and nothing is looked for
        return api_nodes.capture_nodes(session, targets, found, parallel=opts.parallel, timeout=timeout,
                                       service=service, progress=say, suffixes=suffixes)
    helpers = debug_pods.DebugPods(session, opts.debug_pod, timeout)
    with debug_pods.cleanup_guard(helpers):
        helpers.sweep()
        missing = sum(1 for f in found.values() if f.pod is None)
        if missing:
            say(f"{missing} node(s) without a usable kube-proxy pod: reading them through debug pods "
                f"({opts.debug_pod.image} in namespace {opts.debug_pod.namespace})")
        return api_nodes.capture_nodes(session, targets, found, parallel=opts.parallel, timeout=timeout,
                                       service=service, progress=say, helpers=helpers, suffixes=suffixes)


def _service_key(service) -> str | None:
    if service is None:
        return None
    return service if isinstance(service, str) else "/".join(service)
