"""The services a dump holds, one summary each: what `svcdoctor services` lists, and what a user's address or node
port is looked up in (`explain 10.200.1.73`, `explain :32624`).

Read from each node's entry rules (KUBE-SERVICES, KUBE-NODEPORTS; docs/reference/kube-proxy-layout.md) in one pass,
so a node of 10,000 services is indexed once, not once per service; the API objects, when read, add the type and the
ports of services that have no rule anywhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from svcdoctor.model.cluster import ClusterModel
from svcdoctor.model.hashes import chain_kind
from svcdoctor.model.rule_text import host_port, split_host_port
from svcdoctor.model.rules import NodeRules, Rule
from svcdoctor.model.service_rules import index_node_services, service_port_of_comment, split_service_port_name


@dataclass(slots=True)
class EntryPoint:
    """One destination of a service port: the address a client uses."""

    kind: str  # clusterIP | nodePort | externalIP | loadBalancer
    host: str | None  # None for a node port (any node address)
    port: int | None
    port_name: str  # the service port's name ("" when unnamed)
    protocol: str

    @property
    def destination(self) -> str:
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}" if self.port is not None else host


@dataclass(slots=True)
class ServiceSummary:
    namespace: str
    name: str
    type: str | None = None  # from the API
    ports: dict[tuple[str, str], dict] = field(default_factory=dict)  # (port name, protocol) -> port, nodePort
    entries: list[EntryPoint] = field(default_factory=list)
    endpoints: set[str] = field(default_factory=set)  # "ip:port" the rules DNAT to, on any node
    nodes: set[str] = field(default_factory=set)  # nodes with rules for it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def list_services(node_rules: dict[str, NodeRules], cluster: ClusterModel | None,
                  more_rules: dict[str, NodeRules] | None = None,
                  nft: dict[str, list] | None = None) -> list[ServiceSummary]:
    """Every service the rules (and the API, when read) hold, sorted by namespace and name. ``nft``: the kube-proxy
    tables of nodes in nftables mode (model/nft), read through their explain walk."""
    services: dict[str, ServiceSummary] = {}

    def summary(key: str) -> ServiceSummary:
        if key not in services:
            ns, _, name = key.partition("/")
            services[key] = ServiceSummary(ns, name)
        return services[key]

    for sp in cluster.service_ports if cluster else []:
        s = summary(sp.service_key)
        s.type = sp.type
        s.ports[(sp.port_name, sp.protocol.upper())] = {"port": sp.port, "nodePort": sp.node_port}
    for rules_by_node in (node_rules, more_rules or {}):
        for node, rules in rules_by_node.items():
            _add_node(node, rules, summary)
    for node, tables in (nft or {}).items():
        for rs in tables:
            _add_nft_node(node, rs, summary)
    return sorted(services.values(), key=lambda s: (s.namespace, s.name))


def _add_node(node: str, rules: NodeRules, summary) -> None:
    nat = rules.table("nat")
    for key, port_rules in index_node_services(rules).by_name.items():
        s = summary(key)
        s.nodes.add(node)
        for spr in port_rules:
            _, _, port_name = split_service_port_name(spr.svc_port_name or "")
            protocol = (spr.protocol or "tcp").upper()
            port = s.ports.setdefault((port_name, protocol), {"port": None, "nodePort": None})
            for rule in spr.nat_entries:
                entry = _entry_point(rule, port_name, protocol)
                if entry.kind == "nodePort":
                    port["nodePort"] = port["nodePort"] or entry.port
                elif entry.kind == "clusterIP":
                    port["port"] = port["port"] or entry.port
                if entry not in s.entries:
                    s.entries.append(entry)
                if nat is not None:
                    s.endpoints.update(_endpoints_behind(nat, rule.target or ""))


def _add_nft_node(node: str, rs, summary) -> None:
    """A node in nftables mode: each service port its table names, with the entries and endpoints explain finds."""
    from svcdoctor.model.nft.explain import explain_nft_entries
    from svcdoctor.model.nft.view import service_ports

    for base, hashed in service_ports(rs).items():
        s = summary(hashed.service_key)
        s.nodes.add(node)
        protocol = hashed.protocol.upper()
        port = s.ports.setdefault((hashed.port_name, protocol), {"port": None, "nodePort": None})
        for e in explain_nft_entries(rs, base, node):
            host, number = split_host_port(e.destination)  # ":30080" for a node port
            entry = EntryPoint(e.kind, host or None, int(number) if number.isdigit() else None,
                               hashed.port_name, protocol)
            key = "nodePort" if e.kind == "nodePort" else "port" if e.kind == "clusterIP" else None
            if key:
                port[key] = port[key] or entry.port
            if entry not in s.entries:
                s.entries.append(entry)
            s.endpoints.update(host_port(ep.ip, ep.port) if ep.port is not None else ep.ip for ep in e.endpoints)


def _entry_point(rule: Rule, port_name: str, protocol: str) -> EntryPoint:
    _, what = service_port_of_comment(rule.comment)
    dport = rule.value("--dport")
    port = int(dport) if dport and dport.isdigit() else None
    host = (rule.value("-d") or "").split("/")[0] or None
    if rule.chain == "KUBE-NODEPORTS":
        return EntryPoint("nodePort", None, port, port_name, protocol)
    kind = what if what in ("clusterIP", "externalIP", "loadBalancer") else (
        "clusterIP" if chain_kind(rule.target or "") in ("svc", "svl") else "externalIP")
    return EntryPoint(kind, host, port, port_name, protocol)


def _endpoints_behind(nat, chain_name: str, depth: int = 0) -> set[str]:
    """The DNAT destinations reached from an entry's chain (KUBE-EXT → KUBE-SVC/SVL → KUBE-SEP)."""
    chain = nat.chain(chain_name)
    if chain is None or depth > 4:
        return set()
    found = set()
    for rule in chain.rules:
        if rule.dnat_destination:
            found.add(rule.dnat_destination)
        elif rule.target and rule.target.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-")):
            found |= _endpoints_behind(nat, rule.target, depth + 1)
    return found


# --- what a user holds: an address, a node port ------------------------------------------------------------------
def find_by_address(services: list[ServiceSummary], host: str | None, port: int | None
                    ) -> list[tuple[ServiceSummary, EntryPoint]]:
    """The service ports a client reaches at host[:port]; host None means a node port (`:32624`)."""
    wanted = _normal(host) if host else None
    found = []
    for s in services:
        for e in s.entries:
            if host is None:
                hit = e.kind == "nodePort" and e.port == port
            else:
                hit = e.host is not None and _normal(e.host) == wanted and (port is None or e.port == port)
            if hit:
                found.append((s, e))
    return found


def _normal(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host
