"""Nodes against each other, without the API objects: nothing says what kube-proxy should write, so each node's
rules are checked on their own (split, blackholes, chain names, left-over chains) and against the other nodes'
rules for the same service port (`node-drift`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from svcdoctor.checks.findings import Finding, finding
from svcdoctor.checks.port_findings import blackholes, check_split, comment_port, local_drops
from svcdoctor.model import rule_text
from svcdoctor.model.hashes import HASHED_PREFIXES, chain_kind, chain_suffix, endpoint_hash, service_hash
from svcdoctor.model.partial import is_partial
from svcdoctor.model.port_shape import BALANCER_PREFIX, Addresses, NodeProgram, PortShape, describe, evidence
from svcdoctor.model.proxy_settings import ProxySettings
from svcdoctor.model.rules import NodeRules
from svcdoctor.model.service_rules import service_port_of_comment


@dataclass(slots=True)
class NodeInput:
    """What the comparisons need to know about one readable node."""

    name: str
    rules: NodeRules
    settings: ProxySettings | None  # None without the API: nothing is planned
    settings_source: str


Signature = tuple[tuple, list[str]]  # (what must agree between nodes, evidence)


class _NodeReading:
    """What compare_nodes gathers over the nodes: names, the rejecting nodes and each node's view per port."""

    def __init__(self) -> None:
        self.signatures: dict[str, dict[str, Signature]] = {}  # suffix -> node -> signature
        self.names: dict[str, str] = {}  # suffix -> "ns/name[:port]"
        self.rejecting: dict[str, list[tuple[str, str]]] = {}  # suffix -> [(node, REJECT line)]
        self.hash_memo: dict[tuple[str, str, str], str] = {}


def compare_nodes(
    nodes: list[NodeInput],
    wanted: Callable[[str], bool] = lambda service: True,
    service: str | None = None,
) -> tuple[list[Finding], set[str]]:
    """No API objects: nothing to expect, so each node is checked on its own (split, blackholes, names, left-over
    chains) and against the others (`node-drift`). Returns the findings and the services seen ("ns/name").

    `service` ("ns/name", explain of one service) limits the work to the ports whose rules name it, and to their
    chains: the same findings `check` has for it, without reading the other services' rules."""
    out: list[Finding] = []
    reading = _NodeReading()
    for node in nodes:
        program = (NodeProgram(node.name, node.rules) if service is None else
                   NodeProgram(node.name, node.rules, frozenset(), frozenset([service])))
        if not program.has_rules:
            continue
        accounted: set[str] = set()
        suffixes = set(program.entries) | set(program.filters)
        for suffix in sorted(suffixes):
            out.extend(_check_port_on_node(program, suffix, wanted, reading, accounted))
        out.extend(_orphans_without_api(program, accounted, wanted, None if service is None else frozenset(suffixes)))
    read = [n.name for n in nodes if n.rules.has_kube_proxy_rules()]
    out.extend(_no_endpoints(reading, read))
    for suffix, per_node in sorted(reading.signatures.items()):
        out.extend(node_drift(reading.names[suffix], per_node, read))
    return out, {spn.split(":", 1)[0] for spn in reading.names.values()}


def _check_port_on_node(program: NodeProgram, suffix: str, wanted: Callable[[str], bool], reading: _NodeReading,
                        accounted: set[str]) -> list[Finding]:
    """One service port on one node: its chain names, its split, its drops; its view is kept for node-drift."""
    node = program.node
    entries = program.entries.get(suffix, [])
    spn, protocol = _name_of(entries + program.filters.get(suffix, []))
    if spn is None:
        return []  # no comment to name it: the orphan scan still sees its chains
    service = spn.split(":", 1)[0]
    if not wanted(service):
        accounted.update(prefix + suffix for prefix in BALANCER_PREFIX.values())
        return []
    out: list[Finding] = []
    reading.names[suffix] = spn
    real = service_hash(spn, protocol)
    if real != suffix:
        target = rule_text.target_name(entries[0][1]) if entries else suffix
        out.append(finding(
            "hash-mismatch", node, service,
            f"{spn}: {target} on {node} carries the port's comment but is not its hash (kube-proxy "
            f"would name it …-{real}): not written by kube-proxy, or renamed",
            [evidence("nat", entries[0][1])] if entries else []))
    shape = program.shape(suffix, Addresses())
    accounted.update(shape.seps)
    accounted.update(shape.balancer_chains.values())
    accounted.update(name for name in (shape.ext, shape.fw) if name)
    for role, jumps in shape.balancers.items():
        split = check_split(node, service, spn, shape.balancer_chains[role], jumps, shape.seps)
        if split is not None:
            out.append(split)
    out.extend(_endpoint_names(node, service, spn, protocol, shape, reading.hash_memo))
    rejects, drops = blackholes(shape)
    if rejects:
        seen = reading.rejecting.setdefault(suffix, [])
        if node not in (n for n, _ in seen):
            seen.append((node, rejects[0][1].line))
    out.extend(local_drops(node, service, spn, drops))
    reading.signatures.setdefault(suffix, {})[node] = _signature(shape)
    return out


