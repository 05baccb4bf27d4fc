"""Read nodes' rules through the Kubernetes API: in each node's kube-proxy pod, over `pods/exec`.

The way for every cluster that is not kind (kubeadm, k3s, EKS, AKS, GKE): the only door is the API. The steps:
list the nodes (`--node-selector`, `--node`, `--sample`), find each node's kube-proxy pod (`proxy_pods.py`), and
run in it the reads `node_rules.py` runs through docker — `iptables-nft-save -c`, `iptables-legacy-save -c` (unless
the nft dump shows there is no legacy table: `_legacy_unless_absent`), then ip6tables of the backend the node
uses — as argv over `pods/exec` (`pod_exec.py`), in a bounded pool, with the same backend choice and warnings.

At scale: at most `parallel` execs are open at once (one node's reads run one after the other inside one worker),
a node that fails is tried once more, and every node's result is kept as soon as it is in. For one service
(`explain`), only that service's chains are read from a plain nft node (`api_scoped.py`), and any whole dump is cut
to them as it arrives (`model/scoped_read.py`), so what moves and stays in memory per node is kilobytes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from svcdoctor.collect import api_scoped, debug_pods, kube_api, node_rules, proxy_pods, rbac
from svcdoctor.collect.pod_exec import PodTarget
from svcdoctor.collect.snapshot import NodeCapture
from svcdoctor.errors import SvcdoctorError, UnreachableError, UsageError

DEFAULT_PARALLEL = 16  # open execs at once: each is a long-lived request the API server proxies to a kubelet
ROLE_PREFIX = "node-role.kubernetes.io/"
ZONE_LABEL = "topology.kubernetes.io/zone"
READ_VIA = "pods/exec"
# Below this many Services in the cluster a node's whole dump is small (~1.5 KB a service): read whole, in one exec
SCOPED_READ_MIN_SERVICES = 200
WHOLE_DUMP = "whole-dump"  # among a service's port hashes: the cluster is small, read each node whole (live.py)
IPV4_ONLY = "ipv4-only"  # among a service's port hashes: its Service is single-stack IPv4 (live._port_hashes)


@dataclass(slots=True)
class ApiNode:
    """A node as the API lists it, with what node_rules.assemble_capture reads (name, role, internal_ip)."""

    name: str
    role: str | None
    internal_ip: str | None
    zone: str | None


@dataclass(slots=True)
class NodeProgress:
    """Handed to the progress callback as each node finishes (render/progress.py draws it)."""

    done: int
    failed: int
    total: int


class ApiPermissionError(SvcdoctorError):
    """The credentials lack a grant svcdoctor needs to read any node (exit 3: the nodes cannot be reached)."""

    exit_status = UnreachableError.exit_status


def list_nodes(session: kube_api.ApiSession, selector: str | None) -> list[ApiNode]:
    from kubernetes.client.exceptions import ApiException

    kwargs = {"label_selector": selector} if selector else {}
    try:
        items = kube_api.list_all(session, session.core().list_node, "Node", "v1", **kwargs)
    except ApiException as exc:
        raise _api_error(exc, session, "list", "nodes") from exc
    except Exception as exc:  # noqa: BLE001 - timeouts, refused connections
        raise UnreachableError(kube_api.describe_failure(exc, session, "list nodes")) from exc
    return [_api_node(item) for item in items]


def _api_node(item: dict) -> ApiNode:
    meta, status = item.get("metadata") or {}, item.get("status") or {}
    labels = meta.get("labels") or {}
    roles = sorted(k[len(ROLE_PREFIX):] for k in labels if k.startswith(ROLE_PREFIX))
    ip = next((a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"), None)
    return ApiNode(meta.get("name"), ",".join(roles) or "worker", ip, labels.get(ZONE_LABEL))


def select(nodes: list[ApiNode], wanted: list[str] | None, sample: int | None,
           rng: random.Random | None = None) -> list[ApiNode]:
    """--node names (an unknown one is a usage error), then --sample K: K nodes at random, spread over the
    (role, zone) groups in proportion to their sizes, every group getting one while K allows."""
    if wanted:
        by_name = {n.name: n for n in nodes}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            shown = ", ".join(list(by_name)[:20]) + (" …" if len(by_name) > 20 else "")
            raise UsageError(f"no node {', '.join(map(repr, unknown))} in this cluster; its nodes are: {shown or 'none'}")
        nodes = [by_name[w] for w in dict.fromkeys(wanted)]
    if sample is None or sample >= len(nodes):
        return nodes
    if sample < 1:
        raise UsageError("--sample must be at least 1")
    rng = rng or random.Random()
    groups: dict[tuple, list[ApiNode]] = {}
    for node in nodes:
        groups.setdefault((node.role, node.zone), []).append(node)
    keys = sorted(groups, key=lambda k: (-len(groups[k]), str(k)))
    share = {k: 0 for k in keys}
    for k in keys[:sample]:  # one per group first, biggest groups first
        share[k] = 1
    left = sample - sum(share.values())
    # then the rest in proportion to what each group still has (largest remainder)
    room = {k: len(groups[k]) - share[k] for k in keys}
    total_room = sum(room.values())
    if left > 0 and total_room:
        exact = {k: left * room[k] / total_room for k in keys}
        for k in keys:
            share[k] += int(exact[k])
        rest = left - sum(int(v) for v in exact.values())
        for k in sorted(keys, key=lambda k: exact[k] - int(exact[k]), reverse=True)[:rest]:
            share[k] += 1
    picked = {id(n) for k in keys for n in rng.sample(groups[k], min(share[k], len(groups[k])))}
    return [n for n in nodes if id(n) in picked]


def find_proxy_pods(session: kube_api.ApiSession, nodes: list[ApiNode], namespace: str,
                    selector: str) -> dict[str, proxy_pods.NodeProxy]:
    from kubernetes.client.exceptions import ApiException

    core = session.core()
    try:
        pods = kube_api.list_all(session, core.list_namespaced_pod, "Pod", "v1", namespace=namespace,
                                 label_selector=selector)
    except ApiException as exc:
        raise _api_error(exc, session, "list", "pods", namespace=namespace) from exc
    except Exception as exc:  # noqa: BLE001
        raise UnreachableError(kube_api.describe_failure(exc, session, f"list pods in {namespace}")) from exc
    names = [n.name for n in nodes]
    found = proxy_pods.proxy_pods_by_node(pods, [], names)
    if any(p.pod is None for p in found.values()):
        # only to name a reason: who replaced kube-proxy on the nodes that have none (best effort)
        try:
            cilium = kube_api.list_all(session, core.list_pod_for_all_namespaces, "Pod", "v1",
                                       label_selector=proxy_pods.CILIUM_SELECTOR)
        except Exception:  # noqa: BLE001 - the plain reason stays
            cilium = []
        found = proxy_pods.proxy_pods_by_node(pods, cilium, names)
    return found


def capture_nodes(
    session: kube_api.ApiSession,
    nodes: list[ApiNode],
    found: dict[str, proxy_pods.NodeProxy],
    *,
    parallel: int = DEFAULT_PARALLEL,
    timeout: float = 10.0,
    service: str | None = None,
    progress: Callable[[object], None] | None = None,
    cancel: threading.Event | None = None,
    helpers: debug_pods.DebugPods | None = None,
    suffixes: tuple[str, ...] = (),
) -> list[NodeCapture]:
    """Every node's capture, in the order given; a node that cannot be read carries its reason in `error`.
    With `helpers` (--debug-pod), a node without a usable kube-proxy pod is read through a helper pod instead."""
    say = progress or (lambda _p: None)
    cancel = helpers.cancel if helpers is not None else (cancel or threading.Event())
    results: dict[str, NodeCapture] = {}
    for node in nodes:
        if found[node.name].pod is None and helpers is None:
            results[node.name] = _failed(node, found[node.name].reason)
    todo = [n for n in nodes if n.name not in results]
    failed = len(results)
    say(NodeProgress(done=len(results), failed=failed, total=len(nodes)))
    if todo:
        pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(todo))), thread_name_prefix="svcdoctor-exec")
        try:
            futures = {pool.submit(_read_node_job, session, node, found[node.name], timeout, service, cancel, helpers,
                                   suffixes):
                       node for node in todo}
            for future in as_completed(futures):
                capture = future.result()
                results[capture.name] = capture
                failed += bool(capture.error)
                say(NodeProgress(done=len(results), failed=failed, total=len(nodes)))
        except BaseException:
            cancel.set()  # Ctrl-C: workers stop between execs; nothing was changed anywhere, so just leave
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return [results[n.name] for n in nodes]


def _read_node_job(session, node: ApiNode, proxy: proxy_pods.NodeProxy, timeout: float, service: str | None,
                   cancel: threading.Event, helpers: debug_pods.DebugPods | None,
                   suffixes: tuple[str, ...] = ()) -> NodeCapture:
    """One node through its kube-proxy pod, or (--debug-pod) through a helper pod made for it and deleted after."""
    if proxy.pod is not None:
        return _read_with_retry(session, node, proxy.pod, timeout, service, cancel, suffixes)
    try:
        with helpers.on_node(node.name) as pod:
            capture = _read_with_retry(session, node, pod, timeout, service, cancel, suffixes)
    except debug_pods.DebugPodError as exc:
        return _failed(node, f"{proxy.reason}; {exc}")
    capture.source = f"debug pod {pod.namespace}/{pod.name} (image {helpers.opts.image})"
    capture.warnings.append(f"read through svcdoctor's debug pod {pod.namespace}/{pod.name} (deleted since): "
                            f"{proxy.reason}")
    return capture


def _read_with_retry(session, node: ApiNode, pod: proxy_pods.ProxyPod, timeout: float, service: str | None,
                     cancel: threading.Event, suffixes: tuple[str, ...] = ()) -> NodeCapture:
    """One node, tried once more if it fails (a cut stream, a busy kubelet); a refusal (403) is not retried."""
    capture = read_node(session, node, pod, timeout, service, cancel, suffixes)
    if capture.error and "forbidden" not in capture.error and not cancel.is_set():
        again = read_node(session, node, pod, timeout, service, cancel, suffixes)
        if again.error:
            again.error = f"{again.error} (tried twice)"
        capture = again
    return capture


def read_node(session, node: ApiNode, pod: proxy_pods.ProxyPod, timeout: float, service: str | None = None,
              cancel: threading.Event | None = None, suffixes: tuple[str, ...] = ()) -> NodeCapture:
    """The same reads, decisions and warnings as through docker (node_rules), through the node's kube-proxy pod;
    for one service (explain) only that service's chains where the node allows it (api_scoped.py)."""
    target = PodTarget(session, pod.namespace, pod.name, pod.container, timeout=timeout)
    scoped = service and WHOLE_DUMP not in suffixes
    capture = _read_scoped(target, node, pod, timeout, service, suffixes) if scoped else None
    if capture is None:
        capture = _read_whole(target, node, pod, timeout, cancel)
    if capture.error and "forbidden" in capture.error:
        capture.error = rbac.forbidden("get and create", "pods/exec", namespace=pod.namespace,
                                       server_message=capture.error.split(": ", 1)[-1])
        if pod.container == debug_pods.CONTAINER:  # the debug namespace's Role grants it, not kube-system's
            capture.error = capture.error.replace(rbac.GRANTS[("", "pods/exec")][2],
                                                  rbac.DEBUG_GRANTS[("", "pods/exec")][2])
    if service and not capture.error:
        scope_capture(capture, service)
    return capture


