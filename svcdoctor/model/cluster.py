"""Kubernetes API objects (raw JSON items) turned into what kube-proxy works from: service ports and endpoints.

Follows kube-proxy's reading of the objects (kube-proxy-layout.md §2.3): an endpoint with `ready` unset is ready;
`serving` unset is serving (endpointslicecache.go: `Serving == nil || *Serving`), and only an endpoint's first
address is used (kube-proxy reads `Addresses[0]`); an EndpointSlice belongs to a Service by label `kubernetes.io/service-name`,
and its port is matched to the Service port by name (and protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.model.hashes import endpoint_string, service_port_name

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(slots=True)
class Endpoint:
    ip: str
    port: int
    node: str | None = None
    pod: str | None = None  # "namespace/name" from targetRef
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def address(self) -> str:
        return endpoint_string(self.ip, self.port)


@dataclass(slots=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str  # "" when the port is unnamed
    protocol: str  # TCP | UDP | SCTP
    port: int
    node_port: int | None = None
    target_port: int | str | None = None
    type: str = "ClusterIP"
    cluster_ips: list[str] = field(default_factory=list)
    external_ips: list[str] = field(default_factory=list)
    load_balancer_ips: list[str] = field(default_factory=list)
    load_balancer_source_ranges: list[str] = field(default_factory=list)
    external_traffic_policy: str | None = None  # Cluster | Local (None for ClusterIP services)
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    session_affinity_timeout: int | None = None
    health_check_node_port: int | None = None
    endpoints: list[Endpoint] = field(default_factory=list)

    @property
    def svc_port_name(self) -> str:
        """kube-proxy's ServicePortName.String(): "ns/name" or "ns/name:port"."""
        return service_port_name(self.namespace, self.name, self.port_name)

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cluster_ip(self) -> str | None:
        return self.cluster_ips[0] if self.cluster_ips else None

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port) or bool(self.external_ips) or bool(self.load_balancer_ips)

    @property
    def etp_local(self) -> bool:
        return self.external_traffic_policy == "Local" and self.externally_accessible

    @property
    def itp_local(self) -> bool:
        return self.internal_traffic_policy == "Local"


@dataclass(slots=True)
class ClusterModel:
    """Service ports (with their endpoints), pods by IP and node addresses, from the API objects."""

    service_ports: list[ServicePort] = field(default_factory=list)
    pods_by_ip: dict[str, str] = field(default_factory=dict)  # pod IP -> "ns/name"
    pod_nodes: dict[str, str] = field(default_factory=dict)  # pod IP -> node name
    node_ips: dict[str, list[str]] = field(default_factory=dict)  # node name -> addresses

    def services(self) -> dict[str, list[ServicePort]]:
        out: dict[str, list[ServicePort]] = {}
        for sp in self.service_ports:
            out.setdefault(sp.service_key, []).append(sp)
        return out


def _service_ports(svc: dict) -> list[ServicePort]:
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    status = svc.get("status") or {}
    svc_type = spec.get("type") or "ClusterIP"
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    cluster_ips = [ip for ip in cluster_ips if ip and ip != "None"]
    lb_ips = [
        ing["ip"]
        for ing in (status.get("loadBalancer") or {}).get("ingress") or []
        if ing.get("ip") and ing.get("ipMode", "VIP") == "VIP"
    ]
    affinity = spec.get("sessionAffinity") or "None"
    timeout = None
    if affinity == "ClientIP":
        timeout = (((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")) or 10800
    etp = spec.get("externalTrafficPolicy")
    if etp is None and svc_type in ("NodePort", "LoadBalancer"):
        etp = "Cluster"
    result = []
    for p in spec.get("ports") or []:
        result.append(
            ServicePort(
                namespace=meta.get("namespace") or "default",
                name=meta.get("name") or "",
                port_name=p.get("name") or "",
                protocol=(p.get("protocol") or "TCP").upper(),
                port=int(p.get("port") or 0),
                node_port=int(p["nodePort"]) if p.get("nodePort") else None,
                target_port=p.get("targetPort"),
                type=svc_type,
                cluster_ips=list(cluster_ips),
                external_ips=list(spec.get("externalIPs") or []),
                load_balancer_ips=lb_ips if svc_type == "LoadBalancer" else [],
                load_balancer_source_ranges=[r.strip() for r in spec.get("loadBalancerSourceRanges") or []],
                external_traffic_policy=etp,
                internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
                session_affinity=affinity,
                session_affinity_timeout=timeout,
                health_check_node_port=spec.get("healthCheckNodePort"),
            )
        )
    return result


def _slice_endpoints(eps: dict, port_name: str, protocol: str) -> list[Endpoint]:
    port = None
    for p in eps.get("ports") or []:
        if (p.get("name") or "") == port_name and (p.get("protocol") or "TCP").upper() == protocol:
            port = p.get("port")
            break
    if port is None:
        return []
    out = []
    for ep in eps.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        ready = True if ready is None else bool(ready)
        serving = cond.get("serving")
        serving = True if serving is None else bool(serving)
        ref = ep.get("targetRef") or {}
        pod = f"{ref.get('namespace')}/{ref.get('name')}" if ref.get("kind") == "Pod" and ref.get("name") else None
        for addr in (ep.get("addresses") or [])[:1]:
            out.append(
                Endpoint(
                    ip=addr,
                    port=int(port),
                    node=ep.get("nodeName"),
                    pod=pod,
                    ready=ready,
                    serving=serving,
                    terminating=bool(cond.get("terminating")),
                )
            )
    return out


def build_cluster_model(
    services: list[dict] | None,
    endpointslices: list[dict] | None = None,
    pods: list[dict] | None = None,
    nodes: list[dict] | None = None,
) -> ClusterModel:
    model = ClusterModel()
    slices_by_service: dict[tuple[str, str], list[dict]] = {}
    for es in endpointslices or []:
        meta = es.get("metadata") or {}
        svc_name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc_name and es.get("addressType", "IPv4") in ("IPv4", "IPv6"):
            slices_by_service.setdefault((meta.get("namespace") or "default", svc_name), []).append(es)
    for svc in services or []:
        for sp in _service_ports(svc):
            seen = set()
            for es in slices_by_service.get((sp.namespace, sp.name), []):
                for ep in _slice_endpoints(es, sp.port_name, sp.protocol):
                    if ep.address not in seen:  # kube-proxy dedups endpoints across slices
                        seen.add(ep.address)
                        sp.endpoints.append(ep)
            # kube-proxy sorts endpoints by their "ip:port" string (endpointslicecache.go byEndpoint)
            sp.endpoints.sort(key=lambda e: e.address)
            model.service_ports.append(sp)
    for pod in pods or []:
        if (pod.get("spec") or {}).get("hostNetwork"):
            continue  # a host-network pod has the node's IP: that IP says nothing about which pod it is
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or (
            [status["podIP"]] if status.get("podIP") else []
        )
        for ip in ips:
            model.pods_by_ip[ip] = key
            if (pod.get("spec") or {}).get("nodeName"):
                model.pod_nodes[ip] = pod["spec"]["nodeName"]
    for node in nodes or []:
        name = (node.get("metadata") or {}).get("name")
        addrs = [
            a.get("address")
            for a in (node.get("status") or {}).get("addresses") or []
            if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
        ]
        if name:
            model.node_ips[name] = addrs
    return model
