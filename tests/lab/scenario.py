"""Lab scenarios: the API objects of a small kind cluster (the seed's `myk8s`) and the per-node faults to plant.

A scenario is what the Kubernetes API would say (Services, EndpointSlices, Pods, Nodes, kube-proxy's ConfigMap, as
the API server returns them), which mode each node's kube-proxy runs in, and what is wrong on which node. The
harness programs every node with the rules kube-proxy would write for these objects (iptables mode: 1.28,
`svcdoctor.model.expected`; nftables mode: 1.34–1.35, `svcdoctor.model.nft.expected`), starts one HTTP server per
pod, and plants the faults; the stand-in API server serves the same objects.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field

CLUSTER = "myk8s"
NETWORK_SUBNET = "172.18.0.0/16"
NETWORK_GATEWAY = "172.18.0.1"
CLIENT_NAME = "mypc"  # "outside the cluster", as in the seed
CLIENT_IP = "172.18.0.100"
CLUSTER_CIDR = "10.10.0.0/16"
SERVICE_CIDR = "10.200.1.0/24"
NAMESPACE = "default"

# Faults a scenario can plant on a node
LEGACY = "legacy"  # kube-proxy's rules written with iptables-legacy (Docker's DNS rules stay in nft)
STALE = "stale"  # rules from before a pod moved: one endpoint still has its old IP
NO_RULES = "no-rules"  # kube-proxy never wrote anything
STOPPED = "stopped"  # the node container is stopped after the lab is up
HUNG = "hung"  # iptables-nft-save never returns (a wedged binary or lock)
# an nftables-mode node whose kube-proxy chains from iptables mode were never cleaned up (they still hook nat)
LEFTOVERS = "iptables-leftovers"
FAULTS = (LEGACY, STALE, NO_RULES, STOPPED, HUNG, LEFTOVERS)

# kube-proxy's modes (the ConfigMap's `mode:`) the lab programs
IPTABLES = "iptables"
NFTABLES = "nftables"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    role: str
    ip: str
    index: int  # pod CIDR 10.10.<index>.0/24

    @property
    def pod_cidr(self) -> str:
        return f"10.10.{self.index}.0/24"

    @property
    def pod_gateway(self) -> str:
        # kindnet's ptp plugin puts the node side of every pod veth on .1 of the node's pod range
        return f"10.10.{self.index}.1"


NODES = (
    NodeSpec(f"{CLUSTER}-control-plane", "control-plane", "172.18.0.2", 1),
    NodeSpec(f"{CLUSTER}-worker", "worker", "172.18.0.3", 2),
    NodeSpec(f"{CLUSTER}-worker2", "worker", "172.18.0.4", 3),
    NodeSpec(f"{CLUSTER}-worker3", "worker", "172.18.0.5", 4),
)
NODE_BY_NAME = {n.name: n for n in NODES}
CONTROL_PLANE, WORKER, WORKER2, WORKER3 = (n.name for n in NODES)


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    node: str
    ip: str
    port: int  # the port its HTTP server listens on
    app: str  # label app=<app>
    namespace: str = NAMESPACE

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    cluster_ip: str
    port: int
    target_port: int
    app: str  # selector app=<app>
    port_name: str = "svc-webport"
    type: str = "ClusterIP"
    node_port: int | None = None
    external_traffic_policy: str | None = None
    session_affinity: str = "None"
    namespace: str = NAMESPACE
    labels: dict = field(default_factory=dict)


@dataclass(slots=True)
class Scenario:
    """API objects + proxy modes + faults. `faults` maps node name -> one of FAULTS; `proxy_modes` node name ->
    IPTABLES or NFTABLES (a node not named runs `configured_mode`, which the kube-proxy ConfigMap says)."""

    name: str
    pods: list[PodSpec]
    services: list[ServiceSpec]
    faults: dict[str, str] = field(default_factory=dict)
    stale_endpoints: dict[str, str] = field(default_factory=lambda: dict(STALE_ENDPOINTS))
    extra_objects: list[dict] = field(default_factory=list)
    configured_mode: str = IPTABLES
    proxy_modes: dict[str, str] = field(default_factory=dict)

    def mode_of(self, node: str) -> str:
        """The mode kube-proxy on `node` really runs in (what the lab programs there)."""
        return self.proxy_modes.get(node, self.configured_mode)

    def pods_on(self, node: str) -> list[PodSpec]:
        return [p for p in self.pods if p.node == node]

    def pod(self, name: str) -> PodSpec:
        return next(p for p in self.pods if p.name == name)

    def service(self, name: str) -> ServiceSpec:
        return next(s for s in self.services if s.name == name)

    def endpoints(self, service: ServiceSpec) -> list[PodSpec]:
        return [p for p in self.pods if p.app == service.app and p.namespace == service.namespace]

    def with_faults(self, **faults_by_node: str) -> Scenario:
        clone = copy.deepcopy(self)
        clone.faults.update(faults_by_node)
        return clone

    def with_modes(self, name: str, configured: str | None = None, **modes_by_node: str) -> Scenario:
        """The same objects with the ConfigMap's mode and/or some nodes' real modes changed."""
        clone = copy.deepcopy(self)
        clone.name = name
        clone.configured_mode = configured or clone.configured_mode
        clone.proxy_modes.update(modes_by_node)
        return clone

    # --- API objects -------------------------------------------------------------------------------------------
    def api_objects(self) -> list[dict]:
        """Every object as a GET of it returns it (kind and apiVersion included)."""
        objects: list[dict] = [_node(n) for n in NODES]
        objects += [_pod(p) for p in self.pods]
        objects += [_kubernetes_service(), _kubernetes_endpointslice()]
        for svc in self.services:
            objects.append(_service(svc))
            objects.append(_endpointslice(svc, self.endpoints(svc)))
        objects.append(_kube_proxy_configmap(self.configured_mode))
        objects += copy.deepcopy(self.extra_objects)
        return objects

    def objects_of(self, kind: str) -> list[dict]:
        return [o for o in self.api_objects() if o["kind"] == kind]


# Services that are broken on purpose carry this label, so `check -l '!svcdoctor-lab/fault'` sees a healthy cluster.
FAULT_LABEL = "svcdoctor-lab/fault"

# A pod that moved: this IP is what a stale node still DNATs to instead of the pod's current one.
STALE_ENDPOINTS = {"webpod-1": "10.10.2.99"}


def seed_scenario() -> Scenario:
    """The seed's cluster: svc-clusterip (9000->80, 3 pods), svc-nodeport (9000->8080, NodePort 32624, 3 pods),
    an externalTrafficPolicy Local NodePort service with no pod on worker3, and a sessionAffinity ClientIP service.
    The control plane runs the client pod net-pod, as in the seed note."""
    pods = [PodSpec("net-pod", CONTROL_PLANE, "10.10.1.2", 80, "net-pod")]
    for i, node in enumerate((WORKER, WORKER2, WORKER3), start=1):
        idx = NODE_BY_NAME[node].index
        pods.append(PodSpec(f"webpod-{i}", node, f"10.10.{idx}.2", 80, "webpod"))
        pods.append(PodSpec(f"deploy-echo-{i}", node, f"10.10.{idx}.3", 8080, "deploy-echo"))
    for i, node in enumerate((WORKER, WORKER2), start=1):  # none on worker3: its NodePort must DROP
        idx = NODE_BY_NAME[node].index
        pods.append(PodSpec(f"echo-local-{i}", node, f"10.10.{idx}.4", 8080, "echo-local"))
    services = [
        ServiceSpec("svc-clusterip", "10.200.1.10", 9000, 80, "webpod"),
        ServiceSpec("svc-nodeport", "10.200.1.20", 9000, 8080, "deploy-echo", type="NodePort", node_port=32624,
                    external_traffic_policy="Cluster"),
        ServiceSpec("svc-nodeport-local", "10.200.1.30", 9000, 8080, "echo-local", type="NodePort", node_port=32625,
                    external_traffic_policy="Local", labels={FAULT_LABEL: "etp-local-podless-nodes"}),
        ServiceSpec("svc-affinity", "10.200.1.40", 9000, 80, "webpod", session_affinity="ClientIP"),
        # selects no pod: kube-proxy REJECTs it on every node
        ServiceSpec("svc-no-endpoints", "10.200.1.50", 9000, 80, "nobody", labels={FAULT_LABEL: "no-endpoints"}),
    ]
    return Scenario("seed", pods, services)


def nft_scenario() -> Scenario:
    """The seed's cluster with kube-proxy in nftables mode on every node, as the ConfigMap says: the same Services
    (the ETP-Local one with no pod on worker3, the ClientIP-affinity one), Pods and faults to plant."""
    return seed_scenario().with_modes("nft", configured=NFTABLES)


def mixed_scenario() -> Scenario:
    """The nftables cluster with one node whose kube-proxy still runs in iptables mode (the ConfigMap says
    nftables): `proxy-mode-mismatch` on that node and no other."""
    return nft_scenario().with_modes("mixed", **{WORKER2: IPTABLES})


# --- object builders (shapes as the API server returns them) ----------------------------------------------------
_CREATED = "2024-09-28T10:00:00Z"


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "svcdoctor-lab/" + "/".join(parts)))


def _meta(kind: str, name: str, namespace: str | None, labels: dict | None = None) -> dict:
    meta = {"name": name, "uid": _uid(kind, namespace or "", name), "resourceVersion": "1000",
            "creationTimestamp": _CREATED}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def _node(node: NodeSpec) -> dict:
    labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if node.role == "control-plane":
        labels["node-role.kubernetes.io/control-plane"] = ""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": _meta("Node", node.name, None, labels),
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr], "providerID": f"kind://docker/{CLUSTER}/{node.name}"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {"kubeProxyVersion": "v1.28.0", "kubeletVersion": "v1.28.0", "osImage": "svcdoctor lab node"},
        },
    }


def _pod(pod: PodSpec) -> dict:
    node = NODE_BY_NAME[pod.node]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta("Pod", pod.name, pod.namespace, {"app": pod.app}),
        "spec": {"nodeName": pod.node, "containers": [
            {"name": pod.app, "image": "busybox-httpd (lab)", "ports": [{"containerPort": pod.port, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "hostIP": node.ip, "hostIPs": [{"ip": node.ip}], "podIP": pod.ip,
                   "podIPs": [{"ip": pod.ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _service(svc: ServiceSpec) -> dict:
    port = {"name": svc.port_name, "protocol": "TCP", "port": svc.port, "targetPort": svc.target_port}
    if svc.node_port:
        port["nodePort"] = svc.node_port
    spec = {
        "type": svc.type, "selector": {"app": svc.app}, "ports": [port],
        "clusterIP": svc.cluster_ip, "clusterIPs": [svc.cluster_ip],
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "sessionAffinity": svc.session_affinity, "internalTrafficPolicy": "Cluster",
    }
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    if svc.type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = svc.external_traffic_policy or "Cluster"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta("Service", svc.name, svc.namespace, svc.labels or None),
            "spec": spec, "status": {"loadBalancer": {}}}


def _endpointslice(svc: ServiceSpec, pods: list[PodSpec]) -> dict:
    name = f"{svc.name}-{_uid('EndpointSlice', svc.name)[:5]}"
    labels = {"kubernetes.io/service-name": svc.name,
              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    meta = _meta("EndpointSlice", name, svc.namespace, labels)
    meta["generateName"] = f"{svc.name}-"
    meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service", "name": svc.name,
                                "uid": _uid("Service", svc.namespace, svc.name), "controller": True}]
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta, "addressType": "IPv4",
        "endpoints": [
            {"addresses": [p.ip], "conditions": {"ready": True, "serving": True, "terminating": False},
             "nodeName": p.node,
             "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name, "uid": _uid("Pod", p.namespace, p.name)}}
            for p in pods
        ],
        "ports": [{"name": svc.port_name, "port": svc.target_port, "protocol": "TCP"}],
    }


def _kubernetes_service() -> dict:
    """default/kubernetes, as every cluster has it (its endpoint is the control plane's API port)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta("Service", "kubernetes", NAMESPACE, {"component": "apiserver", "provider": "kubernetes"}),
            "spec": {"type": "ClusterIP", "clusterIP": "10.200.1.1", "clusterIPs": ["10.200.1.1"],
                     "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                     "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {}}}


