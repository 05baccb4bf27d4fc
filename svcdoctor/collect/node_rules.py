"""Read each kind node's iptables rules (both backends, with counters) through `docker exec`, in parallel.

Read-only by construction: the only commands run are `iptables-nft-save -c` and `iptables-legacy-save -c` (and
ip6tables' of the backend used, and `nft list table … kube-proxy`, collect/nft_rules.py), as argv lists (no shell). Without `-t`, iptables-legacy-save lists only the tables the kernel already has
(/proc/net/ip_tables_names), so reading never instantiates an empty legacy table in the node's netns (which would
make iptables-nft print "legacy tables present" from then on; docs/reference/lab.md §5.4).

Why both backends: a node's kernel runs the rules of *both* iptables backends. kind's entrypoint picks one for
the node, kube-proxy's iptables-wrapper picks one for itself, and when they disagree (or stale rules survive in
the other one) Services break on that node only (docs/reference/kube-proxy-layout.md §7 row 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from svcdoctor.collect.kind import KindNode
from svcdoctor.collect.nft_rules import NftTables, attach_nftables, docker_runner, read_nft_tables
from svcdoctor.collect.snapshot import NodeCapture
from svcdoctor.errors import is_timeout
from svcdoctor.model import rule_text

BACKENDS = ("nft", "legacy")
SAVE_COMMANDS = {
    "nft": ["iptables-nft-save", "-c"],
    "legacy": ["iptables-legacy-save", "-c"],
}
# kube-proxy's IPv6 proxier (dual-stack and IPv6 clusters) writes the same chains into ip6tables
IP6_SAVE_COMMANDS = {
    "nft": ["ip6tables-nft-save", "-c"],
    "legacy": ["ip6tables-legacy-save", "-c"],
}
# Chains kubelet creates (docs/reference/kube-proxy-layout.md §2.1); they say nothing about where kube-proxy writes.
KUBELET_CHAINS = frozenset({"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-MARK-DROP"})
DEFAULT_MAX_WORKERS = 8

_CHAIN_DECL = rule_text.KUBE_CHAIN_DECLARATION


@dataclass(slots=True)
class BackendDump:
    """What one `iptables-*-save -c` printed inside a node."""

    backend: str  # nft | legacy
    text: str = ""  # stdout without "# Warning:" lines
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # the command could not run or failed
    timed_out: bool = False
    rule_count: int = 0  # lines that are rules, counted as kind's entrypoint counts them
    kube_proxy_chains: frozenset[str] = frozenset()  # KUBE-* chains declared, kubelet's left out

    argv: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return (self.argv or SAVE_COMMANDS[self.backend])[0]

    def set_text(self, text: str) -> None:
        # whole-text scans at C speed: this runs on every node's dump, 100,000 lines on a big cluster
        self.text = text
        lines = "\n" + text
        # kind's `grep -c '^-'`; with -c every rule line starts "[pkts:bytes] -A" instead
        self.rule_count = lines.count("\n-") + lines.count("\n[")
        self.kube_proxy_chains = frozenset(_CHAIN_DECL.findall(lines)) - KUBELET_CHAINS


def split_warnings(text: str) -> tuple[str, list[str]]:
    """Separate iptables' "# Warning: …" lines (e.g. "iptables-legacy tables present") from the rules."""
    if "# Warning:" not in text:
        return text, []
    kept, warnings = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("# Warning:"):
            warnings.append(line.strip())
        else:
            kept.append(line)
    return "".join(kept), warnings


def read_backend(container, backend: str, attempts: int = 3, argv: list[str] | None = None) -> BackendDump:
    """Run one backend's save command in the container; failures become BackendDump.error, never exceptions.

    docker-py now and then misreads an exec's multiplexed stream ("N is not a valid stream": payload bytes taken
    for a frame header, docker/docker-py#3160), and a stream that ends early looks like a normal end to it.
    The command only reads, so a garbled or cut-short answer is simply asked for again.
    """
    argv = argv or SAVE_COMMANDS[backend]
    dump = BackendDump(backend=backend, argv=list(argv))
    problem = ""
    for _ in range(attempts):
        try:
            # demux=True keeps stderr apart: iptables-nft-save prints its legacy warning there (docs/reference/lab.md §5.4)
            result = container.exec_run(argv, demux=True)
        except ValueError as exc:  # the garbled-stream case above
            problem = str(exc)
            continue
        except Exception as exc:  # docker.errors.APIError (container stopped), requests' timeouts, ...
            dump.timed_out = is_timeout(exc)
            dump.error = f"{argv[0]}: {'timed out' if dump.timed_out else _exec_failure(exc)}"
            return dump
        stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, None)
        out_text, out_warnings = split_warnings((stdout or b"").decode("utf-8", "replace"))
        err_text, err_warnings = split_warnings((stderr or b"").decode("utf-8", "replace"))
        if result.exit_code != 0:
            reason = (err_text.strip() or out_text.strip() or "no output").splitlines()[0][:300]
            dump.error = f"{argv[0]} exited {result.exit_code}: {reason}"
            return dump
        if not _complete(out_text):
            problem = "the output ended in the middle of a table"
            continue
        if not _starts_well(out_text) or not rule_text.save_lines_well_formed(out_text):
            # the same docker-py misreading: frame bytes left in the text ("4959"), at the start or inside
            problem = "the output held lines iptables-save does not print"
            continue
        dump.warnings = out_warnings + err_warnings
        dump.set_text(out_text)
        return dump
    dump.error = f"{argv[0]}: its output could not be read whole in {attempts} tries ({problem})"
    return dump