def _read_scoped(target: PodTarget, node: ApiNode, pod: proxy_pods.ProxyPod, timeout: float, service: str,
                 suffixes: tuple[str, ...]) -> NodeCapture | None:
    """The service's chains only (api_scoped.py), on a plain nft node; None: read the node whole instead."""
    (ip4, save4), (ip6, save6) = api_scoped.binaries("nft").values()
    ipv4_only = IPV4_ONLY in suffixes
    suffixes = tuple(s for s in suffixes if s not in (IPV4_ONLY, WHOLE_DUMP))
    v4 = api_scoped.read_family(target, ip4, save4, service, suffixes)
    if v4.failed:
        capture = _failed(node, f"{v4.failed}{' (did not answer within %gs)' % timeout if v4.timed_out else ''}")
        capture.source = f"pod {pod.namespace}/{pod.name}"
        return capture
    if v4.fallback:
        return None
    capture = NodeCapture(name=node.name, internal_ip=node.internal_ip, role=node.role, backend="nft",
                          iptables_save=v4.text, other_backend_save="", warnings=list(v4.warnings),
                          source=f"pod {pod.namespace}/{pod.name}", read_via=READ_VIA)
    if ipv4_only:
        return capture
    v6 = api_scoped.read_family(target, ip6, save6, service, suffixes, only_if_named=True)
    if v6.text:
        capture.ip6tables_save = v6.text
    elif v6.fallback and not v6.fallback.endswith("may be in the other backend)"):
        # ip6tables answered in a way the short read does not handle: its whole dump, as before
        node_rules.attach_ip6tables(capture, node_rules.read_backend(target, "nft",
                                                                     argv=node_rules.IP6_SAVE_COMMANDS["nft"]))
    return capture


