"""Reading a node's conntrack table for `watch`: the connections to one service's entries, once per sample.

Where kube-proxy's rules keep no counters (nftables mode), or with `watch --source conntrack`, a sample counts the
connections conntrack tracks instead (svcdoctor/model/watch/flows.py says which are new). One exec per node and
sample, as for the rule counters (collect/sampler.py): a constant `sh` script whose arguments are
`conntrack FAMILY:PROTOCOL:PORT …`, checked first to be exactly that. For each argument it runs

    conntrack -L -f ipv4 -p tcp --orig-port-dst 80 -o extended,id

and prints its answer between `#conntrack ARG` and `#status N` (its listing, then its messages). One call per
destination port and not per entry address: the call costs a walk of the whole table whatever the filter (with
conntrack 1.4.7 on a table of 60,000 connections: ~0.13 s filtered by address and port, the same by port alone),
and a service port's entries share at most two ports (its port for the cluster, external and load-balancer IPs;
its node port). Unfiltered, the same table is 10.7 MB that take 1.1 s to read (benchmarks/bench_conntrack.py):
the walks of about ten ports, so a node that needs more than eight listings (`watch` without a service lists the
ports of every service) is listed once per family, unfiltered (`conntrack -L -f ipv4 -o extended,id`, argument
`ipv4`). Which of the listed connections are the service's is decided by the model, which knows the addresses.

Where the node has no `conntrack` binary, or it failed (`#missing conntrack`, or a non-zero status: without
CAP_NET_ADMIN it says "Operation failed: sorry, you must be root …"), the script reads `/proc/net/nf_conntrack`
(`#proc`, there when the kernel has CONFIG_NF_CONNTRACK_PROCFS): every connection of every family, without ids.

Through the Kubernetes API there may be no shell in kube-proxy's image: `ConntrackSeries` runs the same calls one
exec each (argv only) and writes their answers in the script's form, so one parser reads both.

Read-only by construction: `conntrack -L` lists. Nothing here deletes, flushes, updates or creates an entry
(`-D`, `-F`, `-U`, `-I`), and `-z` (zero the counters while listing) is never passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svcdoctor.errors import UsageError
from svcdoctor.model.conntrack import Flow, is_summary, is_tool_message, read_flows

PROC_FILE = "/proc/net/nf_conntrack"
FAMILIES = {"IPv4": "ipv4", "IPv6": "ipv6"}  # the model's family names -> conntrack's -f
PROTOCOLS = ("tcp", "udp", "sctp")
# conntrack's stderr (its count of what it listed, or its error) is kept until the listing is over and printed
# after it: written as it comes, it lands between two of stdout's 4 KB buffers, in the middle of a connection's
# line (`exec 3>&1` keeps the script's stdout for the listing while $( ) takes stderr).
CONNTRACK_SCRIPT = (
    'ct=$1; shift; ok=0; exec 3>&1; '
    'if command -v "$ct" >/dev/null 2>&1; then ok=1; '
    'for a in "$@"; do f=${a%%:*}; r=${a#*:}; p=${r%%:*}; d=${r#*:}; echo "#conntrack $a"; '
    'if [ "$a" = "$f" ]; then err=$("$ct" -L -f "$f" -o extended,id 2>&1 1>&3 3>&-); '
    'else err=$("$ct" -L -f "$f" -p "$p" --orig-port-dst "$d" -o extended,id 2>&1 1>&3 3>&-); fi; s=$?; '
    '[ -z "$err" ] || printf "%s\n" "$err"; echo "#status $s"; [ "$s" = 0 ] || ok=0; done; '
    'else echo "#missing $ct"; fi; '
    f'if [ "$ok" = 0 ]; then if [ -e {PROC_FILE} ]; then echo "#proc"; cat {PROC_FILE} 2>&1; echo "#status $?"; '
    f'else echo "#missing {PROC_FILE}"; fi; fi'
)


@dataclass(frozen=True, slots=True)
class ConntrackQuery:
    """One `conntrack -L` call: the connections of one family and protocol to one destination port, or without
    protocol and port every connection of the family (one walk of the table where many ports would be many)."""

    family: str  # IPv4 | IPv6
    protocol: str | None = None  # tcp | udp | sctp
    port: int | None = None

    @property
    def unfiltered(self) -> bool:
        return self.protocol is None and self.port is None

    @property
    def arg(self) -> str:
        """The script's argument `ipv4:tcp:80` (or `ipv4` unfiltered), checked to be nothing else."""
        if self.family in FAMILIES and self.unfiltered:
            return FAMILIES[self.family]
        if (self.family not in FAMILIES or self.protocol not in PROTOCOLS or not isinstance(self.port, int)
                or not 0 < self.port < 65536):
            raise UsageError(f"not a conntrack query svcdoctor would run: {self.family} {self.protocol} {self.port}")
        return f"{FAMILIES[self.family]}:{self.protocol}:{self.port}"

    def argv(self) -> list[str]:
        family, _, rest = self.arg.partition(":")
        if not rest:
            return ["conntrack", "-L", "-f", family, "-o", "extended,id"]
        protocol, port = rest.split(":")
        return ["conntrack", "-L", "-f", family, "-p", protocol, "--orig-port-dst", port, "-o", "extended,id"]


def conntrack_argv(queries: list[ConntrackQuery]) -> list[str]:
    """The exec's argv: `sh -c SCRIPT sh conntrack ipv4:tcp:80 …` (the script is a constant)."""
    return ["sh", "-c", CONNTRACK_SCRIPT, "sh", "conntrack", *(q.arg for q in queries)]


