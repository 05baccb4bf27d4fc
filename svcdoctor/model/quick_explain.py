"""`explain`'s answer for the commonest shape of a service port, read from the rule text without parsing a rule:
a cluster IP entry in KUBE-SERVICES, its KUBE-SVC chain (the masquerade rule for clients outside the pod network,
then one jump per endpoint with the probability kube-proxy writes) and each KUBE-SEP chain (the hairpin masquerade
rule, then the DNAT), as iptables-save prints them. Most services of a big cluster look like that, and `report`
shows each of them (issue #12): parsing their rules costs more than `check` does in all.

`quick_service_view` gives exactly what `model/explain.py: build_service_view` gives for such a service (the same
dataclasses, the same numbers, the same Rule objects as evidence; tests/test_report_speed.py compares the two on
every service of the demo, kube-proxy's test cases and the benchmark's cluster), and None for anything else: a
rule spelled another way, a node port, an external chain, affinity, a filter rule, a partial input, a port the
rules have and the API has not. The caller then asks `build_service_view`.
"""

from __future__ import annotations

from svcdoctor.model import rule_text
from svcdoctor.model.cluster import ClusterModel, ServicePort
from svcdoctor.model.explain import EndpointShare, Entry, NodeView, PortView, ServiceView
from svcdoctor.model.hashes import service_hash
from svcdoctor.model.rules import Chain, NodeRules, Rule, rule_from_line
from svcdoctor.model.service_rules import NodeServiceIndex, split_service_port_name

EPSILON = 1e-9  # as the walker's (model/explain.py)
# kube-proxy's plain spellings, matched whole: the patterns live with the one reader of rule text
_ENTRY, _SVC_MASQ, _JUMP, _SEP_MASQ, _DNAT = (rule_text.PLAIN_ENTRY, rule_text.PLAIN_SVC_MASQ, rule_text.PLAIN_JUMP,
                                             rule_text.PLAIN_SEP_MASQ, rule_text.PLAIN_DNAT)
_OTHER_CHAINS = ("KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")


class QuickNode:
    """One node's rules for `quick_service_view`: its index and whether its entry chains decide masquerading
    themselves (kube-proxy before 1.24, `_masquerade_ahead` in model/explain.py), which the quick way does not
    read."""

    __slots__ = ("name", "rules", "index", "usable")

    def __init__(self, name: str, rules: NodeRules, index: NodeServiceIndex):
        self.name, self.rules, self.index = name, rules, index
        nat = rules.table("nat")
        services = nat.chains.get("KUBE-SERVICES") if nat is not None else None
        self.usable = services is not None and not any(
            r.target == "KUBE-MARK-MASQ" for r in services.rules)


def quick_service_view(namespace: str, name: str, node: QuickNode, cluster: ClusterModel | None,
                       api_ports: list[ServicePort]) -> ServiceView | None:
    """build_service_view(namespace, name, {node: rules}, cluster with only `api_ports`, indexes={node: index}), when
    every port of the service has the common shape on the node; else None."""
    if not node.usable:
        return None
    index = node.index
    suffixes = [service_hash(sp.svc_port_name, sp.protocol) for sp in api_ports]
    ports: dict[str, PortView] = {}
    for sp, suffix in zip(api_ports, suffixes):
        ports[suffix] = PortView(sp.port_name, sp.protocol, sp.port, sp.node_port, sp.target_port, sp.svc_port_name,
                                 {"svc": None, "svl": None, "ext": None, "fw": None}, api=sp)
    for spr in list(index.ports_of_service(namespace, name)) + [index.by_suffix[s] for s in suffixes
                                                                if s in index.by_suffix]:
        if spr.suffix in ports or not spr.svc_port_name:
            continue
        if api_ports or cluster is not None or spr.suffix is None:
            return None  # a port the API does not have (build_service_view reads it from its rules' text)
        _, _, port_name = split_service_port_name(spr.svc_port_name)
        protocol = (spr.protocol or "tcp").upper()
        if service_hash(spr.svc_port_name, protocol) != spr.suffix or not spr.nat_entries:
            return None
        m = _ENTRY.fullmatch(spr.nat_entries[0].spec)
        if m is None:
            return None
        ports[spr.suffix] = PortView(port_name, protocol, int(m.group(4)), None, None, spr.svc_port_name,
                                     {"svc": None, "svl": None, "ext": None, "fw": None})
    nat = node.rules.table("nat")
    for suffix, pv in ports.items():
        spr = index.by_suffix.get(suffix)
        chains = {"svc": None, "svl": None, "ext": None, "fw": None}
        if any(prefix + suffix in nat.chains for prefix in _OTHER_CHAINS):
            return None
        if "KUBE-SVC-" + suffix in nat.chains:
            chains["svc"] = pv.chains["svc"] = "KUBE-SVC-" + suffix
        nv = NodeView(node.name, chains=chains)
        if spr is not None:
            if spr.filter_rules or spr.chains_without_entry:
                return None
            entries = []
            for rule in spr.nat_entries:
                entry = _entry(nat, rule, suffix, node.name, cluster, pv.api)
                if entry is None:
                    return None
                entries.append(entry)
            entries.sort(key=lambda e: e.destination)  # all cluster IP entries
            nv.entries = entries
        pv.nodes.append(nv)
    return ServiceView(namespace, name, list(ports.values()), list(api_ports))


