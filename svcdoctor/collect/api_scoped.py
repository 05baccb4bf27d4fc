"""`explain SERVICE` through the API reads only what the service needs from each node, not the whole dump.

A whole `iptables-nft-save -c` of a node with thousands of services is megabytes; moved through the API server
for each of 5,000 nodes it is gigabytes, nearly all of it other services' chains. kube-proxy's images may have no
shell, so there is no pipe to cut the dump on the node: the reads are the iptables binary itself, argv only, one
chain per exec, with counters (`iptables-nft -w 5 -t nat -S CHAIN -v` prints `-c PKTS BYTES` on each rule):

1. nat `KUBE-SERVICES` (every service's entry rules: the service's own and, from their comments, the names for
   "did you mean"); its answer also tells whether this node can be read this way at all (below);
2. the chains every path goes through: nat `PREROUTING`, `OUTPUT`, `POSTROUTING`, `KUBE-NODEPORTS`,
   `KUBE-MARK-MASQ`, `KUBE-POSTROUTING`, and the whole filter table (`iptables-nft-save -t filter -c`: small,
   and where kube-proxy's REJECT/DROP rules live);
3. the chains those jump to, round after round, except other services' hashed chains: the service's
   KUBE-SVC/EXT/FW/SVL chains (found by their comments and by the hashes of the service's ports from the API, so
   a cluster too big for comments works too), then its KUBE-SEP chains, and Docker's or kind's own chains.

What comes back is written as `iptables-save -c` would print those chains, so the parser and the scoped reader
(model/scoped_read.py) take it as they take a whole dump, and explain says the same (tests/lab/test_api_exec.py
compares it with explain through docker). IPv6: `ip6tables-nft -t nat -S KUBE-SERVICES -v` first, and the
service's chains there only when it has any.

Only in a cluster of many Services (api_nodes.SCOPED_READ_MIN_SERVICES, counted with one limited list): with few,
each node's whole dump is small and one exec for it is faster on thousands of nodes than a dozen for the chains.
Only a plain nft node is read this way: when `iptables-nft` does not know KUBE-SERVICES, or warns that legacy
tables are present (kube-proxy's rules may be there, or stale ones worth a warning), the node is read whole as
before (api_nodes.read_node), both backends, with every decision and warning that implies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.collect import node_rules
from svcdoctor.collect.iptables_argv import IP6TABLES, IPTABLES, valid_chain_name
from svcdoctor.errors import is_timeout
from svcdoctor.model import rule_text
from svcdoctor.model.hashes import LEGACY_XLB_PREFIX, SERVICE_CHAIN_PREFIXES, chain_kind
from svcdoctor.model.scoped_read import service_chains

ENTRY = "KUBE-SERVICES"
FIXED_NAT = ("PREROUTING", "OUTPUT", "POSTROUTING", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-POSTROUTING")
BUILTIN = frozenset({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"})
# targets that are extensions, not chains: never listed as chains
TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "QUEUE", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "MARK",
                     "CONNMARK", "LOG", "NFLOG", "NOTRACK", "CT", "TPROXY", "TCPMSS", "CLASSIFY", "DSCP", "TOS",
                     "NETMAP", "TTL", "HL", "SET", "AUDIT", "CHECKSUM", "TRACE", "ULOG", "NFQUEUE", "SECMARK",
                     "CONNSECMARK", "IDLETIMER", "LED", "RATEEST", "SYNPROXY", "TEE", "HMARK"})
ATTEMPTS = 3  # a listing cut short is asked for again (it only reads)
MAX_ROUNDS = 6  # builtins -> KUBE-SERVICES -> EXT -> SVL/SVC -> SEP, with one to spare


@dataclass(slots=True)
class ScopedRead:
    """What one family's reads gave: the text (iptables-save form), or why the node must be read whole."""

    text: str = ""
    warnings: list[str] = field(default_factory=list)
    fallback: str | None = None  # set: read the node whole, for this reason
    failed: str | None = None  # a read failed (refused, cut, timed out): the node's error, not worth a second way
    timed_out: bool = False
    execs: int = 0
    bytes: int = 0


def read_family(target, binary: str, save_binary: str, service_key: str, suffixes=(),
                only_if_named: bool = False) -> ScopedRead:
    """The service's part of one family's rules through `target` (an exec_run-able pod); `fallback` set when the
    node has to be read whole, `failed` when a read itself failed. only_if_named (IPv6): nothing more is read when
    KUBE-SERVICES names nothing of the service there."""
    out = ScopedRead()
    listed: dict[str, str] = {}  # chain -> its `-S -v` text ("" when absent)
    entry = _list(target, binary, "nat", ENTRY, out)
    if entry is None:
        return out
    if not entry.strip():
        out.fallback = f"{binary} lists no {ENTRY} (kube-proxy's rules may be in the other backend)"
        return out
    listed[ENTRY] = entry
    own = _service_names(entry, service_key, suffixes)
    if only_if_named and not own:
        return out  # nothing of the service in this family: nothing to read
    wanted = [c for c in FIXED_NAT if c not in listed]
    for _ in range(MAX_ROUNDS):
        for chain in wanted:
            text = _list(target, binary, "nat", chain, out)
            if text is None:
                return out
            listed[chain] = text
        own |= _service_names("\n".join(listed[c] for c in wanted), service_key, suffixes)
        wanted = sorted(_next_chains(listed, own) - set(listed))
        if not wanted:
            break
    filter_text = _save_filter(target, save_binary, out)
    if filter_text is None:
        return out
    out.text = _as_save("nat", listed) + filter_text
    return out


