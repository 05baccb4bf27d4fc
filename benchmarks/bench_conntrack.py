"""`watch` counted from conntrack on a busy node: what one sample's read costs against listing the whole table.

A network namespace (tests/conntrack_node.py) holds kube-proxy's nftables rules for `default/web`, a few hundred
connections to it, and --others unrelated ones (UDP datagrams to as many addresses: each is a conntrack entry).
Timed, best of 3: the sampler's script for `watch default/web` (a `conntrack -L` per destination port, see
svcdoctor/collect/conntrack_reads.py) and svcdoctor reading its output; the baselines, in the same run, are one
unfiltered `conntrack -L -o extended,id` (what the sample would cost if it filtered in Python) and reading
/proc/net/nf_conntrack (the fallback), with svcdoctor's reading of each.

    python benchmarks/bench_conntrack.py [--others 60000]
Needs root (a network namespace).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from common import best_of, report  # noqa: E402
from conntrack_node import WEB, WEB_QUERIES, TrafficNode  # noqa: E402
from nft_rules import NODE_IP, ruleset  # noqa: E402
from svcdoctor.collect.conntrack_reads import conntrack_argv, parse_conntrack_output  # noqa: E402
from svcdoctor.model.conntrack import read_flows  # noqa: E402

FLOOD = ("import socket, sys\n"
         "n = int(sys.argv[1])\n"
         "for i in range(n):\n"
         "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "    s.sendto(b'x', ('10.%d.%d.%d' % (64 + i // 65536 % 64, i // 256 % 256, i % 256), 5353))\n"
         "    s.close()\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--others", type=int, default=60000)
    args = parser.parse_args()
    ports = {q.port for q in WEB_QUERIES}
    with TrafficNode() as node:
        node.load_nft(ruleset([WEB]))
        node.traffic(connect={f"{WEB.cluster_ip}:80/tcp": 200, f"{NODE_IP}:30080/tcp": 100})
        node.run(sys.executable, "-c", FLOOD, str(args.others))
        script = conntrack_argv(WEB_QUERIES)
        sample = node.exec_argv(script).stdout
        whole = node.conntrack("-L", "-o", "extended,id")
        proc = node.proc()
        listed = len(parse_conntrack_output(sample, ports).flows)
        print(f"table: {len(whole.splitlines())} connections, {len(whole) / 1e6:.1f} MB listed; "
              f"the service's: {listed}")
        read_script = best_of(lambda: node.exec_argv(script))
        read_whole = best_of(lambda: subprocess.run(["ip", "netns", "exec", node.name, "conntrack", "-L", "-o",
                                                     "extended,id"], capture_output=True))
        read_proc = best_of(lambda: subprocess.run(["ip", "netns", "exec", node.name, "cat",
                                                    "/proc/net/nf_conntrack"], capture_output=True))
        parse_sample = best_of(lambda: parse_conntrack_output(sample, ports))
        parse_whole = best_of(lambda: read_flows(whole))
        parse_proc = best_of(lambda: read_flows(proc, ports))
    print(f"unfiltered conntrack -L: {read_whole:.3f} s + reading it {parse_whole:.3f} s")
    print(f"/proc/net/nf_conntrack: {read_proc:.3f} s + reading the service's ports {parse_proc:.3f} s")
    print(f"the sampler's script: {read_script:.3f} s + reading it {parse_sample:.3f} s")
    return 0 if report("sample / unfiltered listing", (read_script + parse_sample) / (read_whole + parse_whole),
                       1.0, "x") else 1


if __name__ == "__main__":
    sys.exit(main())
