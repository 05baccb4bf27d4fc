"""Find a kind cluster's node containers through the docker daemon.

kind marks every node container with two labels (docs/reference/kube-proxy-layout.md §6, kind's
`pkg/cluster/internal/providers/docker/constants.go`): `io.x-k8s.kind.cluster=<name>` and
`io.x-k8s.kind.role=<control-plane|worker|external-load-balancer>`. The load balancer container (HA clusters)
runs haproxy, not kube-proxy, so it is not a node for svcdoctor.

`docker` is imported inside functions so that `svcdoctor --help` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svcdoctor.errors import UnreachableError, UsageError

CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
LOAD_BALANCER_ROLE = "external-load-balancer"
KIND_NETWORK = "kind"
KIND_CONTEXT_PREFIX = "kind-"
DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"


@dataclass(slots=True)
class KindNode:
    """One node container of a kind cluster, as docker reports it."""

    name: str
    role: str
    container: Any  # docker.models.containers.Container
    internal_ip: str | None
    state: str  # docker's State.Status: running, exited, paused, ...

    @property
    def running(self) -> bool:
        return self.state == "running"


def docker_endpoint() -> str:
    """The daemon address the docker SDK will use (what `docker.from_env()` reads)."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_SOCKET


def docker_client(timeout: float = 10.0):
    """A docker client, or UnreachableError (exit 3) naming the socket that did not answer."""
    import docker  # lazy: the SDK pulls in requests/urllib3

    try:
        # from_env() asks the daemon for its API version, so a dead socket fails here
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise UnreachableError(
            f"cannot reach the docker daemon at {docker_endpoint()} ({_short_reason(exc)}); "
            "is dockerd running, and may this user use its socket? (DOCKER_HOST selects another daemon)"
        ) from exc
    except Exception as exc:  # requests' ConnectionError/Timeout do not always come wrapped
        raise UnreachableError(
            f"cannot reach the docker daemon at {docker_endpoint()} ({_short_reason(exc)}); is dockerd running?"
        ) from exc
    return client


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def running_clusters(client) -> dict[str, list[str]]:
    """kind cluster name -> its containers' names, for clusters with at least one running container."""
    clusters: dict[str, list[str]] = {}
    for container in client.containers.list(filters={"label": CLUSTER_LABEL}):
        name = container.labels.get(CLUSTER_LABEL)
        if name:
            clusters.setdefault(name, []).append(container.name)
    return clusters


def kube_context_cluster(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The kind cluster named by the kube context: `--context kind-NAME`, else the kubeconfig's current-context.

    Reads the kubeconfig as plain YAML (PyYAML comes with the kubernetes client) instead of importing the
    kubernetes package, which takes about a second to import.
    """
    if context is None:
        context = current_context(kubeconfig)
    if context and context.startswith(KIND_CONTEXT_PREFIX) and len(context) > len(KIND_CONTEXT_PREFIX):
        return context[len(KIND_CONTEXT_PREFIX) :]
    return None


def kubeconfig_paths(kubeconfig: str | None = None) -> list[Path]:
    """As kubectl: --kubeconfig, else the files listed in $KUBECONFIG, else ~/.kube/config."""
    if kubeconfig:
        return [Path(kubeconfig).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def current_context(kubeconfig: str | None = None) -> str | None:
    """current-context of the kubeconfig; with several files the first one that sets it wins (kubectl's merge)."""
    import yaml

    for path in kubeconfig_paths(kubeconfig):
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue  # an unreadable kubeconfig only means "no context"; kube_api reports it when the API is used
        if isinstance(doc, dict) and doc.get("current-context"):
            return str(doc["current-context"])
    return None


def resolve_cluster(
    client, cluster: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> str:
    """The cluster to inspect: --cluster, else the kube context kind-NAME, else the only running kind cluster."""
    clusters = running_clusters(client)
    how = "--cluster"
    if cluster is None:
        cluster = kube_context_cluster(kubeconfig, context)
        how = f"kube context kind-{cluster}"
    if cluster is not None:
        if cluster not in clusters:
            running = ", ".join(sorted(clusters)) or "none"
            raise UnreachableError(
                f"no running kind cluster {cluster!r} (from {how}); running kind clusters: {running}. "
                f"Create it with `kind create cluster --name {cluster}`, or pick one with --cluster NAME"
            )
        return cluster
    if not clusters:
        raise UnreachableError(
            f"no kind cluster is running on the docker daemon at {docker_endpoint()}; "
            "create one with `kind create cluster --name NAME`, or read a bundle with --bundle PATH"
        )
    if len(clusters) > 1:
        raise UsageError(
            f"several kind clusters are running ({', '.join(sorted(clusters))}) and none is named; "
            "pick one with --cluster NAME or --context kind-NAME"
        )
    return next(iter(clusters))


def kind_nodes(client, cluster: str) -> list[KindNode]:
    """The cluster's node containers, stopped ones included (they are reported, not silently dropped)."""
    nodes = []
    for container in client.containers.list(all=True, filters={"label": f"{CLUSTER_LABEL}={cluster}"}):
        role = container.labels.get(ROLE_LABEL) or "unknown"
        if role == LOAD_BALANCER_ROLE:
            continue
        attrs = container.attrs
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        ip = (networks.get(KIND_NETWORK) or {}).get("IPAddress") or None
        state = (attrs.get("State") or {}).get("Status") or container.status
        nodes.append(KindNode(name=container.name, role=role, container=container, internal_ip=ip, state=state))
    # control-plane first, then by name: the order kind itself lists nodes in
    nodes.sort(key=lambda n: (n.role != "control-plane", n.name))
    return nodes


def select_nodes(nodes: list[KindNode], wanted: list[str] | None) -> list[KindNode]:
    """Restrict to --node names; an unknown name is a usage error that lists the cluster's nodes."""
    if not wanted:
        return nodes
    by_name = {n.name: n for n in nodes}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise UsageError(
            f"no node {', '.join(map(repr, unknown))} in this cluster; its nodes are: {', '.join(by_name) or 'none'}"
        )
    return [by_name[w] for w in dict.fromkeys(wanted)]
