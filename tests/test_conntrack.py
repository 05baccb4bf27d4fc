"""The reader of conntrack's text (svcdoctor/model/conntrack.py) and the collection around it
(svcdoctor/collect/conntrack_reads.py), on what conntrack 1.4.7 and the kernel really printed.

The texts are captures of a network namespace with kube-proxy's nftables rules and real connections to its
services (tests/conntrack_node.py wrote tests/fixtures/conntrack/nft-node.json; run it to capture them again). The
tests marked netns make the same namespace again and read what conntrack prints now.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conntrack_node import (AS_NOBODY, FIXTURE, IPV6_ENDPOINT, IPV6_SERVICE, WEB, WEB_QUERIES, WITHOUT_NET_ADMIN,
                            TrafficNode, endpoint_counts)
from netns import require_netns
from nft_rules import NODE_IP, ruleset
from svcdoctor.collect.conntrack_reads import (CONNTRACK_SCRIPT, PROC_FILE, ConntrackQuery, ConntrackSeries,
                                               conntrack_argv, parse_conntrack_output)
from svcdoctor.errors import UsageError
from svcdoctor.model.conntrack import IPV4, IPV6, read_flow, read_flows

CAPTURE = json.loads(FIXTURE.read_text())
LISTINGS = CAPTURE["listings"]
WHOLE_TABLE = ("conntrack -L", "conntrack -L -o id", "conntrack -L -o extended,id", "/proc/net/nf_conntrack")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def connections(text: str) -> Counter:
    """What identifies each connection whatever the format: family, protocol and both tuples."""
    return Counter((f.family, f.protocol, f.original, f.reply) for f in read_flows(text).flows)


# --- the reader -------------------------------------------------------------------------------------------------------
def test_every_format_lists_the_same_connections():
    for name in WHOLE_TABLE:
        listing = read_flows(LISTINGS[name])
        assert not listing.unread and not listing.messages, name
        assert len(listing.flows) == len(lines(LISTINGS[name])), name  # one connection a line, none left out
    first = connections(LISTINGS[WHOLE_TABLE[0]])
    assert all(connections(LISTINGS[name]) == first for name in WHOLE_TABLE[1:])
    assert {f[1] for f in first} == {"tcp", "udp", "icmp"} and {f[0] for f in first} == {IPV4, IPV6}


def test_ids_come_with_o_id_and_never_from_the_proc_file():
    with_ids = {f.original: f.id for f in read_flows(LISTINGS["conntrack -L -o id"]).flows}
    extended = {f.original: f.id for f in read_flows(LISTINGS["conntrack -L -o extended,id"]).flows}
    assert with_ids == extended and all(i and i.isdigit() for i in with_ids.values())
    assert len(set(with_ids.values())) == len(with_ids)  # one id a connection
    for name in ("conntrack -L", "/proc/net/nf_conntrack"):
        assert all(f.id is None for f in read_flows(LISTINGS[name]).flows), name


def test_ipv6_addresses_read_alike_from_conntrack_and_from_the_kernels_full_form():
    proc = LISTINGS["/proc/net/nf_conntrack"]
    assert "fd00:0096:0000:0000:0000:0000:0000:0050" in proc  # the kernel writes them in full (%pI6)
    for name in ("conntrack -L", "/proc/net/nf_conntrack", "conntrack -L -f ipv6 -o extended,id"):
        v6 = [f for f in read_flows(LISTINGS[name]).flows if f.family == IPV6]
        assert len(v6) == 2, name
        assert {(f.original.dst, f.original.dport, f.reply.src, f.reply.sport) for f in v6} == {
            (IPV6_SERVICE, 80, IPV6_ENDPOINT, 80)}
        assert all(f.dnat for f in v6)
    # without -o extended the family is the address's
    assert read_flows(LISTINGS["conntrack -L"]).flows[0].family == IPV4


def test_an_icmp_tuples_id_is_not_the_connections_id():
    (ping,) = [f for f in read_flows(LISTINGS["conntrack -L -o extended,id"]).flows if f.protocol == "icmp"]
    line = next(line for line in lines(LISTINGS["conntrack -L -o extended,id"]) if " icmp " in line)
    ids = [w[3:] for w in line.split() if w.startswith("id=")]
    assert len(ids) == 3  # the request's, the reply's, and the connection's
    icmp_id, conn_id = ids[0], ids[-1]
    assert ping.id == conn_id != icmp_id and ping.original.sport is None and not ping.dnat


def test_states_flags_and_what_was_dnatted():
    flows = read_flows(LISTINGS["conntrack -L -o extended,id"]).flows
    (syn,) = [f for f in flows if f.state == "SYN_SENT"]
    assert "UNREPLIED" in syn.flags and not syn.dnat and syn.original.dport == 8080
    (lost,) = [f for f in flows if f.protocol == "udp" and "UNREPLIED" in f.flags]
    assert lost.state is None and not lost.dnat
    to_web = [f for f in flows if f.original.dst == WEB.cluster_ip]
    assert to_web and all(f.dnat and f.reply.src in WEB.endpoints and f.state == "TIME_WAIT"
                          and "ASSURED" in f.flags for f in to_web)
    node_port = [f for f in flows if f.original.dport == WEB.node_port]
    assert node_port and all(f.original.dst == NODE_IP and f.dnat for f in node_port)


def test_lines_that_are_not_connections():
    listing = read_flows("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n"
                         "conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters\n"
                         "this is not conntrack\n")
    assert listing.flows == [] and listing.unread == ["this is not conntrack"]
    assert listing.messages == ["conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters"]
    assert read_flow("tcp 6 119 TIME_WAIT src=1.2.3.4") is None  # one tuple only: cut short
    assert read_flow("") is None


def test_only_the_ports_asked_for_are_read_from_the_whole_table():
    proc = LISTINGS["/proc/net/nf_conntrack"]
    flows = read_flows(proc, {WEB.node_port}).flows
    assert flows and {f.original.dport for f in flows} == {WEB.node_port}
    assert len(flows) == sum(1 for f in read_flows(proc).flows if f.original.dport == WEB.node_port)


# --- the sampler's script and what it prints ----------------------------------------------------------------------
def test_the_script_is_a_constant_and_its_arguments_are_checked():
    argv = conntrack_argv(WEB_QUERIES)
    assert argv[:5] == ["sh", "-c", CONNTRACK_SCRIPT, "sh", "conntrack"]
    assert argv[5:] == ["ipv4:tcp:80", "ipv4:tcp:30080"] == CAPTURE["queries"]
    # conntrack runs once, to list: never -D, -F, -U, -I (changes) or -z (zeroes counters while listing)
    assert CONNTRACK_SCRIPT.count('"$ct"') == 3  # `command -v "$ct"`, and the listing: by port, or unfiltered
    assert '"$ct" -L -f "$f" -p "$p" --orig-port-dst "$d" -o extended,id 2>&1 1>&3 3>&-' in CONNTRACK_SCRIPT
    assert 'if [ "$a" = "$f" ]; then err=$("$ct" -L -f "$f" -o extended,id 2>&1 1>&3 3>&-)' in CONNTRACK_SCRIPT
    assert ConntrackQuery("IPv6", "udp", 53).argv() == ["conntrack", "-L", "-f", "ipv6", "-p", "udp",
                                                        "--orig-port-dst", "53", "-o", "extended,id"]
    assert (ConntrackQuery("IPv6").arg, ConntrackQuery("IPv6").argv()) == (
        "ipv6", ["conntrack", "-L", "-f", "ipv6", "-o", "extended,id"])
    for bad in (ConntrackQuery("IPv4", "tcp; conntrack -F", 80), ConntrackQuery("ipx", "tcp", 80),
                ConntrackQuery("IPv4", "tcp", 0), ConntrackQuery("IPv4", "tcp", 70000), ConntrackQuery("ipx"),
                ConntrackQuery("IPv4", "tcp"), ConntrackQuery("IPv4", None, 80), ConntrackQuery("IPv4", "tcp", "80")):
        with pytest.raises(UsageError):
            conntrack_argv([bad])


def test_the_scripts_samples_read_as_the_connections_each_endpoint_served():
    seen: set = set()
    for sample in CAPTURE["samples"]:
        reading = parse_conntrack_output(sample["reading"])
        assert (reading.via, reading.error, reading.note, reading.unread) == ("conntrack", None, None, 0)
        new = [f for f in reading.flows if f.key not in seen]
        served = endpoint_counts(sample["servedSincePreviousSample"])
        by_endpoint: dict[str, int] = {}
        for f in new:
            by_endpoint[f"{f.reply.src}:{f.reply.sport}"] = by_endpoint.get(f"{f.reply.src}:{f.reply.sport}", 0) + 1
        assert by_endpoint == served
        seen = {f.key for f in reading.flows}


def test_without_cap_net_admin_the_proc_file_is_read_and_said_so():
    reading = parse_conntrack_output(CAPTURE["denied"]["no CAP_NET_ADMIN"], {80, 30080})
    assert reading.via == PROC_FILE and reading.error is None
    assert reading.note == ("conntrack -L: Operation failed: sorry, you must be root or get CAP_NET_ADMIN capability "
                            f"to do this; read {PROC_FILE} instead")
    assert {f.original.dport for f in reading.flows} == {80, 30080} and all(f.id is None for f in reading.flows)


def test_when_nothing_may_be_read_the_reason_is_one_line():
    reading = parse_conntrack_output(CAPTURE["denied"]["nobody"], {80})
    assert reading.flows == [] and reading.via is None
    assert reading.error == ("conntrack -L: Operation failed: sorry, you must be root or get CAP_NET_ADMIN capability "
                             f"to do this, and cat {PROC_FILE}: Permission denied: connections cannot be counted here")


# --- live: the same namespace made again, read now ------------------------------------------------------------------
@pytest.fixture(scope="module")
def node():
    require_netns()
    with TrafficNode() as made:
        made.load_nft(ruleset([WEB]))
        made.traffic(connect={f"{WEB.cluster_ip}:80/tcp": 6, f"{NODE_IP}:30080/tcp": 3})
        yield made


@pytest.mark.netns
def test_what_conntrack_prints_now_reads_without_a_line_left_over(node):
    for text in (node.conntrack("-L", "-o", "extended,id"), node.conntrack("-L"), node.proc()):
        listing = read_flows(text)
        assert not listing.unread and len(listing.flows) == len(lines(text))
    served = node.traffic(connect={f"{WEB.cluster_ip}:80/tcp": 5})
    after = parse_conntrack_output(node.exec_argv(conntrack_argv(WEB_QUERIES)).stdout)
    assert after.via == "conntrack" and len(after.flows) == 6 + 3 + 5
    assert sum(endpoint_counts(served).values()) == 5


@pytest.mark.netns
def test_a_node_without_the_conntrack_binary_is_read_from_the_proc_file(node):
    hidden = node.exec_argv(conntrack_argv(WEB_QUERIES), "env", "PATH=/usr/bin:/bin")  # conntrack is in /usr/sbin
    assert hidden.stdout.startswith("#missing conntrack\n#proc\n")
    reading = parse_conntrack_output(hidden.stdout, {80, 30080})
    assert reading.via == PROC_FILE
    assert reading.note == f"conntrack is not installed on the node; read {PROC_FILE} instead"
    with_binary = parse_conntrack_output(node.exec_argv(conntrack_argv(WEB_QUERIES)).stdout)
    assert Counter(f.original for f in reading.flows) == Counter(f.original for f in with_binary.flows)


@pytest.mark.netns
def test_a_node_with_neither_conntrack_nor_its_proc_file(node):
    # a /proc of its own without the file, as on a kernel without CONFIG_NF_CONNTRACK_PROCFS
    neither = node.exec_argv(["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh",
                              "env", "PATH=/usr/bin:/bin", *conntrack_argv(WEB_QUERIES)])
    assert neither.stdout == f"#missing conntrack\n#missing {PROC_FILE}\n", neither.stderr
    assert parse_conntrack_output(neither.stdout).error == (
        "conntrack is not installed on the node, and there is no /proc/net/nf_conntrack (a kernel without "
        "CONFIG_NF_CONNTRACK_PROCFS): connections cannot be counted here")


@pytest.mark.netns
def test_the_denied_reads_are_what_the_capture_says(node):
    for name, wrapper in (("no CAP_NET_ADMIN", WITHOUT_NET_ADMIN), ("nobody", AS_NOBODY)):
        got = parse_conntrack_output(node.exec_argv(conntrack_argv(WEB_QUERIES), *wrapper).stdout, {80, 30080})
        captured = parse_conntrack_output(CAPTURE["denied"][name], {80, 30080})
        assert (got.via, got.error, got.note) == (captured.via, captured.error, captured.note), name


class NamespaceTarget:
    """A kube-proxy pod's exec as ConntrackSeries uses it (`exec_run(argv)`), run in the namespace, with the PATH
    given (to take the conntrack binary away)."""

    def __init__(self, node: TrafficNode, path: str | None = None):
        self.node, self.path = node, path

    def exec_run(self, argv, demux=True):
        from svcdoctor.collect.pod_exec import ExecFailed, ExecResult

        proc = self.node.exec_argv(argv, *(("env", f"PATH={self.path}") if self.path else ()))
        if proc.returncode == 127:  # what the API server says when the runtime cannot start the command
            raise ExecFailed(f'exec: "{argv[0]}": executable file not found in $PATH')
        return ExecResult(proc.returncode, (proc.stdout.encode(), proc.stderr.encode()))


@pytest.mark.netns
def test_without_a_shell_each_listing_is_its_own_exec_and_reads_the_same(node):
    series = ConntrackSeries(WEB_QUERIES)
    text, _warnings = series(NamespaceTarget(node))
    assert text.count("#conntrack ") == 2 and "#proc" not in text
    by_script = parse_conntrack_output(node.exec_argv(conntrack_argv(WEB_QUERIES)).stdout)
    assert Counter((f.id, f.key) for f in parse_conntrack_output(text).flows) == Counter(
        (f.id, f.key) for f in by_script.flows)
    text, _warnings = series(NamespaceTarget(node, path="/usr/bin:/bin"))
    assert text.startswith("#missing conntrack\n#proc\n")
    assert parse_conntrack_output(text, {80, 30080}).via == PROC_FILE


@pytest.mark.netns
def test_a_listing_longer_than_a_buffer_keeps_every_line(node):
    # conntrack writes its listing in 4 KB pieces and its count to stderr: the script keeps the count apart, or it
    # would land inside a connection's line
    node.traffic(connect={f"{WEB.cluster_ip}:80/tcp": 80})
    text = node.exec_argv(conntrack_argv(WEB_QUERIES)).stdout
    listing = text.split("#conntrack ipv4:tcp:80\n", 1)[1].split("#status", 1)[0]
    assert len(listing) > 3 * 4096 and read_flows(listing).unread == []
    assert listing.rstrip().splitlines()[-1].startswith("conntrack v1.4.7 (conntrack-tools): ")  # after the listing
    everything = read_flows(node.conntrack("-L", "-o", "extended,id")).flows
    assert Counter((f.id, f.key) for f in parse_conntrack_output(text).flows) == Counter(
        (f.id, f.key) for f in everything if f.original.dport in (80, WEB.node_port))