def _read_whole(target: PodTarget, node: ApiNode, pod: proxy_pods.ProxyPod, timeout: float,
                cancel: threading.Event | None) -> NodeCapture:
    """Both backends' whole dumps (legacy skipped when nft shows there is none), then ip6tables of the one used."""
    nft = node_rules.read_backend(target, "nft")
    if cancel is not None and cancel.is_set():
        return _failed(node, "interrupted")
    legacy = _legacy_unless_absent(target, nft)
    capture = node_rules.assemble_capture(node, nft, legacy, timeout)
    capture.source, capture.read_via = f"pod {pod.namespace}/{pod.name}", READ_VIA
    del nft, legacy  # the whole dumps: keep only what the capture holds
    if not capture.error and capture.backend:
        ip6 = node_rules.read_backend(target, capture.backend, argv=node_rules.IP6_SAVE_COMMANDS[capture.backend])
        node_rules.attach_ip6tables(capture, ip6)
    if not capture.error and ":KUBE-SERVICES" not in capture.iptables_save:
        # no kube-proxy chains in iptables: kube-proxy may run in nftables mode; its pod has nft (the mode needs it)
        from svcdoctor.collect.nft_rules import attach_nftables, docker_runner, read_nft_tables

        attach_nftables(capture, read_nft_tables(docker_runner(target)))  # exec_run as docker's, argv only
    return capture


