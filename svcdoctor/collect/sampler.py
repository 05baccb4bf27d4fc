"""Cheap, repeated reads of rule counters for `watch`: one `docker exec` per node and sample, all nodes at once.

For one service, a sample reads only that service's chains and the filter chains where kube-proxy writes its
DROP/REJECT rules, with `iptables -t TABLE -S CHAIN -v`. Measured on a node with 1,000 services (16,000 rules,
iptables-nft 1.8.9; benchmarks/bench_watch.py): `iptables-nft-save -c` takes ~360 ms and prints 1.3 MB, because it
fetches the whole ruleset; `iptables -S CHAIN -v` fetches just that chain, and eight of them in one exec take
~55 ms, about one `docker exec NODE true` round trip. Several chains in one exec need a loop, so the exec runs a
constant `sh` script and the chain names go in as its positional arguments: no text of anyone's becomes shell
code (and the names are checked to be chain names before they leave). On a dual-stack node the same exec lists
the service's IPv6 chains with ip6tables too: kube-proxy's IPv6 proxier writes chains of the same names there.

This file holds both ends of that exchange: the script, and the parser of what it prints (`#chain`/`#status`).

Each node is read with the iptables of the backend collection found its rules in. Never the other one:
`iptables-legacy -t nat …` on an nft node would create an empty legacy nat table in the node's netns (and make
iptables-nft warn about "legacy tables present" from then on; svcdoctor/collect/node_rules.py). For the same
reason ip6tables is asked only about the tables the first read found in the node's ip6tables.

Without a service, a sample is the whole `iptables-<backend>-save -c` of every node (and `ip6tables-…-save -c` of a
dual-stack one): that is what "the busiest rules of the cluster" takes.

Through the Kubernetes API (`watch --via api`, or a context that is not a kind cluster here) the same reads go to
each node's kube-proxy pod over `pods/exec` (collect/pod_exec.py), and there no shell may exist (distroless
kube-proxy images): each chain is then its own exec of the iptables binary, argv only (`chain_reads`), one after
the other per node and all nodes at once, and the answers are put together in the script's `#chain`/`#status`
form, so that one parser reads both. A node whose kube-proxy pod is gone is reported in every sample; helper pods
(`--debug-pod`) are not made for watch: a sample would need one alive for the whole watch.

Where a node's rules keep no counters (kube-proxy's nftables mode), or with `watch --source conntrack`, a sample
lists the node's conntrack table instead, through the same doors and deadlines (`read_conntrack`; the script and
its parser are in collect/conntrack_reads.py).

Read-only by construction: `iptables -S -v` and `iptables-*-save -c` list, and so does `conntrack -L`; nothing here
zeroes a counter (`-Z`, `conntrack -z`), changes a rule or changes conntrack's table. Each node's read runs in a
daemon thread with a deadline, so a wedged node cannot hold up a sample (it is reported, and not asked again until
its previous read has returned), nor Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from svcdoctor.collect import kind
from svcdoctor.collect.conntrack_reads import ConntrackQuery, ConntrackSeries, conntrack_argv
from svcdoctor.collect.node_rules import IP6_SAVE_COMMANDS, SAVE_COMMANDS, split_warnings
from svcdoctor.errors import UsageError
from svcdoctor.model.rules import rule_from_line
from svcdoctor.model.watch.listing import FAMILIES, IPV4, IPV6, ChainListing, Listings
from svcdoctor.collect.iptables_argv import IP6TABLES, IPTABLES, valid_chain_name

# `-w 5`: legacy iptables takes the xtables lock, which kube-proxy's iptables-restore holds while it writes; wait
# for it rather than fail the sample (iptables-nft accepts and ignores -w). `#status` keeps "no such chain" (1)
# apart from other failures: a chain that is not there is news (it disappeared), an error is not. An argument
# `TABLE:CHAIN` is listed with iptables ($1), `6:TABLE:CHAIN` with ip6tables ($2); `#chain` says which.
CHAIN_SCRIPT = (
    'ip4=$1; ip6=$2; shift 2; '
    'for a in "$@"; do ipt=$ip4; f=IPv4; case $a in 6:*) ipt=$ip6; f=IPv6; a=${a#6:};; esac; '
    't=${a%%:*}; c=${a#*:}; echo "#chain $t $c $f"; "$ipt" -w 5 -t "$t" -S "$c" -v; echo "#status $?"; done'
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


def chain_argv(backend: str, chains: list[tuple[str, str]], ipv6_chains: list[tuple[str, str]] = ()) -> list[str]:
    """The exec's argv: `sh -c SCRIPT sh iptables-nft ip6tables-nft TABLE:CHAIN … 6:TABLE:CHAIN …` (the script is a
    constant)."""
    if backend not in IPTABLES:
        raise UsageError(f"unknown iptables backend {backend!r}")
    args = [_chain_arg(table, chain) for table, chain in chains]
    args += ["6:" + _chain_arg(table, chain) for table, chain in ipv6_chains]
    return ["sh", "-c", CHAIN_SCRIPT, "sh", IPTABLES[backend], IP6TABLES[backend], *args]


def chain_reads(backend: str, chains: list[tuple[str, str]], ipv6_chains: list[tuple[str, str]] = ()
                ) -> list[tuple[str, str, str, list[str]]]:
    """Without a shell: one argv per chain, `iptables-nft -w 5 -t TABLE -S CHAIN -v` (ip6tables for IPv6), as
    (table, chain, family, argv)."""
    if backend not in IPTABLES:
        raise UsageError(f"unknown iptables backend {backend!r}")
    out = []
    for family, binary, listed in ((IPV4, IPTABLES[backend], chains), (IPV6, IP6TABLES[backend], ipv6_chains)):
        for table, chain in listed:
            _chain_arg(table, chain)
            out.append((table, chain, family, [binary, "-w", "5", "-t", table, "-S", chain, "-v"]))
    return out


def _chain_arg(table: str, chain: str) -> str:
    if table not in TABLES or not valid_chain_name(chain):
        raise UsageError(f"not a chain svcdoctor would read: {table}:{chain}")
    return f"{table}:{chain}"


def save_argv(backend: str, family: str = IPV4) -> list[str]:
    return list((SAVE_COMMANDS if family == IPV4 else IP6_SAVE_COMMANDS)[backend])


def parse_chain_listings(text: str) -> dict[str, Listings]:
    """Parse the script's output into family -> (table, chain) -> listing: for each chain a
    `#chain TABLE CHAIN FAMILY` line (no FAMILY: IPv4), what `iptables -S CHAIN -v` printed, and `#status N` (its
    exit status: 0 listed, 1 no such chain; anything else is an error for that chain)."""
    out: dict[str, Listings] = {}
    current: ChainListing | None = None
    for line in text.splitlines():
        if line.startswith("#chain "):
            parts = line.split()
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in FAMILIES):
                continue
            family = parts[3] if len(parts) == 4 else IPV4
            current = ChainListing(parts[1], parts[2], present=False, family=family)
            out.setdefault(family, {})[(current.table, current.chain)] = current
        elif current is None:
            continue
        elif line.startswith("#status "):
            status = line[8:].strip()
            if status == "0":
                current.present = True
            elif status != "1":
                command = "iptables" if current.family == IPV4 else "ip6tables"
                current.error = f"{command} -S {current.chain} exited {status}"
            current = None
        elif line.startswith("-A "):
            name = line[3:].split(" ", 1)[0]
            if name == current.chain:
                current.rules.append(rule_from_line(current.table, name, len(current.rules) + 1, line))
    return out


def open_sampler(snapshot, opts, node_names: list[str], backends: dict[str, str], timeout: float = 10.0) -> Sampler:
    """The sampler for the door the first read went through: kube-proxy pods if its nodes were read over
    pods/exec, else the kind cluster's containers. `opts` is the command's InputOptions."""
    if any(n.read_via == "pods/exec" for n in snapshot.nodes if n.name in node_names):
        read = opts.api_read
        return Sampler.open_api(opts.kubeconfig, opts.context, node_names, backends, timeout,
                                getattr(read, "proxy_namespace", "kube-system"),
                                getattr(read, "proxy_selector", "k8s-app=kube-proxy"))
    return Sampler.open(snapshot.cluster, node_names, backends, timeout=timeout)


class Sampler:
    """Reads the nodes of one cluster, each with its own backend, in parallel: kind nodes through docker (a
    constant sh script per node and sample), others through their kube-proxy pods (argv only, a chain per exec)."""

    def __init__(self, nodes: list[kind.KindNode], backends: dict[str, str], timeout: float = 10.0, client=None, *,
                 targets: dict | None = None, argv_only: bool = False, unreadable: dict[str, str] | None = None,
                 on_close=None):
        # a target is what commands run in: a docker container, or a kube-proxy pod (pod_exec.PodTarget)
        self.targets = dict(targets) if targets is not None else {n.name: n.container for n in nodes}
        self.backends = dict(backends)
        self.timeout = timeout
        self.argv_only = argv_only  # no shell in the target: one exec per chain
        self.unreadable = dict(unreadable or {})  # node -> why it has no target (reported in every sample)
        self._client = client
        self._on_close = on_close
        self._busy: dict[tuple[str, str], threading.Thread] = {}

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

    @classmethod
    def open_api(cls, kubeconfig: str | None, context: str | None, node_names: list[str], backends: dict[str, str],
                 timeout: float = 10.0, proxy_namespace: str = "kube-system",
                 proxy_selector: str = "k8s-app=kube-proxy") -> Sampler:
        """Find the named nodes' kube-proxy pods again (the first, full read closed its session)."""
        from svcdoctor.collect import api_nodes, kube_api
        from svcdoctor.collect.pod_exec import PodTarget
        from svcdoctor.errors import UnreachableError

        try:
            session = kube_api.open_session(kubeconfig, context, None, timeout=timeout)
        except kube_api.ApiUnavailable as exc:
            raise UnreachableError(f"cannot read nodes through the Kubernetes API: {exc}") from exc
        try:
            listed = {n.name: n for n in api_nodes.list_nodes(session, None)}
            nodes = [listed[n] for n in node_names if n in listed]
            found = api_nodes.find_proxy_pods(session, nodes, proxy_namespace, proxy_selector)
        except BaseException:
            session.client.close()
            raise
        targets = {name: PodTarget(session, p.pod.namespace, p.pod.name, p.pod.container, timeout=timeout)
                   for name, p in found.items() if p.pod is not None}
        unreadable = {name: p.reason or "no kube-proxy pod" for name, p in found.items() if p.pod is None}
        unreadable.update({n: "no longer in the cluster" for n in node_names if n not in listed})
        return cls([], backends, timeout, targets=targets, argv_only=True, unreadable=unreadable,
                   on_close=session.client.close)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def read_chains(self, wanted: dict[str, dict[str, list[tuple[str, str]]]]) -> dict[str, NodeReading]:
        """node -> its listing of the given family -> (table, chain)s, both families in one exec per node (one exec
        per chain where there is no shell)."""
        make = chain_reads if self.argv_only else chain_argv
        argv = {(node, IPV4): make(self.backends[node], chains.get(IPV4, []), chains.get(IPV6, []))
                for node, chains in wanted.items() if any(chains.values())}
        return {node: reading for (node, _family), reading in self._parallel(argv).items()}

    def read_conntrack(self, wanted: dict[str, list[ConntrackQuery]]) -> dict[str, NodeReading]:
        """node -> its conntrack listings of the given family/protocol/port (collect/conntrack_reads.py): one exec
        per node (one per listing where there is no shell)."""
        argv = {(node, "conntrack"): (ConntrackSeries(queries) if self.argv_only else conntrack_argv(queries))
                for node, queries in wanted.items() if queries}
        return {node: reading for (node, _what), reading in self._parallel(argv).items()}

    def read_dumps(self, nodes: list[str], ipv6_nodes: list[str] = ()) -> dict[tuple[str, str], NodeReading]:
        """(node, family) -> `iptables-<backend>-save -c` of the node, and `ip6tables-…-save -c` of ``ipv6_nodes``
        (at the same time, one exec each)."""
        argv = {(node, IPV4): save_argv(self.backends[node]) for node in nodes}
        argv.update({(node, IPV6): save_argv(self.backends[node], IPV6) for node in ipv6_nodes})
        return self._parallel(argv)

    def _parallel(self, argv_by_read: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], NodeReading]:
        """Run each (node, family)'s argv in its own thread; wait for all of them until the deadline."""
        results: dict[tuple[str, str], NodeReading] = {}
        started: dict[tuple[str, str], threading.Thread] = {}
        for key, argv in argv_by_read.items():
            node = key[0]
            if node in self.unreadable:
                results[key] = NodeReading(node, error=self.unreadable[node], read_at=time.monotonic())
                continue
            busy = self._busy.get(key)
            if busy is not None and busy.is_alive():
                results[key] = NodeReading(node, error=f"still reading the previous sample (over {self.timeout:g}s)",
                                           read_at=time.monotonic())
                continue
            thread = threading.Thread(target=self._read, args=(key, argv, results), daemon=True,
                                      name=f"svcdoctor-watch-{node}")
            thread.start()
            started[key] = self._busy[key] = thread
        deadline = time.monotonic() + self.timeout + 1.0
        for key, thread in started.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                results[key] = NodeReading(key[0], error=f"did not answer within {self.timeout:g}s",
                                           read_at=time.monotonic())
        return {key: results[key] for key in argv_by_read if key in results}

    def _read(self, key: tuple[str, str], argv, results: dict[tuple[str, str], NodeReading]) -> None:
        node = key[0]
        target = self.targets[node]
        t0 = time.monotonic()
        try:
            if callable(argv) or (argv and isinstance(argv[0], tuple)):  # one exec per read (no shell)
                text, warnings = argv(target) if callable(argv) else _read_chain_by_chain(target, argv)
                results.setdefault(key, NodeReading(node, text, None, time.monotonic(), time.monotonic() - t0,
                                                    tuple(warnings)))
                return
            result = target.exec_run(argv, demux=True)
        except Exception as exc:  # the container stopped, the daemon went away, a socket timeout
            reason = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
            results.setdefault(key, NodeReading(node, error=(reason[0] if reason else type(exc).__name__)[:300],
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
        results.setdefault(key, reading)


def _read_chain_by_chain(target, reads: list[tuple[str, str, str, list[str]]]) -> tuple[str, list[str]]:
    """Each chain's own exec, the answers written as CHAIN_SCRIPT writes them (`#chain`, the listing, `#status`)."""
    parts: list[str] = []
    warnings: list[str] = []
    for table, chain, family, argv in reads:
        result = target.exec_run(argv, demux=True)
        stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, None)
        text, out_warnings = split_warnings((stdout or b"").decode("utf-8", "replace"))
        _err, err_warnings = split_warnings((stderr or b"").decode("utf-8", "replace"))
        warnings.extend(w for w in out_warnings + err_warnings if w not in warnings)
        parts.append(f"#chain {table} {chain} {family}\n{text.rstrip()}\n#status {result.exit_code}\n")
    return "".join(parts), warnings