def _endpoint_names(node: str, service: str, spn: str, protocol: str, shape: PortShape,
                    memo: dict[tuple[str, str, str], str]) -> list[Finding]:
    """hash-mismatch for endpoint chains whose name is not kube-proxy's hash of where they DNAT to."""
    out = []
    for sep, (dest, line) in shape.seps.items():
        if not dest:
            continue
        key = (spn, protocol, dest)
        if key not in memo:
            memo[key] = endpoint_hash(spn, protocol, dest)
        if memo[key] != chain_suffix(sep):
            out.append(finding(
                "hash-mismatch", node, service,
                f"{spn}: {sep} on {node} DNATs to {dest}, but kube-proxy would name that endpoint's "
                f"chain KUBE-SEP-{memo[key]}: not written by kube-proxy, or edited",
                [evidence("nat", line)]))
    return out


def _no_endpoints(reading: _NodeReading, read: list[str]) -> list[Finding]:
    """no-endpoints once per port: on every node (node None) or on the nodes that reject it."""
    out = []
    for suffix, lines in sorted(reading.rejecting.items()):
        spn = reading.names[suffix]
        nodes_with = [n for n, _ in lines]
        where = None if len(nodes_with) == len(read) else ", ".join(nodes_with)
        out.append(finding(
            "no-endpoints", where if where is None or len(nodes_with) > 1 else nodes_with[0], spn.split(":", 1)[0],
            f"{spn} has no endpoints: kube-proxy rejects its connections"
            + ("" if where is None else f" (on {where})"), [lines[0][1]]))
    return out


def _name_of(lines: Iterable[tuple[str, str]]) -> tuple[str | None, str]:
    for _, line in lines:
        spn, _ = service_port_of_comment(rule_text.comment(line))
        if spn:
            return spn, (rule_text.option(line, "-p") or "tcp").lower()
    return None, "tcp"


def _signature(shape: PortShape) -> Signature:
    """What must be the same on every node whatever the traffic policies: the destinations handled, and the
    cluster-wide endpoint list (KUBE-SVC). KUBE-SVL and 'no local endpoints' drops legitimately differ."""
    handled = set(shape.nat)
    handled |= {d for d, hop in shape.filter.items() if hop.target == "DROP" and d[0] != "firewall"}
    endpoints = frozenset(shape.seps[j.sep][0] for j in shape.balancers.get("svc", ()) if j.sep in shape.seps)
    rejects = frozenset(d for d, hop in shape.filter.items() if hop.target == "REJECT")
    proof = ([hop.line for hop in shape.nat.values()][:2]
             + [evidence("nat", j.line) for j in shape.balancers.get("svc", ())][:4])
    return (frozenset(handled), endpoints, rejects), proof


