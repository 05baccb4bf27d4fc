"""The reader of conntrack's text: the only code that reads what `conntrack -L` and `/proc/net/nf_conntrack` print.

Both print one connection a line, the original direction's tuple first and the reply direction's second
(conntrack-tools src/conntrack.c with libnetfilter_conntrack's snprintf_default; the kernel's
net/netfilter/nf_conntrack_standalone.c ct_seq_show for the proc file):

    conntrack -L -o extended,id   ipv4     2 tcp      6 117 TIME_WAIT src=… dst=… sport=… dport=… src=…
                                  dst=… sport=… dport=… [ASSURED] mark=0 use=1 id=3079686949
    conntrack -L                  the same without the leading `ipv4     2` (and without `id=` unless `-o id`)
    /proc/net/nf_conntrack        the extended layout, `zone=0` before `use=`, never an `id=`, and IPv6 addresses
                                  written in full (`fd00:0010:…:0005`, the kernel's %pI6)

Between the two tuples an unanswered connection carries `[UNREPLIED]`; with nf_conntrack_acct each tuple ends in
`packets=… bytes=…`; ICMP tuples have `type= code= id=` where TCP and UDP have ports (so an `id=` inside a tuple is
ICMP's, and only the one after the tuples is the connection's). conntrack's own messages start with its name and
version (`conntrack v1.4.7 (conntrack-tools): 12 flow entries have been shown.`).

What the watch model needs from a line: the original destination (what the client asked for: a cluster IP and
port, a node port) and the reply source (where the connection really goes: after kube-proxy's DNAT, the
endpoint). A connection whose reply source is its original destination was not DNATed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

IPV4, IPV6 = "IPv4", "IPv6"  # as the watch model names the families (model/watch/listing.py)
_L3 = {"ipv4": IPV4, "ipv6": IPV6}
# the keys a tuple is made of (TCP/UDP/SCTP ports, ICMP's type/code/id, and acct's counters at its end)
_TUPLE_KEYS = frozenset(("src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes"))
TOOL_PREFIX = "conntrack v"  # conntrack-tools' messages: "conntrack v1.4.7 (conntrack-tools): …"


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """One direction of a connection. Addresses are written as Python writes them (IPv6 compressed)."""

    src: str
    dst: str
    sport: int | None
    dport: int | None


@dataclass(slots=True)
class Flow:
    """One connection conntrack tracks."""

    family: str  # IPv4 | IPv6
    protocol: str  # tcp | udp | sctp | icmp | … (conntrack's name for it)
    original: FlowTuple
    reply: FlowTuple
    state: str | None = None  # TCP's and SCTP's state (ESTABLISHED, TIME_WAIT, …); None for UDP
    id: str | None = None  # conntrack's id (`-o id`); the proc file has none
    flags: frozenset[str] = frozenset()  # UNREPLIED, ASSURED, …

    @property
    def key(self) -> tuple:
        """What tells this connection from every other one conntrack holds at the same moment: its original tuple
        (all the proc file gives; conntrack's id also tells a connection from an earlier one of the same tuple)."""
        o = self.original
        return (self.family, self.protocol, o.src, o.sport, o.dst, o.dport)

    @property
    def dnat(self) -> bool:
        """Did something rewrite the destination? The reply comes from elsewhere than the client asked."""
        return (self.reply.src, self.reply.sport) != (self.original.dst, self.original.dport)


@dataclass(slots=True)
class FlowListing:
    flows: list[Flow] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)  # lines that were neither a connection nor conntrack's summary
    messages: list[str] = field(default_factory=list)  # conntrack's own lines other than its summary (errors)


def normal_ip(text: str) -> str:
    """An address as Python writes it (`fd00:0010::0005` -> `fd00:10::5`); anything else as it was. IPv4 is
    printed one way only, so only IPv6 needs the (slow) round trip."""
    return _normal_ipv6(text) if ":" in text else text


