"""What collection hands to the model: one cluster's raw captures, from a live cluster or a bundle.

Collection (docker, the Kubernetes API, bundles) fills these in; the model never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class NodeCapture:
    """Everything read from one node. ``error`` set means the node could not be read."""

    name: str
    iptables_save: str = ""  # what `iptables-save -c` printed for the backend the node uses
    internal_ip: str | None = None
    role: str | None = None  # control-plane | worker (kind's label)
    backend: str | None = None  # nft | legacy: the backend the node uses
    proxy_mode: str | None = None  # iptables | ipvs | nftables
    other_backend_save: str | None = None  # `iptables-save -c` of the backend the node does NOT use
    ip6tables_save: str | None = None  # `ip6tables-save -c` of the backend used (dual-stack and IPv6 clusters)
    # kube-proxy's nftables tables (nftables mode): what `nft -j list table ip kube-proxy` (and ip6) printed, or
    # the text of `nft list table …` where nft has no JSON; None when not read, "" when nft found no such table
    nftables_json: str | None = None
    nftables_text: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. "# Warning: iptables-legacy tables present"
    error: str | None = None
    source: str | None = None  # where the text came from (file path, container name, pod)
    read_via: str | None = None  # how: "docker exec", "pods/exec" (the node's kube-proxy pod), "bundle"

    @property
    def has_nftables(self) -> bool:
        return bool((self.nftables_json or "").strip() or (self.nftables_text or "").strip())


@dataclass(slots=True)
class ApiObjects:
    """Raw Kubernetes objects as the API (or `kubectl get -A -o json`) returns their items.

    A list that is None was not available (no API, or not in the bundle); an empty list is a real "none".
    """

    services: list[dict] | None = None
    endpointslices: list[dict] | None = None
    pods: list[dict] | None = None
    nodes: list[dict] | None = None
    kube_proxy_config: dict | None = None  # parsed `config.conf` of ConfigMap kube-system/kube-proxy
    status: str = "not requested"  # "ok", "skipped (--no-api)", or why the API could not be read

    @property
    def available(self) -> bool:
        return self.services is not None


@dataclass(slots=True)
class ClusterSnapshot:
    cluster: str | None
    nodes: list[NodeCapture]
    api: ApiObjects = field(default_factory=ApiObjects)
    collected_at: str | None = None  # RFC 3339
    source: str = "live"  # "live", or the bundle / rules file path

    @property
    def failed_nodes(self) -> list[NodeCapture]:
        return [n for n in self.nodes if n.error]
