"""Collect a live kind cluster: every node's rules through docker, the objects through the Kubernetes API.

The two sources are read at the same time (the API in a thread of its own while the node pool runs), and the
result is the same ClusterSnapshot a bundle gives, so everything downstream works on either.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from svcdoctor.collect import kind, kube_api, node_rules
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot


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
            capture.proxy_mode = mode
    return ClusterSnapshot(
        cluster=name,
        nodes=captures,
        api=api,
        collected_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        source="live",
    )


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