def _complete(text: str) -> bool:
    """iptables-save ends every table with COMMIT and "# Completed on …"; no tables at all is empty output."""
    tail = text.rstrip("\n").rsplit("\n", 1)[-1]
    return not text.strip() or tail == "COMMIT" or tail.startswith("# Completed")


def _starts_well(text: str) -> bool:
    """iptables-save starts with "# Generated by …" (or a "# Warning: …" line) or a table header."""
    head = text.lstrip("\n")[:1]
    return not head or head in "#*"


def _exec_failure(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)  # docker.errors.APIError carries the daemon's message
    text = str(explanation or exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def choose_backend(nft: BackendDump, legacy: BackendDump) -> tuple[str, str]:
    """(backend the node's kube-proxy rules live in, why).

    Where kube-proxy's chains are decides; when they are in both backends or in neither, decide as kind's node
    entrypoint `select_iptables()` does: more rules wins, legacy wins ties (docs/reference/kube-proxy-layout.md §6).
    """
    if nft.error and not legacy.error:
        return "legacy", "only iptables-legacy-save could be read"
    if legacy.error and not nft.error:
        return "nft", "only iptables-nft-save could be read"
    in_nft, in_legacy = bool(nft.kube_proxy_chains), bool(legacy.kube_proxy_chains)
    if in_nft != in_legacy:
        return ("nft" if in_nft else "legacy"), "kube-proxy's chains are there"
    n_nft, n_legacy = nft.rule_count, legacy.rule_count
    backend = "legacy" if n_legacy >= n_nft else "nft"
    where = "in both backends" if in_nft else "in neither backend"
    return backend, f"kube-proxy's chains {where}; kind's rule count (legacy {n_legacy}, nft {n_nft}, legacy wins ties)"


def assemble_capture(node: KindNode, nft: BackendDump, legacy: BackendDump, timeout: float | None = None) -> NodeCapture:
    """One node's capture from its two dumps. A hung save fails the whole node: the other backend alone would
    tell a half-truth (a node looking "legacy" only because iptables-nft-save is wedged)."""
    capture = NodeCapture(name=node.name, internal_ip=node.internal_ip, role=node.role,
                          source=f"docker container {node.name}", read_via="docker exec")
    hung = [d for d in (nft, legacy) if d.timed_out]
    if hung:
        limit = f" within {timeout:g}s" if timeout else ""
        capture.error = "; ".join(f"{d.command} did not answer{limit}" for d in hung)
        return capture
    if nft.error and legacy.error:
        capture.error = f"{nft.error}; {legacy.error}"
        return capture
    failed = nft if nft.error else legacy if legacy.error else None
    if failed is not None and not (legacy if failed is nft else nft).text.strip():
        # one save failed and the other printed nothing: an empty table set would be a false "no rules here"
        other_cmd = (legacy if failed is nft else nft).command
        capture.error = f"{failed.error}; {other_cmd} printed no tables"
        return capture
    backend, why = choose_backend(nft, legacy)
    used, other = (nft, legacy) if backend == "nft" else (legacy, nft)
    capture.backend = backend
    capture.iptables_save = used.text
    capture.other_backend_save = None if other.error else other.text
    for dump in (nft, legacy):
        capture.warnings.extend(w for w in dump.warnings if w not in capture.warnings)
    if other.error:
        capture.warnings.append(f"{other.error} (rules read from the {backend} backend only)")
    if nft.kube_proxy_chains and legacy.kube_proxy_chains:
        capture.warnings.append(
            f"kube-proxy chains exist in both iptables backends (nft {nft.rule_count} rules, "
            f"legacy {legacy.rule_count} rules); using {backend}: {why}"
        )
    elif backend == "legacy" and legacy.kube_proxy_chains:
        capture.warnings.append(f"kube-proxy's rules are in the iptables-legacy backend ({why})")
    return capture


def capture_node(node: KindNode) -> NodeCapture:
    """Read one node (both backends, then ip6tables of the one it uses, then kube-proxy's nftables tables, one
    after the other)."""
    if not node.running:
        return _failed(node, f"container is {node.state}, not running")
    capture = assemble_capture(node, read_backend(node.container, "nft"), read_backend(node.container, "legacy"))
    if not capture.error and capture.backend:
        attach_ip6tables(capture, read_backend(node.container, capture.backend, argv=IP6_SAVE_COMMANDS[capture.backend]))
    if not capture.error:
        attach_nftables(capture, read_nft_tables(docker_runner(node.container)))
    return capture


def attach_ip6tables(capture: NodeCapture, dump: BackendDump | None) -> None:
    """IPv6 Services live in ip6tables. Best effort: a node whose ip6tables cannot be read keeps its IPv4 rules
    and says so in a warning."""
    if dump is None:
        capture.warnings.append(f"{IP6_SAVE_COMMANDS[capture.backend][0]}: timed out (IPv6 rules not read)")
    elif dump.error:
        capture.warnings.append(f"{dump.error} (IPv6 rules not read)")
    elif dump.text.strip():
        capture.ip6tables_save = dump.text


def capture_nodes(
    nodes: list[KindNode],
    *,
    timeout: float = 10.0,
    max_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[NodeCapture]:
    """Read all nodes, both backends of each at once, in a bounded thread pool; results in the order given.
    As soon as a node's two dumps are in, its ip6tables (of the backend it uses) and kube-proxy's nftables tables
    join the queue, so those reads overlap the other nodes' reads instead of adding a round. The nftables tables are
    looked for on every node, kube-proxy chains in iptables or not: a node in nftables mode may still hold the
    iptables mode's chains (`stale-iptables-rules`), and a kind node answers a missing table at the cost of an exec.

    The per-node timeout is enforced by the docker client's socket timeout (set where the client is made: a hung
    exec raises there); the wait below is only a backstop so that no node can hold up the others' report.
    """
    tasks = [(node, backend) for node in nodes if node.running for backend in BACKENDS]
    dumps: dict[tuple[str, str], BackendDump] = {}
    ip6: dict[str, BackendDump] = {}
    nft_tables: dict[str, NftTables] = {}
    chosen: dict[str, NodeCapture] = {}
    if tasks:
        workers = max(1, min(len(tasks), max_workers or DEFAULT_MAX_WORKERS))
        # tasks queue in rounds when there are more than workers; the IPv6 reads ride along in the same budget
        # (they are small and start as soon as a node's own reads are in), so one hung node costs one timeout
        budget = timeout * -(-len(tasks) // workers) + 1.0
        deadline = time.monotonic() + budget
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="svcdoctor-node")
        futures = {pool.submit(read_backend, node.container, backend): (node, backend) for node, backend in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
            if not done:
                break  # the backstop: what has not answered by now is reported as timed out
            for future in done:
                node, backend = futures[future]
                if backend == "ip6":
                    ip6[node.name] = future.result()
                    continue
                if backend == "nftables":
                    nft_tables[node.name] = future.result()  # read_nft_tables does not raise
                    continue
                dumps[(node.name, backend)] = future.result()  # read_backend does not raise
                if all((node.name, b) in dumps for b in BACKENDS):
                    if progress:
                        progress(f"{node.name}: rules read")
                    capture = assemble_capture(node, dumps[(node.name, "nft")], dumps[(node.name, "legacy")], timeout)
                    chosen[node.name] = capture
                    if not capture.error and capture.backend:
                        more = pool.submit(read_backend, node.container, capture.backend, 3,
                                           IP6_SAVE_COMMANDS[capture.backend])
                        futures[more] = (node, "ip6")
                        pending.add(more)
                    if not capture.error:
                        tables = pool.submit(read_nft_tables, docker_runner(node.container))
                        futures[tables] = (node, "nftables")
                        pending.add(tables)
        pool.shutdown(wait=False, cancel_futures=True)
    captures = []
    for node in nodes:
        if not node.running:
            captures.append(_failed(node, f"container is {node.state}, not running"))
            continue
        capture = chosen.get(node.name)
        if capture is None:
            nft, legacy = (
                dumps.get((node.name, b)) or BackendDump(b, error=f"{SAVE_COMMANDS[b][0]}: timed out", timed_out=True)
                for b in BACKENDS
            )
            capture = assemble_capture(node, nft, legacy, timeout)
        elif not capture.error:
            if capture.backend:
                attach_ip6tables(capture, ip6.get(node.name))
            attach_nftables(capture, nft_tables.get(node.name) or NftTables(error="nft: timed out"))
        captures.append(capture)
    return captures


def _failed(node: KindNode, reason: str) -> NodeCapture:
    return NodeCapture(
        name=node.name, internal_ip=node.internal_ip, role=node.role, error=reason,
        source=f"docker container {node.name}", read_via="docker exec",
    )
