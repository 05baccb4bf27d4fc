"""A network namespace that plays a node for conntrack tests: kube-proxy's rules loaded, its endpoints answering on
`lo`, and real connections to its services, so that `conntrack -L` and /proc/net/nf_conntrack there print what a
node's would. The connections are made by tests/conntrack_traffic.py inside the namespace.

    with TrafficNode() as node:
        node.load_nft(nft_rules.ruleset(NFT_SERVICES))   # nftables mode (tests/nft_rules.py)
        served = node.traffic(connect={"172.30.0.41:80/tcp": 5})
        text = node.conntrack("-L", "-o", "extended,id")

Run as a script it writes tests/fixtures/conntrack/nft-node.json, the captures the tests that need no root read
(the nft node's table, what the sampler's script printed at two samples and what each endpoint served in between,
and one moment's listing in every format conntrack has):

    PYTHONPATH=$PWD python tests/conntrack_node.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from netns import Namespace
from nft_rules import NODE_IP, Svc, ruleset
from svcdoctor.collect.conntrack_reads import ConntrackQuery, conntrack_argv
from svcdoctor.collect.sampler import NodeReading
from svcdoctor.collect.snapshot import ApiObjects, NodeCapture

HERE = Path(__file__).resolve().parent
TRAFFIC = HERE / "conntrack_traffic.py"
FIXTURE = HERE / "fixtures" / "conntrack" / "nft-node.json"

# the nftables-mode node of the fixture: a TCP service with a node port and two endpoints, a UDP one with one
NFT_NODE = "nft-node"
WEB = Svc("default", "web", "172.30.0.41", 80, endpoints=["10.180.0.1", "10.180.0.2"], node_port=30080,
          port_name="http")
DNS = Svc("kube-system", "dns", "172.30.0.10", 53, endpoints=["10.180.0.3"], port_name="dns", protocol="udp")
NFT_SERVICES = [WEB, DNS]
# what the sampler asks the nft node for `watch default/web`: its port (cluster IP) and its node port
WEB_QUERIES = [ConntrackQuery("IPv4", "tcp", 80), ConntrackQuery("IPv4", "tcp", 30080)]
# an IPv6 DNAT of the namespace's own (kube-proxy's nft fixture tables are IPv4), for IPv6 lines in every format
IPV6_SERVICE, IPV6_ENDPOINT = "fd00:96::50", "fd00:180::1"
IPV6_DNAT = f"""table ip6 svcdoctor-test {{
  chain output {{
    type nat hook output priority -100;
    ip6 daddr {IPV6_SERVICE} tcp dport 80 dnat to [{IPV6_ENDPOINT}]:80
  }}
}}
"""

# run the sampler's argv without the right to read conntrack: root without CAP_NET_ADMIN, and nobody
WITHOUT_NET_ADMIN = ("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin")
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def api_objects(services: list[Svc], node: str = NFT_NODE) -> ApiObjects:
    """The Services and EndpointSlices kube-proxy's rules for `services` were written from, with a pod named
    `NAME-1`, `NAME-2`, … behind each endpoint, on `node`."""
    objects = ApiObjects(services=[], endpointslices=[], status="ok")
    for svc in services:
        port = {"name": svc.port_name, "port": svc.port, "protocol": svc.protocol.upper()}
        spec = {"type": "NodePort" if svc.node_port else "ClusterIP", "clusterIP": svc.cluster_ip,
                "ports": [{**port, "targetPort": svc.port, **({"nodePort": svc.node_port} if svc.node_port else {})}]}
        objects.services.append({"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"namespace": svc.namespace, "name": svc.name}, "spec": spec})
        objects.endpointslices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": svc.namespace, "name": f"{svc.name}-1",
                         "labels": {"kubernetes.io/service-name": svc.name}},
            "ports": [port],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node,
                           "targetRef": {"kind": "Pod", "namespace": svc.namespace, "name": f"{svc.name}-{i}"}}
                          for i, ip in enumerate(svc.endpoints, 1)]})
    return objects


def nft_capture(nft_json: str, node: str = NFT_NODE, node_ip: str = NODE_IP) -> NodeCapture:
    """The first read of a node in nftables mode: its kube-proxy table, and no kube-proxy chain in iptables."""
    return NodeCapture(name=node, iptables_save="", internal_ip=node_ip, backend="nft", proxy_mode="nftables",
                       nftables_json=nft_json, read_via="docker exec")


class TrafficNode(Namespace):
    """A namespace with `lo` up, a veth with the node's addresses and default routes (so that service IPs route
    somewhere before DNAT), and the given endpoint addresses on `lo`."""

    def __init__(self, node_ip: str = NODE_IP, node_ip6: str | None = "fd00:18::2",
                 endpoints: tuple[str, ...] = ("10.180.0.1", "10.180.0.2", "10.180.0.3", IPV6_ENDPOINT)):
        super().__init__()
        self.node_ip, self.node_ip6, self.endpoints = node_ip, node_ip6, endpoints

    def __enter__(self) -> TrafficNode:
        super().__enter__()
        try:
            self._wire()
        except BaseException:
            self.close()
            raise
        return self

    def _wire(self) -> None:
        run = self.run
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        run("ip", "link", "set", "veth0", "up")
        run("ip", "link", "set", "veth1", "up")
        run("ip", "addr", "add", f"{self.node_ip}/24", "dev", "veth0")
        gateway = self.node_ip.rsplit(".", 1)[0] + ".254"
        run("ip", "route", "add", "default", "via", gateway, "dev", "veth0")
        if self.node_ip6:
            run("ip", "-6", "addr", "add", f"{self.node_ip6}/64", "dev", "veth0", "nodad")
            run("ip", "-6", "route", "add", "default", "dev", "veth0")
        for ip in self.endpoints:
            if ":" in ip:
                run("ip", "-6", "addr", "add", f"{ip}/128", "dev", "lo", "nodad")
            else:
                run("ip", "addr", "add", f"{ip}/32", "dev", "lo")

    def load_nft(self, text: str) -> None:
        self.run("nft", "-f", "-", input=text)

    def traffic(self, serve: list[str] | None = None, connect: dict[str, int] | None = None,
                ping: list[str] = ()) -> Counter:
        """Connections made in the namespace; endpoint "ip:port/proto" -> connections it answered. By default every
        endpoint address answers on the ports the connections go to after DNAT (80 and 53)."""
        if serve is None:
            serve = [f"{'[' + ip + ']' if ':' in ip else ip}:{port}/{proto}" for ip in self.endpoints
                     for port, proto in ((80, "tcp"), (53, "udp"))]
        argv = [sys.executable, str(TRAFFIC)]
        for spec in serve:
            argv += ["--serve", spec]
        for spec, n in (connect or {}).items():
            argv += ["--connect", f"{spec}={n}"]
        for host in ping:
            argv += ["--ping", host]
        return Counter(json.loads(self.run(*argv).stdout)["served"])

    def conntrack(self, *args: str) -> str:
        """What `conntrack ARGS` prints (stdout; its summary line goes to stderr)."""
        return self.run("conntrack", *args).stdout

    def proc(self) -> str:
        return self.run("cat", "/proc/net/nf_conntrack").stdout

    def exec_argv(self, argv: list[str], *wrapper: str) -> subprocess.CompletedProcess:
        """An argv as the sampler would exec it on a node (optionally under a wrapper such as capsh)."""
        return subprocess.run(["ip", "netns", "exec", self.name, *wrapper, *argv], capture_output=True, text=True,
                              timeout=60)


class NamespaceConntrackSampler:
    """The sampler's `read_conntrack` with the namespace for a node: the same argv, run there."""

    def __init__(self, node: TrafficNode, *wrapper: str):
        self.node, self.wrapper = node, wrapper

    def read_conntrack(self, wanted: dict[str, list[ConntrackQuery]]) -> dict[str, NodeReading]:
        out = {}
        for name, queries in wanted.items():
            proc = self.node.exec_argv(conntrack_argv(queries), *self.wrapper)
            out[name] = NodeReading(name, proc.stdout, None if proc.returncode == 0 else proc.stderr,
                                    read_at=time.monotonic())
        return out


