"""Findings one port's rules on one node show by themselves, whether or not the API objects are there: the split
of new connections (`uneven-split`) and the "no local endpoints" drops (`itp-local-no-local-endpoints`,
`etp-local-no-local-endpoints`). Both comparisons (`checks/compare_api.py`, `checks/drift.py`) report them
through these functions only, and so does `explain`, which runs those comparisons on one service.
"""

from __future__ import annotations

from collections.abc import Iterable

from svcdoctor.checks.findings import Finding, finding
from svcdoctor.model import rule_text
from svcdoctor.model.port_shape import Dest, Hop, Jump, PortShape, describe, evidence
from svcdoctor.model.service_rules import service_port_of_comment

# A share this far from 1/n is reported: the kernel keeps a probability as a 31-bit fraction, so what kube-proxy
# wrote comes back a little off (docs/reference/kube-proxy-layout.md §2.6), never by a whole percent.
UNEVEN_TOLERANCE = 0.01


def shares(jumps: list[Jump]) -> list[float]:
    """Each endpoint's share of new connections: rules are tried in order, `--probability p` takes p of what is
    left and the rule without one takes the rest (docs/reference/kube-proxy-layout.md §2.6)."""
    left, out = 1.0, []
    for jump in jumps:
        share = left * (jump.probability if jump.probability is not None else 1.0)
        out.append(share)
        left -= share
    return out


def check_split(node: str, service: str, spn: str, chain: str, jumps: list[Jump],
                seps: dict[str, tuple[str, str]]) -> Finding | None:
    """uneven-split when a balancing chain's written probabilities do not give each endpoint 1/n of the new
    connections, or leave some to match no endpoint rule at all (they fall through, not DNATed)."""
    if not jumps:
        return None
    split = shares(jumps)
    even = 1.0 / len(jumps)
    unmatched = 1.0 - sum(split)
    if max(abs(s - even) for s in split) <= UNEVEN_TOLERANCE and unmatched <= UNEVEN_TOLERANCE:
        return None
    described = ", ".join(f"{seps.get(j.sep, ('',))[0] or j.sep} {s:.1%}" for j, s in zip(jumps, split))
    lost = f", and {unmatched:.1%} match no endpoint rule (not DNATed)" if unmatched > UNEVEN_TOLERANCE else ""
    return finding(
        "uneven-split", node, service,
        f"{spn}: {chain} on {node} splits new connections {described}{lost}; kube-proxy would give "
        + (f"each of the {len(jumps)} endpoints {even:.1%}" if len(jumps) > 1 else "its one endpoint all of them"),
        [evidence("nat", j.line) for j in jumps])


def local_drops(node: str, service: str, spn: str, hops: list[tuple[Dest, Hop]]) -> list[Finding]:
    """The "no local endpoints" DROPs of one port on one node: one finding for cluster-IP traffic
    (internalTrafficPolicy), one for the external destinations (externalTrafficPolicy); an error once they
    have dropped packets."""
    out = []
    for internal in (True, False):
        mine = [(d, h) for d, h in hops if (d[0] == "clusterIP") == internal]
        if not mine:
            continue
        packets = sum(h.packets for _, h in mine)
        counted = f" ({packets} packets dropped so far)" if packets else ""
        where = ", ".join(describe(d) for d, _ in mine)
        if internal:
            message = (f"{spn}: internalTrafficPolicy Local and no ready pod on {node}: connections from this node "
                       f"to {where} are dropped{counted}")
        else:
            message = (f"{spn}: externalTrafficPolicy Local and no ready pod on {node}: outside clients of {where} "
                       f"on this node are dropped{counted}")
        fid = "itp-local-no-local-endpoints" if internal else "etp-local-no-local-endpoints"
        out.append(finding(fid, node, service, message, [h.line for _, h in mine], "error" if packets else None))
    return out


def blackholes(shape: PortShape) -> tuple[list[tuple[Dest, Hop]], list[tuple[Dest, Hop]]]:
    """(REJECTs "… has no endpoints", DROPs "… has no local endpoints") of one port on one node, by destination.

    A pre-1.24 node has no filter DROP for external traffic: its KUBE-XLB chain marks it with KUBE-MARK-DROP
    (kubelet's KUBE-FIREWALL drops it); those count for every external destination that goes through KUBE-XLB."""
    rejects, drops = [], []
    for dest, hop in sorted(shape.filter.items()):
        what = _blackhole_kind(hop.line)
        if hop.target == "REJECT" and what == "no-endpoints":
            rejects.append((dest, hop))
        elif hop.target == "DROP" and what == "no-local-endpoints":
            drops.append((dest, hop))
    return rejects, drops + legacy_drops(shape)


def legacy_drops(shape: PortShape) -> list[tuple[Dest, Hop]]:
    """The KUBE-MARK-DROP rules "… has no local endpoints" of a pre-1.24 KUBE-XLB chain, once per external
    destination that goes through it (kubernetes v1.23 pkg/proxy/iptables/proxier.go; gone with PR #109060)."""
    drops = []
    for line in shape.xlb_drops:
        if _blackhole_kind(line) != "no-local-endpoints":
            continue
        for dest, entry in sorted(shape.nat.items()):
            if entry.target == shape.xlb and dest[0] != "clusterIP":
                drops.append((dest, Hop("DROP", evidence("nat", line), rule_text.packets(line))))
    return drops


def _blackhole_kind(line: str) -> str | None:
    _, what = service_port_of_comment(rule_text.comment(line))
    return what


def comment_port(lines: Iterable[tuple[str, str]]) -> str | None:
    """The service port the first commented rule of [(chain, line)] names."""
    for _, line in lines:
        spn, _ = service_port_of_comment(rule_text.comment(line))
        if spn:
            return spn
    return None
