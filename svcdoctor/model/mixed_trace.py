"""One packet through a node in nftables mode whose iptables holds rules too: kube-proxy's chains left from
iptables mode (check's `stale-iptables-rules`), or other owners' (a CNI, kind's DOCKER_OUTPUT, a firewall). Both
sets of rules run on the same hooks, and the kernel decides between them this way (docs/explanation/kube-proxy-nftables.md, "iptables rules left on an nftables node"):

* On each hook, base chains run by priority. kube-proxy's nftables filter chains below the nat priority (-110)
  run first: a drop there ends the packet whatever else is on the node.
* iptables' nat table and kube-proxy's nftables nat chains both sit at priority -100 (dstnat). At equal priority
  the hook registered last runs first (net/netfilter/core.c, nf_hook_entries_grow inserts a hook before the first
  one of the same or a higher priority), and kube-proxy's table was created after iptables' nat table on a node
  that switched modes.
* iptables' filter chains (priority 0) see the packet after DNAT, whoever did it: an explicit DROP or REJECT
  there stops a connection kube-proxy's table sent to an endpoint.
* A connection is DNATed once: the first nat chain that binds a DNAT ends the nat lookups for that hook
  (net/netfilter/nf_nat_core.c, nf_nat_inet_fn). So kube-proxy's nftables table DNATs what it knows, and the
  leftover KUBE-SERVICES DNATs what it does not: a Service deleted since, an old cluster IP, a Service whose
  endpoints are all gone (kube-proxy's no-endpoint check runs after DNAT and no longer sees the service address).

tests/test_mixed_trace.py checks this against the kernel: real connections through both sets of rules.
Pure: the tables come in read (NodeRules, NftRuleset); the result is a TraceResult with a note that says which
rules decided.
"""

from __future__ import annotations

from dataclasses import replace

from svcdoctor.model.nft.ruleset import NftRuleset
from svcdoctor.model.nft_trace import trace_nft_packet
from svcdoctor.model.rules import NodeRules
from svcdoctor.model.trace import TraceResult, trace_packet

NAT_PRIORITY = -100  # dstnat: iptables' nat table and kube-proxy's nat chains alike


def trace_with_iptables(rules: NodeRules, rs: NftRuleset, src: str, dst: str, dport: int, protocol: str,
                        node_ips: list[str], node: str | None = None) -> TraceResult:
    """A node in nftables mode whose iptables holds rules too: kube-proxy's left from iptables mode, or other
    owners' (a CNI, kind's DOCKER_OUTPUT, a firewall)."""
    owners = ("the iptables rules left from iptables mode" if rules.has_kube_proxy_rules()
              else "the node's iptables rules (other owners')")
    nft = trace_nft_packet(rs, src, dst, dport, protocol, node_ips, node=node)
    if nft.verdict == "dnat":
        result = _filtered_after_dnat(nft, rules, src, protocol, node_ips, node, owners)
        if rules.has_kube_proxy_rules():
            result.notes.append(
                "kube-proxy's iptables rules from iptables mode are still on this node, but kube-proxy's nftables "
                f"table DNATs this connection first (nat priority {NAT_PRIORITY}, created after iptables' nat "
                "table; a connection is DNATed once), so the leftovers are not used for it")
        return result
    if nft.verdict in ("drop", "reject") and _stopped_before_nat(nft, rs):
        return replace(nft, notes=nft.notes + [
            f"kube-proxy's nftables filter chains (priority below {NAT_PRIORITY}) stop this packet before any DNAT, "
            f"so {owners} never see it"])
    old = trace_packet(rules, src, dst, dport, protocol, node_ips, node=node)
    if old.verdict == "dnat":
        endpoints = ", ".join(sorted(old.destinations)) or "?"
        stale = " stale rules decide where it goes" if rules.has_kube_proxy_rules() else ""
        return replace(old, notes=old.notes + [
            f"kube-proxy's nftables table does not DNAT this connection, but {owners} still do (nat priority "
            f"{NAT_PRIORITY}, after kube-proxy's table), to {endpoints}:{stale}".rstrip(":")])
    return replace(nft, notes=nft.notes + [f"{owners} do not DNAT this packet either"])


def _filtered_after_dnat(nft: TraceResult, rules: NodeRules, src: str, protocol: str, node_ips: list[str],
                         node: str | None, owners: str) -> TraceResult:
    """iptables' filter chains see the packet after kube-proxy's DNAT (filter runs after nat on every hook): each
    endpoint's packet through them. Only a DROP or REJECT rule that surely matches counts (not a chain policy, not
    a way past rules the tracer cannot decide, such as interface matches: those may accept it first)."""
    endpoints, steps, notes = [], list(nft.steps), list(nft.notes)
    for e in nft.endpoints:
        after = trace_packet(rules, src, e.ip, e.port, protocol, node_ips, node=node)
        stops = [s for s in after.steps if s.action.split(" ", 1)[0] in ("drop", "reject")
                 and s.rule and not s.rule.startswith("-P ")]
        if e.verdict != "dnat" or after.verdict not in ("drop", "reject") or after.uncertain or not stops:
            endpoints.append(e)
            continue
        endpoints.append(replace(e, verdict=after.verdict))
        steps += [replace(s, share=s.share * e.probability) for s in stops]
        notes.append(f"{e.address}: after kube-proxy's DNAT, {owners} {after.verdict} it ({stops[0].table} "
                     f"{stops[0].chain}: {stops[0].rule})")
    verdict = nft.verdict if any(e.verdict == "dnat" for e in endpoints) else next(
        (e.verdict for e in endpoints), nft.verdict)
    return replace(nft, endpoints=endpoints, steps=steps, notes=notes, verdict=verdict)


def _stopped_before_nat(result: TraceResult, rs: NftRuleset) -> bool:
    """Whether the packet was dropped or rejected in a base chain that runs before the nat chains (the steps are
    in the order the kernel met them; entering a chain is a step of its own)."""
    for step in result.steps:
        chain = rs.chain(step.chain)
        if chain is not None and chain.is_base and (chain.priority or 0) >= NAT_PRIORITY:
            return False  # the nat hooks (or a later one) were reached
        if step.action.lower().startswith(("drop", "reject")):
            return True
    return False
