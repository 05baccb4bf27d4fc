"""Kubernetes API objects (raw JSON items) turned into what kube-proxy works from: service ports and endpoints.

Follows kube-proxy's reading of the objects (docs/reference/kube-proxy-layout.md §2.3): an endpoint with `ready` unset is ready;
`serving` unset is serving (endpointslicecache.go: `Serving == nil || *Serving`), and only an endpoint's first
address is used (kube-proxy reads `Addresses[0]`); an EndpointSlice belongs to a Service by label `kubernetes.io/service-name`,
and its port is matched to the Service port by name (and protocol).
"""

from __future__ import annotations

import socket
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
    # objects that were skipped because they are not shaped like the API's (a hand-edited bundle, a bad paste)
    warnings: list[str] = field(default_factory=list)

    def services(self) -> dict[str, list[ServicePort]]:
        out: dict[str, list[ServicePort]] = {}
        for sp in self.service_ports:
            out.setdefault(sp.service_key, []).append(sp)
        return out


class _Malformed(ValueError):
    pass


def sloppy_ipv4(text: str) -> str | None:
    """An IPv4 address written with leading zeros ("172.30.0.041"), read as kube-proxy reads it
    (k8s.io/utils/net ParseIPSloppy: each part decimal, Go 1.16's net.ParseIP), in canonical form; None otherwise.
    The API server accepted such addresses before it validated strictly, so old objects can hold them."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and int(p) <= 255 for p in parts):
        return None
    return ".".join(str(int(p)) for p in parts)


def _ips(values, what: str) -> list[str]:
    """Only real IP addresses (as kube-proxy reads them, canonical): a bad one would otherwise travel into rule
    comparisons and hashes."""
    if values is None:
        return []
    if not isinstance(values, list):
        raise _Malformed(f"{what} is not a list")
    out = []
    for v in values:
        # inet_pton: the C parser, 20x faster than ipaddress over a big cluster's 40,000 endpoint addresses
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in v else socket.AF_INET, v)
            out.append(v)
        except (OSError, TypeError):
            sloppy = sloppy_ipv4(v)
            if sloppy is None:
                raise _Malformed(f"{what} holds {v!r}, not an IP address") from None
            out.append(sloppy)
    return out


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} is {value!r}, not a string")
    return value


def _port(value, what: str, required: bool = True) -> int | None:
    if value in (None, 0) and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _Malformed(f"{what} is {value!r}, not a port number")
    return value


def _service_ports(svc: dict) -> list[ServicePort]:
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    status = svc.get("status") or {}
    svc_type = spec.get("type") or "ClusterIP"
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    cluster_ips = _ips([ip for ip in cluster_ips if ip and ip != "None"], "spec.clusterIPs")
    lb_ips = _ips([
        ing["ip"]
        for ing in (status.get("loadBalancer") or {}).get("ingress") or []
        if ing.get("ip") and ing.get("ipMode", "VIP") == "VIP"
    ], "status.loadBalancer.ingress")
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
                port=_port(p.get("port"), "ports[].port"),
                node_port=_port(p.get("nodePort"), "ports[].nodePort", required=False),
                target_port=p.get("targetPort"),
                type=svc_type,
                cluster_ips=list(cluster_ips),
                external_ips=_ips(spec.get("externalIPs"), "spec.externalIPs"),
                load_balancer_ips=lb_ips if svc_type == "LoadBalancer" else [],
                # kept as written: kube-proxy 1.28 prints them trimmed, 1.30+ parsed (model/expected.py decides)
                load_balancer_source_ranges=[_text(r, "spec.loadBalancerSourceRanges[]").strip()
                                             for r in spec.get("loadBalancerSourceRanges") or []],
                external_traffic_policy=etp,
                internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
                session_affinity=affinity,
                session_affinity_timeout=timeout,
                health_check_node_port=_port(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort",
                                             required=False),
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
    port = _port(port, "ports[].port")
    out = []
    for ep in eps.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        ready = True if ready is None else bool(ready)
        serving = cond.get("serving")
        serving = True if serving is None else bool(serving)
        ref = ep.get("targetRef") or {}
        pod = f"{ref.get('namespace')}/{ref.get('name')}" if ref.get("kind") == "Pod" and ref.get("name") else None
        for addr in _ips(ep.get("addresses"), "endpoints[].addresses")[:1]:
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


def _name(obj) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        return f"{meta.get('namespace') or '-'}/{meta.get('name') or '?'}"
    return "?"


def build_cluster_model(
    services: list[dict] | None,
    endpointslices: list[dict] | None = None,
    pods: list[dict] | None = None,
    nodes: list[dict] | None = None,
) -> ClusterModel:
    """The model of the API objects. An object not shaped like the API's is skipped and named in ``warnings``
    rather than failing the whole run: one bad item in a customer's bundle should not hide the rest."""
    model = ClusterModel()

    def skipped(kind: str, obj, err: Exception) -> None:
        why = err if isinstance(err, _Malformed) else f"{type(err).__name__}: {err}"
        model.warnings.append(f"{kind} {_name(obj)} is malformed and was skipped ({why})")

    slices_by_service: dict[tuple[str, str], list[dict]] = {}
    for es in endpointslices or []:
        try:
            meta = es.get("metadata") or {}
            svc_name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
            if svc_name and es.get("addressType", "IPv4") in ("IPv4", "IPv6"):
                slices_by_service.setdefault((meta.get("namespace") or "default", svc_name), []).append(es)
        except (AttributeError, TypeError, ValueError) as e:
            skipped("EndpointSlice", es, e)
    for svc in services or []:
        try:
            ports = _service_ports(svc)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            skipped("Service", svc, e)
            continue
        for sp in ports:
            seen = set()
            for es in slices_by_service.get((sp.namespace, sp.name), []):
                try:
                    endpoints = _slice_endpoints(es, sp.port_name, sp.protocol)
                except (AttributeError, TypeError, ValueError, KeyError) as e:
                    skipped("EndpointSlice", es, e)
                    continue
                for ep in endpoints:
                    if ep.address not in seen:  # kube-proxy dedups endpoints across slices
                        seen.add(ep.address)
                        sp.endpoints.append(ep)
            # kube-proxy sorts endpoints by their "ip:port" string (endpointslicecache.go byEndpoint)
            sp.endpoints.sort(key=lambda e: e.address)
            model.service_ports.append(sp)
    for pod in pods or []:
        try:
            _add_pod(model, pod)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            skipped("Pod", pod, e)
    for node in nodes or []:
        try:
            name = (node.get("metadata") or {}).get("name")
            addrs = _ips([
                a.get("address")
                for a in (node.get("status") or {}).get("addresses") or []
                if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
            ], "status.addresses")
            if name:
                model.node_ips[str(name)] = addrs
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            skipped("Node", node, e)
    return model


def _add_pod(model: ClusterModel, pod: dict) -> None:
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return  # a host-network pod has the node's IP: that IP says nothing about which pod it is
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    ips = _ips([p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or (
        [status["podIP"]] if status.get("podIP") else []), "status.podIPs")
    for ip in ips:
        model.pods_by_ip[ip] = key
        if spec.get("nodeName"):
            model.pod_nodes[ip] = str(spec["nodeName"])
