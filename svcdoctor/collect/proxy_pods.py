"""Which pod on each node can show that node's rules: kube-proxy's own, found by namespace and label.

kubeadm, kind, EKS, AKS and GKE (without Dataplane V2) run kube-proxy as a DaemonSet in `kube-system` whose pods
carry `k8s-app=kube-proxy` and use the host's network namespace, so `iptables-save` inside one prints its node's
rules. A node without such a pod is named with the likeliest reason, read from the same pod list: Cilium's agent
(`k8s-app=cilium`) replacing kube-proxy, GKE Dataplane V2 (its agent pods are `anetd-…`, labelled like Cilium's),
a kube-proxy pod that is not running, or none scheduled there (a nodeSelector or taint keeps the DaemonSet off,
or kube-proxy runs outside Kubernetes, as k3s embeds it in its own process).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "kube-system"
DEFAULT_SELECTOR = "k8s-app=kube-proxy"
CILIUM_SELECTOR = "k8s-app=cilium"  # Cilium's agent DaemonSet, and GKE Dataplane V2's anetd


@dataclass(slots=True)
class ProxyPod:
    namespace: str
    name: str
    container: str | None  # the kube-proxy container (the first one unless one is named kube-proxy)


@dataclass(slots=True)
class NodeProxy:
    """A node's kube-proxy pod, or why there is none that can be used."""

    node: str
    pod: ProxyPod | None = None
    reason: str | None = None


def proxy_pods_by_node(pods: list[dict], cilium_pods: list[dict], nodes: list[str]) -> dict[str, NodeProxy]:
    """Each node's usable kube-proxy pod (Running, its container started), else the reason it has none."""
    running: dict[str, ProxyPod] = {}
    not_running: dict[str, str] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or node in running:
            continue
        meta = pod.get("metadata") or {}
        problem = _not_running(pod)
        if problem:
            not_running.setdefault(node, f"kube-proxy pod {meta.get('namespace')}/{meta.get('name')} is {problem}")
            continue
        running[node] = ProxyPod(meta.get("namespace") or DEFAULT_NAMESPACE, meta.get("name"), _container(pod))
    replaced = {}
    for pod in cilium_pods:
        node = (pod.get("spec") or {}).get("nodeName")
        name = (pod.get("metadata") or {}).get("name") or ""
        if node:
            replaced[node] = (f"no kube-proxy pod: GKE Dataplane V2 (pod {name}) replaces kube-proxy"
                              if name.startswith("anetd") else
                              f"no kube-proxy pod: Cilium (pod {name}) likely replaces kube-proxy "
                              "(kubeProxyReplacement)")
    out = {}
    for node in nodes:
        if node in running:
            out[node] = NodeProxy(node, pod=running[node])
        else:
            out[node] = NodeProxy(node, reason=not_running.get(node) or replaced.get(node) or (
                "no kube-proxy pod is scheduled on this node (a nodeSelector or taint keeps the DaemonSet off, or "
                "kube-proxy runs outside Kubernetes, as in k3s; --proxy-namespace/--proxy-selector find another)"))
    return out


def _not_running(pod: dict) -> str | None:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating"
    phase = status.get("phase") or "Unknown"
    if phase != "Running":
        return phase
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return f"not running ({waiting.get('reason') or 'waiting'})"
    return None


def _container(pod: dict) -> str | None:
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if "kube-proxy" in names:
        return "kube-proxy"
    return names[0] if names else None