def endpoint_counts(served: Counter, proto: str = "tcp") -> dict[str, int]:
    """"10.180.0.1:80/tcp" -> 3 as "10.180.0.1:80" -> 3 (the endpoints of one protocol)."""
    return {spec.rsplit("/", 1)[0]: n for spec, n in served.items() if spec.endswith("/" + proto) and n}


def capture_nft_node() -> dict:
    """The fixture: the nft node's table, two samples of `watch default/web` with connections between them, and
    one moment's listing in every format (IPv4 and IPv6, TCP, UDP and ICMP, answered and not)."""
    out: dict = {"generatedBy": "tests/conntrack_node.py", "node": NFT_NODE, "nodeIP": NODE_IP,
                 "conntrackVersion": subprocess.run(["conntrack", "--version"], capture_output=True,
                                                    text=True).stdout.strip(),
                 "queries": [q.arg for q in WEB_QUERIES], "samples": []}
    with TrafficNode() as node:
        node.load_nft(ruleset(NFT_SERVICES))
        node.load_nft(IPV6_DNAT)
        out["nftJson"] = node.run("nft", "-j", "list", "table", "ip", "kube-proxy").stdout
        before = node.traffic(connect={"172.30.0.41:80/tcp": 4, f"{NODE_IP}:30080/tcp": 2, "172.30.0.10:53/udp": 2})
        for connect in ({"172.30.0.41:80/tcp": 9, f"{NODE_IP}:30080/tcp": 5}, None):
            reading = node.exec_argv(conntrack_argv(WEB_QUERIES))
            assert reading.returncode == 0, reading.stderr
            out["samples"].append({"reading": reading.stdout, "servedSincePreviousSample": dict(before)})
            if connect:
                before = node.traffic(connect=connect)
        # one moment in every format: an IPv6 connection, a ping, and two that nothing answers (a UDP datagram and
        # a TCP SYN to an address of the veth's network where nobody is)
        node.traffic(connect={f"[{IPV6_SERVICE}]:80/tcp": 2}, ping=["10.180.0.1"])
        nobody = node.node_ip.rsplit(".", 1)[0] + ".77"
        node.run(sys.executable, "-c", "import socket; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 f"u.sendto(b'x', ('{nobody}', 8080)); t = socket.socket(); t.setblocking(False); "
                 f"t.connect_ex(('{nobody}', 8080))")
        out["listings"] = {
            "conntrack -L": node.conntrack("-L"),
            "conntrack -L -o id": node.conntrack("-L", "-o", "id"),
            "conntrack -L -o extended,id": node.conntrack("-L", "-o", "extended,id"),
            "conntrack -L -f ipv6 -o extended,id": node.conntrack("-L", "-f", "ipv6", "-o", "extended,id"),
            "/proc/net/nf_conntrack": node.proc(),
        }
        # the same script without the right to read conntrack: as root without CAP_NET_ADMIN, and as nobody
        out["denied"] = {
            "no CAP_NET_ADMIN": node.exec_argv(conntrack_argv(WEB_QUERIES), *WITHOUT_NET_ADMIN).stdout,
            "nobody": node.exec_argv(conntrack_argv(WEB_QUERIES), *AS_NOBODY).stdout,
        }
    return out


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(capture_nft_node(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
