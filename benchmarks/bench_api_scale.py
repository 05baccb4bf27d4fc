"""Issue #10: reading a big cluster through the Kubernetes API. `explain` of one service on 5,000 nodes at the
default --parallel: goal <= 60 s, never more open execs than --parallel, peak memory <= 1 GB, and 500 nodes in
<= 0.15 x the time of 5,000 (the cost grows with the nodes, no more).

The cluster is simulated: the stand-in API server (tests/lab/standin_apiserver.py; not a kube-apiserver) runs in
a child process and serves N nodes, one kube-proxy pod on each, and answers every `pods/exec` over the real
WebSocket protocol from a generated dump (benchmarks/scale_dump.py's kube-proxy-shaped rules for --services
services) after --latency seconds, as a kubelet's round trip would: the whole `iptables-nft-save -c`, or one
chain's `iptables-nft -t nat -S CHAIN -v` and the filter table, which is what explain asks for on a plain nft node
(svcdoctor/collect/api_scoped.py). The stand-in also counts the bytes every exec sent back: the bytes moved per
node are reported next to the whole dump's size. The stand-in counts open execs; svcdoctor runs
as the real CLI in a subprocess, so its wall time and peak RSS are its own.

    python benchmarks/bench_api_scale.py [--nodes 5000] [--small 500] [--services 50] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import report  # noqa: E402

DEFAULT_PARALLEL = 16
SERVICE = "scale/svc-7"
TIME_GOAL, MEMORY_GOAL_MB, RATIO_GOAL = 60.0, 1024.0, 0.15
# svcdoctor's own entry point, reporting its own peak RSS (not the stand-in's) on stderr as it exits
MEASURED = ("import atexit, resource, sys; atexit.register(lambda: sys.stderr.write("
            "'\\nMAXRSS %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
            "from svcdoctor.cli import main; main(sys.argv[1:])")


def cluster_objects(n_nodes: int) -> list[dict]:
    nodes, pods = [], []
    for i in range(n_nodes):
        name, ip = f"node-{i:05d}", f"10.{i // 65000}.{i // 250 % 256}.{i % 250 + 1}"
        zone = f"zone-{'abc'[i % 3]}"
        labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}
        if i < 3:
            labels["node-role.kubernetes.io/control-plane"] = ""
        nodes.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                      "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"kube-proxy-{i:05d}", "namespace": "kube-system",
                                  "labels": {"k8s-app": "kube-proxy"}},
                     "spec": {"nodeName": name, "hostNetwork": True, "containers": [{"name": "kube-proxy"}]},
                     "status": {"phase": "Running", "hostIP": ip}})
    return nodes + pods


def serve(n_nodes: int, services: int, latency: float, ready) -> None:
    """The child: the stand-in with N nodes; every exec answers the dump (nft) or nothing (legacy, ip6)."""
    from benchmarks.scale_dump import restore_text
    from tests.lab.standin_apiserver import StandinApiServer

    text = restore_text(services)
    dump, chains = text.encode(), chain_listings(text)
    empty_filter = b"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

    def runner(pod, container, argv):
        if argv[0] == "iptables-nft-save":
            return (empty_filter if "-t" in argv else dump), b"", 0
        if argv[0] == "iptables-nft" and "-S" in argv:
            chain = argv[argv.index("-S") + 1]
            listed = chains.get(chain) if argv[argv.index("-t") + 1] == "nat" else None
            if listed is None:
                return b"", f"iptables v1.8.9 (nf_tables): chain `{chain}' does not exist\n".encode(), 1
            return listed, b"", 0
        return b"", b"", 0  # legacy, ip6tables: nothing there

    server = StandinApiServer(cluster_objects(n_nodes), exec_runner=runner, exec_latency=latency).start()
    path = os.path.join(tempfile.mkdtemp(prefix="bench-api-"), "kubeconfig")
    server.write_kubeconfig(path, cluster="scale")
    ready.put((path, server.url))
    while True:
        time.sleep(3600)


def chain_listings(text: str) -> dict[str, bytes]:
    """What `iptables-nft -t nat -S CHAIN -v` prints for each chain of the dump (counters as `-c P B`)."""
    out: dict[str, list[str]] = {}
    builtins = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}
    for line in text.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            out[name] = [f"-P {name} ACCEPT -c 0 0" if name in builtins else f"-N {name}"]
        rule = line.split("] ", 1)[1] if line.startswith("[") else line
        if rule.startswith("-A "):
            counters = line[1:].split("]", 1)[0].split(":") if line.startswith("[") else ["0", "0"]
            head, _, target = rule.rpartition(" -j ")
            out[rule.split()[1]].append(f"{head} -c {counters[0]} {counters[1]} -j {target}")
    return {name: ("\n".join(lines) + "\n").encode() for name, lines in out.items()}


def _dump_size(services: int) -> int:
    from benchmarks.scale_dump import restore_text

    return len(restore_text(services).encode())


def run_once(n_nodes: int, services: int, latency: float, parallel: int) -> dict:
    ready = multiprocessing.Queue()
    child = multiprocessing.Process(target=serve, args=(n_nodes, services, latency, ready), daemon=True)
    child.start()
    try:
        kubeconfig, url = ready.get(timeout=120)
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", MEASURED, "explain", SERVICE, "--kubeconfig", kubeconfig,
                              "--via", "api", "--parallel", str(parallel), "-o", "json"],
                             cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        seconds = time.perf_counter() - t0
        peak_kb = int(run.stderr.rsplit("MAXRSS ", 1)[1].split()[0])
        if run.returncode != 0:
            raise SystemExit(f"explain exited {run.returncode}: {run.stderr[-2000:]}")
        doc = json.loads(run.stdout)
        shown = {n["node"] for p in doc["ports"] for n in p["nodes"]}
        with urllib.request.urlopen(url + "/standin/execs") as answer:
            execs = json.load(answer)
    finally:
        child.kill()
    return {"nodes": n_nodes, "seconds": seconds, "rss_mb": peak_kb / 1024, "execs": execs, "shown": len(shown),
            "bytes_per_node": execs["bytes"] / n_nodes, "dump_bytes": _dump_size(services)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL)
    args = parser.parse_args()
    small = run_once(args.small, args.services, args.latency, args.parallel)
    print(f"{small['nodes']} nodes: {small['seconds']:.1f}s, {small['execs']}, peak RSS {small['rss_mb']:.0f} MB")
    big = run_once(args.nodes, args.services, args.latency, args.parallel)
    print(f"{big['nodes']} nodes: {big['seconds']:.1f}s, {big['execs']}, peak RSS {big['rss_mb']:.0f} MB")
    print(f"moved per node: {big['bytes_per_node'] / 1024:.1f} KiB in {big['execs']['total'] / args.nodes:.1f} execs "
          f"(the whole dump: {big['dump_bytes'] / 1024:.1f} KiB)")
    ok = report(f"explain {SERVICE} on {args.nodes} nodes", big["seconds"], TIME_GOAL, "s")
    ok &= report("peak open execs", big["execs"]["peak"], args.parallel)
    ok &= report("peak memory", big["rss_mb"], MEMORY_GOAL_MB, " MB")
    ok &= report(f"{args.small} nodes / {args.nodes} nodes", small["seconds"] / big["seconds"], RATIO_GOAL)
    ok &= big["shown"] == args.nodes and small["shown"] == args.small
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
