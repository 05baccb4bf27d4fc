"""nftables-mode nodes in `explain`'s view: each node's entries (nft/explain.py) added to the ServiceView the
iptables walk built, port by port, so the views and the JSON document show every node alike."""

from __future__ import annotations

from svcdoctor.model.cluster import ClusterModel
from svcdoctor.model.explain import NodeView, PortView, ServiceView
from svcdoctor.model.nft.explain import CHAIN_KEYS, dispatch_index, explain_nft_entries
from svcdoctor.model.nft.layout import describe, generation
from svcdoctor.model.nft.names import HashedName, parse_name, service_base
from svcdoctor.model.nft.ruleset import NftRuleset

NO_ENDPOINT_MAPS = ("no-endpoint-services", "no-endpoint-nodeports")


def service_ports(rs: NftRuleset) -> dict[str, HashedName]:
    """Every service port the table names, by its base "ns/name/proto/port": from its hashed chains, and from the
    comments of the no-endpoint maps (a port without endpoints has no chain of its own). Worked out once per table."""
    cached = rs.cache.get("service_ports")
    if cached is None:
        cached = rs.cache["service_ports"] = _service_ports(rs)
    return cached


def ports_of_service(rs: NftRuleset, service_key: str) -> list[tuple[str, HashedName]]:
    """The (base, name) of each port of one service ("ns/name") the table names, from an index made once."""
    index = rs.cache.get("ports_by_service")
    if index is None:
        index = rs.cache["ports_by_service"] = {}
        for base, hashed in service_ports(rs).items():
            index.setdefault(hashed.service_key, []).append((base, hashed))
    return index.get(service_key, [])


def _port_chains(rs: NftRuleset) -> dict[str, dict[str, str]]:
    """port base -> {svc|svl|ext|fw: chain name}: each port's service, local, external and firewall chains, from an
    index made once per table."""
    index = rs.cache.get("port_chains")
    if index is None:
        index = rs.cache["port_chains"] = {}
        for name in rs.chains:
            hashed = parse_name(name)
            if hashed is not None and hashed.kind in CHAIN_KEYS:
                index.setdefault(hashed.port_base, {})[CHAIN_KEYS[hashed.kind]] = name
    return index


def _service_ports(rs: NftRuleset) -> dict[str, HashedName]:
    out: dict[str, HashedName] = {}
    for name in rs.chains:
        hashed = parse_name(name)
        if hashed is not None and hashed.kind in CHAIN_KEYS:
            out.setdefault(hashed.port_base, hashed)
    for map_name in NO_ENDPOINT_MAPS:
        nmap = rs.set(map_name)
        for element in nmap.elements if nmap is not None else ():
            if not element.comment or "/" not in element.comment:
                continue
            key = element.key if isinstance(element.key, tuple) else (element.key,)
            protocol = next((k for k in key if k in ("tcp", "udp", "sctp")), "tcp")
            svc, _, port_name = element.comment.partition(":")
            namespace, _, name = svc.partition("/")
            base = service_base(namespace, name, protocol, port_name)
            hashed = parse_name(f"service-AAAAAAAA-{base}")
            if hashed is not None:
                out.setdefault(base, hashed)
    return out


def nft_service_names(nft: dict[str, list[NftRuleset]]) -> set[str]:
    return {h.service_key for tables in nft.values() for rs in tables for h in service_ports(rs).values()}


def _port_numbers(rs: NftRuleset, base: str) -> tuple[int | None, int | None]:
    """The service port and node port, from the dispatch maps' keys."""
    port = node_port = None
    dispatch, _ = dispatch_index(rs)
    for map_name, element, hashed in dispatch.get(base, ()):
        key = element.key if isinstance(element.key, tuple) else (element.key,)
        if map_name == "service-nodeports":
            node_port = node_port or key[-1]
        elif hashed.kind in ("service", "local"):
            port = port or key[-1]
    return port, node_port


def add_nft_nodes(view: ServiceView, nft: dict[str, list[NftRuleset]], cluster: ClusterModel | None,
                  port_filter: str | None = None) -> ServiceView:
    ports = {(p.svc_port_name, p.protocol.upper()): p for p in view.ports}
    key = f"{view.namespace}/{view.name}"
    for node, tables in nft.items():
        for rs in tables:
            for base, hashed in ports_of_service(rs, key):
                pv = ports.get((hashed.svc_port_name, hashed.protocol.upper()))
                if pv is None:
                    port, node_port = _port_numbers(rs, base)
                    pv = PortView(name=hashed.port_name, protocol=hashed.protocol.upper(), port=port,
                                  node_port=node_port, target_port=None, svc_port_name=hashed.svc_port_name,
                                  chains={"svc": None, "svl": None, "ext": None, "fw": None})
                    if port_filter and port_filter not in (pv.name, str(pv.port), str(pv.node_port)):
                        continue
                    view.ports.append(pv)
                    ports[(hashed.svc_port_name, hashed.protocol.upper())] = pv
                _add_node(pv, node, rs, base, cluster)
    return view


def _add_node(pv: PortView, node: str, rs: NftRuleset, base: str, cluster: ClusterModel | None) -> None:
    entries = explain_nft_entries(rs, base, node, cluster, pv.api)
    chains = {"svc": None, "svl": None, "ext": None, "fw": None, **_port_chains(rs).get(base, {})}
    nv = next((n for n in pv.nodes if n.node == node), None)
    if nv is None or (not nv.entries and not any(nv.chains.values())):
        fresh = NodeView(node=node, entries=[], chains=chains, families=set())
        pv.nodes = [fresh if n is nv else n for n in pv.nodes] if nv is not None else pv.nodes + [fresh]
        nv = fresh
    if entries and not any("nftables mode" in note for e in nv.entries for note in e.notes):
        entries[0].notes.insert(0, f"nftables mode, {rs.table}, layout {describe(generation(rs))}")
    nv.entries.extend(entries)
    nv.families.add(rs.address_family)
    for k, name in chains.items():
        nv.chains[k] = nv.chains.get(k) or name
        pv.chains[k] = pv.chains.get(k) or name
    if pv.node_port is None:
        pv.node_port = next((int(e.destination[1:]) for e in entries if e.kind == "nodePort"), None)
    if pv.port is None:
        pv.port = next((int(e.destination.rsplit(":", 1)[1]) for e in entries if e.kind == "clusterIP"), None)