@dataclass(slots=True)
class ConntrackReading:
    """What one node's conntrack answered in one sample."""

    flows: list[Flow] = field(default_factory=list)
    via: str | None = None  # "conntrack" | PROC_FILE: what was read
    error: str | None = None  # nothing could be read: why
    note: str | None = None  # read, but not the usual way: why (conntrack failed and the proc file was read)
    unread: int = 0  # lines of the listings that were no connection (a connection in one is not counted)


def parse_conntrack_output(text: str, dports: set[int] | None = None) -> ConntrackReading:
    """The script's output (or ConntrackSeries') into the connections it listed, or why there are none. ``dports``:
    the destination ports asked for (the proc file lists every connection; conntrack -L only those)."""
    sections = _sections(text, dports)
    calls = [s for s in sections if s.kind == "conntrack"]
    proc = next((s for s in sections if s.kind == "proc"), None)
    missing = [s.arg for s in sections if s.kind == "missing"]
    if calls and all(s.status == 0 for s in calls):
        return ConntrackReading([f for s in calls for f in s.flows], via="conntrack",
                                unread=sum(len(s.unread) for s in calls))
    why_not_conntrack = ("conntrack is not installed on the node" if "conntrack" in missing
                         else _failure("conntrack -L", next((s for s in calls if s.status != 0), None)))
    if proc is not None and proc.status == 0:
        return ConntrackReading(proc.flows, via=PROC_FILE, note=f"{why_not_conntrack}; read {PROC_FILE} instead",
                                unread=len(proc.unread))
    if proc is not None:
        why_not_proc = _failure(f"cat {PROC_FILE}", proc)
    elif "cat" in missing:
        why_not_proc = f"there is no cat to read {PROC_FILE} with"
    elif PROC_FILE in missing:
        why_not_proc = f"there is no {PROC_FILE} (a kernel without CONFIG_NF_CONNTRACK_PROCFS)"
    else:
        why_not_proc = "the read ended early"
    return ConntrackReading(error=f"{why_not_conntrack}, and {why_not_proc}: connections cannot be counted here")


@dataclass(slots=True)
class _Section:
    kind: str  # conntrack | proc | missing
    arg: str
    lines: list[str] = field(default_factory=list)
    status: int | None = None
    flows: list[Flow] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # conntrack's (or cat's) own words: an error
    unread: list[str] = field(default_factory=list)  # lines that are no connection and no message


def _sections(text: str, dports: set[int] | None = None) -> list[_Section]:
    sections: list[_Section] = []
    current: _Section | None = None
    for line in text.splitlines():
        if line.startswith(("#conntrack ", "#proc", "#missing ")):
            kind, _, arg = line[1:].partition(" ")
            current = _Section(kind, arg.strip())
            sections.append(current)
            if kind == "missing":
                current = None
        elif line.startswith("#status ") and current is not None:
            status = line[8:].strip()
            current.status = int(status) if status.lstrip("-").isdigit() else -1
            listing = read_flows("\n".join(current.lines), dports if current.kind == "proc" else None)
            current.flows, current.messages, current.unread = listing.flows, listing.messages, listing.unread
            current = None
        elif current is not None:
            current.lines.append(line)
    return sections


def _failure(what: str, section: _Section | None) -> str:
    """`conntrack -L: Operation failed: sorry, you must be root or get CAP_NET_ADMIN capability to do this`."""
    if section is None:
        return f"{what} did not run"
    message = next((m for m in section.messages + section.unread if not is_summary(m)), "")
    if is_tool_message(message):
        message = message.split("): ", 1)[-1]  # conntrack's "conntrack v1.4.7 (conntrack-tools): " prefix
    for word in what.split():  # cat's own "cat: /proc/net/nf_conntrack: Permission denied"
        if message.startswith(word + ": "):
            message = message[len(word) + 2:]
    return f"{what}: {message.strip() or f'exited {section.status}'}"[:300]


class ConntrackSeries:
    """Without a shell (a kube-proxy pod over `pods/exec`): each query its own exec of the conntrack binary, then
    the proc file if that did not work, the answers written as CONNTRACK_SCRIPT writes them."""

    def __init__(self, queries: list[ConntrackQuery]):
        self.queries = list(queries)

    def __call__(self, target) -> tuple[str, list[str]]:
        parts: list[str] = []
        ok = bool(self.queries)
        for query in self.queries:
            try:
                code, out = _run(target, query.argv())
            except Exception as exc:  # the runtime could not start it: "executable file not found in $PATH"
                if "not found" not in str(exc) and "no such file" not in str(exc).lower():
                    raise
                parts, ok = ["#missing conntrack\n"], False
                break
            if code in (126, 127):  # docker exec's "not found" / "not executable"
                parts, ok = ["#missing conntrack\n"], False
                break
            parts.append(f"#conntrack {query.arg}\n{out.rstrip()}\n#status {code}\n")
            ok = ok and code == 0
        if not ok:
            try:
                code, out = _run(target, ["cat", PROC_FILE])
                parts.append(f"#proc\n{out.rstrip()}\n#status {code}\n")
            except Exception:  # no cat either (distroless): nothing more to try
                parts.append("#missing cat\n")
        return "".join(parts), []


def _run(target, argv: list[str]) -> tuple[int, str]:
    """stdout and stderr together, as the script's `2>&1` gives them."""
    result = target.exec_run(argv, demux=True)
    stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, None)
    text = (stdout or b"").decode("utf-8", "replace") + (stderr or b"").decode("utf-8", "replace")
    return result.exit_code, text