def _service_names(text: str, service_key: str, suffixes) -> set[str]:
    """The service's hashed chains named in these listings: by comment, or by the hashes of its ports."""
    names = service_chains(text, service_key)
    hashed = {prefix + s for s in suffixes for prefix in SERVICE_CHAIN_PREFIXES + (LEGACY_XLB_PREFIX,)}
    names |= {t for t in _targets(text) if t in hashed}
    return names


def _targets(text: str) -> list[str]:
    """The -j/-g targets of a listing's rules (model/rule_text.py reads them)."""
    return [t for line in text.splitlines() if line.startswith("-A ") and (t := rule_text.target_name(line))]


def _next_chains(listed: dict[str, str], own: set[str]) -> set[str]:
    """Chains the listed rules jump to that the service's paths can take: not other services' hashed chains, not
    target extensions; a hashed chain jumped to from one of the service's own is the service's too (its SEPs)."""
    out: set[str] = set()
    for chain, text in listed.items():
        for target in _targets(text):
            if target in TARGETS or target in BUILTIN or not valid_chain_name(target):
                continue
            if chain_kind(target) is not None:
                if target in own or chain_kind(chain) is not None and chain in own:
                    out.add(target)
                    own.add(target)
            else:
                out.add(target)
    return out


def _list(target, binary: str, table: str, chain: str, out: ScopedRead) -> str | None:
    """`BINARY -w 5 -t TABLE -S CHAIN -v`: its text, "" when there is no such chain, None (and out.fallback) when the
    read failed or iptables warns of legacy tables."""
    argv = [binary, "-w", "5", "-t", table, "-S", chain, "-v"]
    for _ in range(ATTEMPTS):
        result = _run(target, argv, out)
        if result is None:
            return None
        code, text, warnings = result
        # `-S CHAIN` always starts with the chain's own `-N CHAIN` (or `-P CHAIN POLICY`): anything else is an
        # answer cut short on the way (as node_rules.read_backend retries a dump without its COMMIT)
        if code != 0 or text.startswith((f"-N {chain}\n", f"-P {chain} ")):
            break
    else:
        out.failed = out.fallback = f"{binary} -S {chain}: its output could not be read whole in {ATTEMPTS} tries"
        return None
    if any("legacy tables present" in w for w in warnings):
        out.fallback = "legacy tables are present on the node"
        return None
    if code == 1:
        return ""  # no such chain
    if code != 0:
        out.fallback = f"{binary} -S {chain} exited {code}"
        return None
    return text


def _save_filter(target, save_binary: str, out: ScopedRead) -> str | None:
    for _ in range(ATTEMPTS):
        result = _run(target, [save_binary, "-t", "filter", "-c"], out)
        if result is None:
            return None
        code, text, _warnings = result
        if code != 0 or node_rules._complete(text):
            break
    else:
        out.failed = out.fallback = f"{save_binary} -t filter: its output could not be read whole in {ATTEMPTS} tries"
        return None
    if code != 0:
        out.fallback = f"{save_binary} -t filter exited {code}"
        return None
    return text


def _run(target, argv: list[str], out: ScopedRead):
    out.execs += 1
    try:
        result = target.exec_run(argv, demux=True)
    except Exception as exc:  # noqa: BLE001 - a broken stream, a timeout: the whole read says why
        out.timed_out = is_timeout(exc)
        out.failed = out.fallback = f"{argv[0]}: {node_rules._exec_failure(exc)}"
        return None
    stdout, stderr = result.output
    out.bytes += len(stdout or b"") + len(stderr or b"")
    text, warnings = node_rules.split_warnings((stdout or b"").decode("utf-8", "replace"))
    _err, err_warnings = node_rules.split_warnings((stderr or b"").decode("utf-8", "replace"))
    for w in warnings + err_warnings:
        if w not in out.warnings:
            out.warnings.append(w)
    return result.exit_code, text, warnings + err_warnings


def _as_save(table: str, listed: dict[str, str]) -> str:
    """`-P`/`-N`/`-A … -c P B` listings as `iptables-save -c` prints them: declarations, then rules."""
    declarations, rules = [], []
    for text in listed.values():
        for line in text.splitlines():
            if line.startswith("-P "):
                parts = line.split()
                pk, by = (parts[4], parts[5]) if len(parts) >= 6 and parts[3] == "-c" else ("0", "0")
                declarations.append(f":{parts[1]} {parts[2]} [{pk}:{by}]")
            elif line.startswith("-N "):
                declarations.append(f":{line[3:].strip()} - [0:0]")
            elif line.startswith("-A "):
                rule, packets, nbytes = rule_text.split_counted_line(line)  # `… -c P B -j …` -> `[P:B] -A …`
                rules.append(f"[{packets or 0}:{nbytes or 0}] {rule}")
    return "\n".join([f"*{table}", *declarations, *rules, "COMMIT", ""])


def binaries(backend: str = "nft") -> dict[str, tuple[str, str]]:
    """family -> (the iptables binary, its save binary)."""
    return {"IPv4": (IPTABLES[backend], node_rules.SAVE_COMMANDS[backend][0]),
            "IPv6": (IP6TABLES[backend], node_rules.IP6_SAVE_COMMANDS[backend][0])}