def node_drift(spn: str, per_node: dict[str, Signature], read: list[str]) -> list[Finding]:
    """node-drift for one service port: each node whose view differs from the majority's. With no majority
    (two nodes, two views) every view is compared with the next one, so both nodes are named."""
    service = spn.split(":", 1)[0]
    nothing = (frozenset(), frozenset(), frozenset())
    views = {n: per_node[n][0] if n in per_node else nothing for n in read}
    groups: dict[tuple, list[str]] = {}
    for node in sorted(views):
        groups.setdefault(views[node], []).append(node)
    if len(groups) <= 1:
        return []
    ranked = sorted(groups, key=lambda sig: (-len(groups[sig]), groups[sig]))
    tie = len(groups[ranked[0]]) == len(groups[ranked[1]])
    out = []
    for rank, sig in enumerate(ranked):
        if rank == 0 and not tie:
            continue
        reference = ranked[1] if rank == 0 else ranked[0]
        others = groups[reference]
        parts = _drift_parts(sig, reference, nothing)
        for node in groups[sig]:
            proof = [f"{node}: {e}" for e in per_node[node][1]] if node in per_node else [f"{node}: no rules"]
            proof += [f"{others[0]}: {e}" for e in per_node[others[0]][1]] if others[0] in per_node else []
            out.append(finding(
                "node-drift", node, service,
                f"{spn}: {node} disagrees with {', '.join(others)} ({'; '.join(parts) or 'rules differ'})",
                proof))
    return out


def _drift_parts(sig: tuple, reference: tuple, nothing: tuple) -> list[str]:
    if sig == nothing:
        return ["it has no rules for the port at all"]
    if reference == nothing:
        return ["the others have no rules for the port at all"]
    parts = []
    extra_eps, missing_eps = sorted(sig[1] - reference[1]), sorted(reference[1] - sig[1])
    extra_dests, missing_dests = sig[0] - reference[0], reference[0] - sig[0]
    if extra_eps:
        parts.append(f"endpoints only here: {', '.join(extra_eps)}")
    if missing_eps:
        parts.append(f"endpoints missing here: {', '.join(missing_eps)}")
    if missing_dests:
        parts.append(f"no rule here for {', '.join(describe(d) for d in sorted(missing_dests))}")
    if extra_dests:
        parts.append(f"only here: {', '.join(describe(d) for d in sorted(extra_dests))}")
    if sig[2] != reference[2]:
        parts.append("it rejects the port as having no endpoints" if sig[2]
                     else "the others reject the port as having no endpoints")
    return parts


def _orphans_without_api(program: NodeProgram, accounted: set[str], wanted: Callable[[str], bool],
                         only: frozenset[str] | None = None) -> list[Finding]:
    """Without the API, a chain is left over only when nothing jumps to it. With `only`, the chains of those
    service ports alone are looked at (their endpoint chains are found through them)."""
    referenced: set[str] = set()
    for entries in program.entries.values():
        referenced.update(rule_text.target_name(ln) for _, ln in entries)
    for name in list(referenced) + [n for n in accounted if chain_kind(n) in ("ext", "fw", "svc", "svl")]:
        for line in program.lines(name) or ():
            target = rule_text.target_name(line)
            if target and chain_kind(target) is not None:
                referenced.add(target)
    if is_partial(program.rules):
        return []  # a grep or a few chains: a chain nothing in the input jumps to may well be jumped to on the node
    candidates = (program.hashed_chains() if only is None else
                  [p + s for s in sorted(only) for p in HASHED_PREFIXES if p + s in program.chains])
    suspects = [name for name in candidates if name not in referenced and name not in accounted]
    if suspects:
        # a chain another chain jumps to is never left over (a left-over KUBE-EXT still jumps to its KUBE-SVC):
        # every hashed chain's rules are read, but only when there is a suspect at all
        suspected = set(suspects)
        for name in program.hashed_chains():
            for line in program.lines(name) or ():
                target = rule_text.target_name(line)
                if target in suspected:
                    referenced.add(target)
    out = []
    for name in suspects:
        if name in referenced:
            continue
        lines = program.lines(name) or []
        spn = comment_port([("", ln) for ln in lines])
        if spn and not wanted(spn.split(":", 1)[0]):
            continue
        out.append(finding(
            "orphan-chain", program.node, spn.split(":", 1)[0] if spn else None,
            f"{name} on {program.node} exists but no rule jumps to it (left over)"
            + (f"; its comment says {spn}" if spn else ""),
            [f"nat: :{name} ({len(lines)} rules)"] + [evidence("nat", ln) for ln in lines[:2]]))
    return out