def read_nft_leftover_nodes(session, captures: list[NodeCapture], found: dict[str, proxy_pods.NodeProxy],
                            timeout: float) -> None:
    """In a cluster whose ConfigMap says nftables, the nodes that still hold kube-proxy's iptables chains (so their
    nft tables were not read: `_read_whole` reads nft only without them) get their nft tables read too, one exec
    each: an nftables node with iptables leftovers (`stale-iptables-rules`), or a node still in iptables mode
    (`proxy-mode-mismatch`). Nodes read through a debug pod, or that failed, are left as they are."""
    from svcdoctor.collect.nft_rules import attach_nftables, docker_runner, read_nft_tables

    for capture in captures:
        proxy = found.get(capture.name)
        if capture.error or capture.nftables_json is not None or capture.nftables_text is not None \
                or proxy is None or proxy.pod is None or ":KUBE-SERVICES" not in capture.iptables_save:
            continue
        pod = proxy.pod
        target = PodTarget(session, pod.namespace, pod.name, pod.container, timeout=timeout)
        attach_nftables(capture, read_nft_tables(docker_runner(target)))


def _legacy_unless_absent(target: PodTarget, nft: node_rules.BackendDump) -> node_rules.BackendDump:
    """iptables-legacy-save's dump, unless iptables-nft-save has shown there is none to read.

    iptables-nft-save warns "iptables-legacy tables present" whenever the legacy backend has any table in the
    node's netns (docs/reference/lab.md §5.4); iptables-legacy-save lists exactly those tables. So when the nft
    dump holds kube-proxy's chains and carries no such warning, the legacy read would print nothing: skipping it
    saves a third of the execs on a big cluster (benchmarks/bench_api_scale.py). In every other case both are read.
    """
    legacy_present = any("legacy tables present" in w for w in nft.warnings)
    if nft.error or legacy_present or not nft.kube_proxy_chains:
        return node_rules.read_backend(target, "legacy")
    return node_rules.BackendDump("legacy", argv=list(node_rules.SAVE_COMMANDS["legacy"]))


def scope_capture(capture: NodeCapture, service: str) -> None:
    """Keep only the service's chains and the chains every path goes through (model/scoped_read.py); a node
    that names nothing of the service keeps its whole dump, from which "did you mean" is worked out."""
    from svcdoctor.model.scoped_read import scope_to_service

    scoped = scope_to_service(capture.iptables_save, service)
    if scoped is not None:
        capture.iptables_save = scoped
        if capture.other_backend_save:
            capture.other_backend_save = scope_to_service(capture.other_backend_save, service)
        if capture.ip6tables_save:  # an IPv4-only service has nothing there
            capture.ip6tables_save = scope_to_service(capture.ip6tables_save, service)


def _failed(node: ApiNode, reason: str | None) -> NodeCapture:
    return NodeCapture(name=node.name, internal_ip=node.internal_ip, role=node.role, error=reason,
                       read_via=READ_VIA)


def _api_error(exc, session, verb: str, resource: str, namespace: str | None = None) -> SvcdoctorError:
    if exc.status == 403:
        return ApiPermissionError(rbac.forbidden(verb, resource, namespace=namespace,
                                                 server_message=kube_api._status_message(exc)))
    return UnreachableError(kube_api.describe_failure(exc, session, f"{verb} {resource}"))