@lru_cache(maxsize=4096)
def _normal_ipv6(text: str) -> str:
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return text


def is_tool_message(line: str) -> bool:
    return line.startswith(TOOL_PREFIX)


def is_summary(line: str) -> bool:
    """conntrack's count of what it listed (stderr, or stdout with 2>&1): not a connection and not an error."""
    return is_tool_message(line) and (line.rstrip().endswith("have been shown.") or "entries have been" in line)


def read_flows(text: str, dports: set[int] | None = None) -> FlowListing:
    """Every connection of a `conntrack -L` (any `-o extended`/`-o id`) or `/proc/net/nf_conntrack` text; with
    ``dports``, only those to one of these destination ports (the proc file lists the whole table: a line is
    looked at only when it has such a `dport=`: reading all of 60,000 lines takes ~1 s)."""
    out = FlowListing()
    marks = tuple(f" dport={port} " for port in dports) if dports is not None else None
    for line in text.splitlines():
        if not line.strip():
            continue
        if marks is not None and " dport=" in line and not any(m in line for m in marks):
            continue  # a connection to another port (lines without ports, and messages, are read on)
        if is_tool_message(line):
            if not is_summary(line):
                out.messages.append(line.strip())
            continue
        flow = read_flow(line)
        if flow is None:
            out.unread.append(line)
        elif dports is None or flow.original.dport in dports:
            out.flows.append(flow)
    return out


def read_flow(line: str) -> Flow | None:
    """One line; None when it is not a connection conntrack could have printed."""
    words = line.split()
    head: list[str] = []
    at = 0
    while at < len(words) and "=" not in words[at] and not words[at].startswith("["):
        head.append(words[at])
        at += 1
    family, protocol, state = _head(head)
    if protocol is None:
        return None
    tuples: list[dict[str, str]] = []  # the original direction's, then the reply's
    flags: set[str] = set()
    conn_id = None
    after = False  # past the reply tuple: mark=, zone=, use=, id=
    for word in words[at:]:
        if word.startswith("[") and word.endswith("]"):
            flags.add(word[1:-1])
            continue
        key, eq, value = word.partition("=")
        if not eq:
            return None
        if not after and key == "src" and len(tuples) < 2:
            tuples.append({key: value})  # each direction's tuple starts with its source
        elif not after and tuples and _in_tuple(tuples[-1], key):
            tuples[-1][key] = value
        elif not tuples:
            return None
        else:
            after = after or len(tuples) == 2
            if key == "id" and after:
                conn_id = value
    if len(tuples) != 2 or not all("src" in t and "dst" in t for t in tuples):
        return None
    original, reply = (_tuple(t) for t in tuples)
    if family is None:
        family = IPV6 if ":" in original.src else IPV4
    return Flow(family, protocol, original, reply, state, conn_id, frozenset(flags))


def _in_tuple(fields: dict[str, str], key: str) -> bool:
    """Does `key=` still belong to this tuple? `id=` does only in an ICMP tuple (`type= code= id=`); after a tuple
    with ports it is the connection's id."""
    if key in fields or key not in _TUPLE_KEYS:
        return False
    return key != "id" or "type" in fields


def _head(head: list[str]) -> tuple[str | None, str | None, str | None]:
    """`[ipv4 2] tcp 6 117 [TIME_WAIT]` -> (family or None, protocol, state or None)."""
    family = None
    if len(head) >= 2 and head[0] in _L3 and head[1].isdigit():
        family = _L3[head[0]]
        head = head[2:]
    # protocol name, its number, the seconds left, and for TCP/SCTP/DCCP the state
    if len(head) < 3 or not head[1].isdigit() or not head[2].isdigit():
        return family, None, None
    return family, head[0], head[3] if len(head) > 3 else None


def _tuple(fields: dict[str, str]) -> FlowTuple:
    return FlowTuple(normal_ip(fields["src"]), normal_ip(fields["dst"]), _port(fields.get("sport")),
                     _port(fields.get("dport")))


def _port(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None