def _kubernetes_endpointslice() -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta("EndpointSlice", "kubernetes", NAMESPACE,
                              {"kubernetes.io/service-name": "kubernetes",
                               "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}),
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODES[0].ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}


def kube_proxy_config_text(mode: str = IPTABLES) -> str:
    """config.conf of kube-system/kube-proxy, shaped like kind's (kubeadm) KubeProxyConfiguration (kind's
    `networking.kubeProxyMode` sets `mode:`)."""
    return (
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
        "bindAddress: 0.0.0.0\n"
        f"clusterCIDR: {CLUSTER_CIDR}\n"
        "conntrack:\n  maxPerCore: 0\n"
        "iptables:\n  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 1s\n  syncPeriod: 0s\n"
        "kind: KubeProxyConfiguration\n"
        f"mode: {mode}\n"
        "nodePortAddresses: null\n"
    )


def _kube_proxy_configmap(mode: str = IPTABLES) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta("ConfigMap", "kube-proxy", "kube-system", {"app": "kube-proxy"}),
            "data": {"config.conf": kube_proxy_config_text(mode),
                     "kubeconfig.conf": "apiVersion: v1\nkind: Config\n# (lab: not used)\n"}}


def filler_services(count: int) -> list[dict]:
    """Selector-less Services without endpoints in namespace `filler` (to make list calls span many pages)."""
    out = []
    for i in range(count):
        ip = f"10.200.1.{100 + i}"
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta("Service", f"filler-{i:03d}", "filler"),
                    "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                             "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}],
                             "sessionAffinity": "None", "internalTrafficPolicy": "Cluster"},
                    "status": {"loadBalancer": {}}})
    return out


