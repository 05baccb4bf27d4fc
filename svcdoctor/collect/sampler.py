"""Cheap, repeated reads of rule counters for `watch`: one `docker exec` per node and sample, all nodes at once.

For one service, a sample reads only that service's chains and the filter chains where kube-proxy writes its
DROP/REJECT rules, with `iptables -t TABLE -S CHAIN -v`. Measured on a node with 1,000 services (16,000 rules,
iptables-nft 1.8.9; benchmarks/bench_watch.py): `iptables-nft-save -c` takes ~360 ms and prints 1.3 MB, because it
fetches the whole ruleset; `iptables -S CHAIN -v` fetches just that chain, and eight of them in one exec take
~55 ms, about one `docker exec NODE true` round trip. Several chains in one exec need a loop, so the exec runs a
constant `sh` script and the chain names go in as its positional arguments: no text of anyone's becomes shell
code (and the names are checked to be chain names before they leave).

Each node is read with the iptables of the backend collection found its rules in. Never the other one:
`iptables-legacy -t nat …` on an nft node would create an empty legacy nat table in the node's netns (and make
iptables-nft warn about "legacy tables present" from then on; lab RECIPE §5.4).

Without a service, a sample is the whole `iptables-<backend>-save -c` of every node: that is what "the busiest
rules of the cluster" takes.

Read-only by construction: `iptables -S -v` and `iptables-*-save -c` list; nothing here zeroes a counter (`-Z`),
changes a rule or touches conntrack. Each node's read runs in a daemon thread with a deadline, so a wedged node
cannot hold up a sample (it is reported, and not asked again until its previous read has returned), nor Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from svcdoctor.collect import kind
from svcdoctor.collect.node_rules import SAVE_COMMANDS, split_warnings
from svcdoctor.exit_codes import UsageError

IPTABLES = {"nft": "iptables-nft", "legacy": "iptables-legacy"}
# `-w 5`: legacy iptables takes the xtables lock, which kube-proxy's iptables-restore holds while it writes; wait
# for it rather than fail the sample (iptables-nft accepts and ignores -w). `#status` keeps "no such chain" (1)
# apart from other failures: a chain that is not there is news (it disappeared), an error is not.
CHAIN_SCRIPT = (
    'ipt=$1; shift; '
    'for a in "$@"; do t=${a%%:*}; c=${a#*:}; echo "#chain $t $c"; "$ipt" -w 5 -t "$t" -S "$c" -v; echo "#status $?"; done'
)
TABLES = ("filter", "nat", "mangle", "raw", "security")


@dataclass(slots=True)
class NodeReading:
    """What one node printed for one sample."""

    node: str
    text: str = ""
    error: str | None = None
    read_at: float = 0.0  # time.monotonic() when the read returned: rates use the real gap between two reads
    seconds: float = 0.0  # how long the exec took
    warnings: tuple[str, ...] = ()


def chain_argv(backend: str, chains: list[tuple[str, str]]) -> list[str]:
    """The exec's argv: `sh -c SCRIPT sh iptables-nft TABLE:CHAIN …` (the script is a constant)."""
    from svcdoctor.model.watch import valid_chain_name

    if backend not in IPTABLES:
        raise UsageError(f"unknown iptables backend {backend!r}")
    args = []
    for table, chain in chains:
        if table not in TABLES or not valid_chain_name(chain):
            raise UsageError(f"not a chain svcdoctor would read: {table}:{chain}")
        args.append(f"{table}:{chain}")
    return ["sh", "-c", CHAIN_SCRIPT, "sh", IPTABLES[backend], *args]


def save_argv(backend: str) -> list[str]:
    return list(SAVE_COMMANDS[backend])


class Sampler:
    """Reads the nodes of one kind cluster, each with its own backend, in parallel."""

    def __init__(self, nodes: list[kind.KindNode], backends: dict[str, str], timeout: float = 10.0, client=None):
        self.nodes = {n.name: n for n in nodes}
        self.backends = dict(backends)
        self.timeout = timeout
        self._client = client
        self._busy: dict[str, threading.Thread] = {}

    @classmethod
    def open(cls, cluster: str | None, node_names: list[str], backends: dict[str, str],
             timeout: float = 10.0) -> Sampler:
        """Find the containers of the named nodes again (the first, full read closed its docker connection)."""
        client = kind.docker_client(timeout=timeout)
        try:
            name = kind.resolve_cluster(client, cluster)
            nodes = kind.select_nodes(kind.kind_nodes(client, name), node_names)
        except BaseException:
            client.close()
            raise
        return cls(nodes, backends, timeout, client)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def read_chains(self, wanted: dict[str, list[tuple[str, str]]]) -> dict[str, NodeReading]:
        """node -> its listing of the given (table, chain)s, one exec per node."""
        return self._parallel({node: chain_argv(self.backends[node], chains) for node, chains in wanted.items()
                               if chains})

    def read_dumps(self, nodes: list[str]) -> dict[str, NodeReading]:
        """node -> `iptables-<backend>-save -c` of the node."""
        return self._parallel({node: save_argv(self.backends[node]) for node in nodes})

    def _parallel(self, argv_by_node: dict[str, list[str]]) -> dict[str, NodeReading]:
        results: dict[str, NodeReading] = {}
        started: dict[str, threading.Thread] = {}
        for node, argv in argv_by_node.items():
            busy = self._busy.get(node)
            if busy is not None and busy.is_alive():
                results[node] = NodeReading(node, error=f"still reading the previous sample (over {self.timeout:g}s)",
                                            read_at=time.monotonic())
                continue
            thread = threading.Thread(target=self._read, args=(node, argv, results), daemon=True,
                                      name=f"svcdoctor-watch-{node}")
            thread.start()
            started[node] = self._busy[node] = thread
        deadline = time.monotonic() + self.timeout + 1.0
        for node, thread in started.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                results[node] = NodeReading(node, error=f"did not answer within {self.timeout:g}s",
                                            read_at=time.monotonic())
        return {node: results[node] for node in argv_by_node if node in results}

    def _read(self, node: str, argv: list[str], results: dict[str, NodeReading]) -> None:
        container = self.nodes[node].container
        t0 = time.monotonic()
        try:
            result = container.exec_run(argv, demux=True)
        except Exception as exc:  # the container stopped, the daemon went away, a socket timeout
            reason = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
            results.setdefault(node, NodeReading(node, error=(reason[0] if reason else type(exc).__name__)[:300],
                                                 read_at=time.monotonic()))
            return
        done = time.monotonic()
        stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, None)
        text, out_warnings = split_warnings((stdout or b"").decode("utf-8", "replace"))
        err_text, err_warnings = split_warnings((stderr or b"").decode("utf-8", "replace"))
        reading = NodeReading(node, text, None, done, done - t0, tuple(out_warnings + err_warnings))
        if result.exit_code != 0:
            first = (err_text.strip() or text.strip() or "no output").splitlines()[0][:300]
            reading.error = f"{argv[0] if argv[0] != 'sh' else argv[4]} exited {result.exit_code}: {first}"
        results.setdefault(node, reading)