def _entry(nat, rule: Rule, suffix: str, node: str, cluster: ClusterModel | None,
           api_port: ServicePort | None) -> Entry | None:
    """`explain_entries`' Entry for one cluster IP entry rule of the common shape, or None."""
    m = _ENTRY.fullmatch(rule.spec) if rule.chain == "KUBE-SERVICES" else None
    if m is None or m.group(5) != "KUBE-SVC-" + suffix:
        return None
    svc_name = m.group(5)
    svc = nat.chains.get(svc_name)
    if svc is None:
        return None
    masq, masq_when, endpoints = "never", [], []
    remaining = 1.0
    for position, spec, line in _specs(svc):
        if remaining <= EPSILON:
            break
        cond = _SVC_MASQ.fullmatch(spec)
        if cond is not None:
            if masq != "always":
                masq = "conditional"
                masq_when.append(f"{svc_name}: ! -s {cond.group(1)}")
            continue
        j = _JUMP.fullmatch(spec)
        if j is None:
            return None
        jump = _rule(svc, position, line)
        if jump.target != j.group(2):
            return None
        probability = None
        if j.group(1) is not None:
            try:
                probability = float(j.group(1))
            except ValueError:
                return None
        share = remaining * probability if probability is not None else remaining
        endpoint = _endpoint(nat, jump.target, share, masq, probability, jump)
        if endpoint is None:
            return None
        endpoints.append(endpoint)
        remaining -= share
    if not endpoints:
        return None
    entry = Entry(kind="clusterIP", destination=f"{m.group(1)}:{m.group(4)}", verdict="dnat",
                  path=["KUBE-SERVICES", svc_name], masquerade="never", packets=rule.packets, bytes=rule.bytes,
                  endpoints=endpoints, entry_rule=rule, masquerade_when=masq_when, notes=[],
                  session_affinity_seconds=None, unmatched_share=max(0.0, remaining), clients=[])
    masqs = {ep.masquerade for ep in endpoints}
    entry.masquerade = masqs.pop() if len(masqs) == 1 else "conditional"
    api_endpoints = {e.ip: e for e in api_port.endpoints} if api_port is not None else {}
    for ep in endpoints:
        if cluster is not None:
            known = api_endpoints.get(ep.ip)
            ep.pod = (known.pod if known else None) or cluster.pods_by_ip.get(ep.ip)
            ep.node = (known.node if known else None) or cluster.pod_nodes.get(ep.ip)
            ep.local = (ep.node == node) if (ep.node or known) else None
    return entry


def _endpoint(nat, sep: str, share: float, masq: str, probability: float | None, jump: Rule) -> EndpointShare | None:
    chain = nat.chains.get(sep)
    if chain is None:
        return None
    for position, spec, line in _specs(chain):
        if _SEP_MASQ.fullmatch(spec) is not None:
            continue
        d = _DNAT.fullmatch(spec)
        if d is None:
            return None
        ip, _, port = d.group(1).rpartition(":")
        return EndpointShare(ip=ip, port=int(port), chain=sep, probability=share, rule_probability=probability,
                             packets=jump.packets, bytes=jump.bytes, masquerade=masq, jump_rules=[jump],
                             dnat_rule=_rule(chain, position, line))
    return None


def _specs(chain: Chain):
    """(position, spec, the rule or its dump line) of each rule of a chain, without building a Rule for a chain
    nobody has asked for yet: most of what is read here is only matched, and a Rule is made for the evidence."""
    if chain._rules is not None:  # noqa: SLF001 - as port_shape.NodeProgram.lines reads them
        for rule in chain._rules:  # noqa: SLF001
            yield rule.position, rule.spec, rule
        return
    head = f"-A {chain.name} "
    for position, line in enumerate(chain._lines, 1):  # noqa: SLF001
        rest = rule_text.strip_counters(line)  # iptables-save -c: "[p:b] -A CHAIN spec"
        if rest.startswith(head) and " -c " not in rest:
            yield position, rest[len(head) :].strip(), line
        else:  # another spelling: as the parser reads it
            rule = rule_from_line(chain.table, chain.name, position, line)
            yield position, rule.spec, rule


def _rule(chain: Chain, position: int, line) -> Rule:
    return line if isinstance(line, Rule) else rule_from_line(chain.table, chain.name, position, line)