def kube_proxy_pods(skip: tuple[str, ...] = (), phases: dict[str, str] | None = None,
                    cilium_on: tuple[str, ...] = ()) -> list[dict]:
    """kube-proxy's DaemonSet pods in kube-system (k8s-app=kube-proxy, hostNetwork), one per node but those in
    `skip`; `phases` sets a node's pod phase (e.g. Pending); `cilium_on` puts a Cilium agent pod on those nodes
    (a node whose kube-proxy Cilium replaced: list it in `skip` too)."""
    out = []
    for node in NODES:
        if node.name in skip:
            continue
        name = f"kube-proxy-{_uid('kube-proxy', node.name)[:5]}"
        phase = (phases or {}).get(node.name, "Running")
        pod = _system_pod(name, node, {"k8s-app": "kube-proxy"}, "kube-proxy", "registry.k8s.io/kube-proxy:v1.28.0")
        pod["status"]["phase"] = phase
        out.append(pod)
    for node in NODES:
        if node.name in cilium_on:
            out.append(_system_pod(f"cilium-{_uid('cilium', node.name)[:5]}", node, {"k8s-app": "cilium"},
                                   "cilium-agent", "quay.io/cilium/cilium:v1.15.0"))
    return out


def _system_pod(name: str, node: NodeSpec, labels: dict, container: str, image: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta("Pod", name, "kube-system", labels),
        "spec": {"nodeName": node.name, "hostNetwork": True,
                 "containers": [{"name": container, "image": image,
                                 "securityContext": {"privileged": True}}]},
        "status": {"phase": "Running", "hostIP": node.ip, "podIP": node.ip, "podIPs": [{"ip": node.ip}],
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": container, "ready": True, "state": {"running": {}}}]},
    }
