"""Issue #5: `watch` on a big cluster. One sample over 4 nodes with 1,000 services each, for one service:
goal <= 0.3 s; svcdoctor's own CPU at --interval 2: goal <= 10% of one core.

The nodes are real containers (the lab's light node image) holding kube-proxy 1.28's rules for 1,000 services
(ClusterIP, NodePort with externalTrafficPolicy Cluster and Local, some without endpoints), as
`svcdoctor.model.expected` writes them, loaded with the real iptables-restore. They form a kind-labelled cluster
named `svcbench` that lives only for the run (label `svcdoctor.bench`; removed at the end, also on failure).

Baselines measured in the same run, because this machine is noisy: one `docker exec NODE true` round trip (the
floor of any per-node read), and one full `iptables-save -c` read of all nodes (what a sample without the
per-service path would cost). The CPU figure runs the real CLI twice (--count 1 and --count 1+N) and divides the
difference in the child's CPU time by N intervals: the first, full read is setup, not the steady state.

    python benchmarks/bench_watch.py [--services 1000] [--samples 5] [--keep]
Needs root (privileged node containers); starts dockerd if none answers, and stops what it started.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import report, single_file_tar  # noqa: E402

CLUSTER = "svcbench"
BENCH_LABEL = "svcdoctor.bench"  # not the lab's label: the lab's teardown never touches these, and vice versa
NODES = (("svcbench-control-plane", "control-plane"), ("svcbench-worker", "worker"),
         ("svcbench-worker2", "worker"), ("svcbench-worker3", "worker"))
WATCHED = "bench/svc-9"  # a NodePort with externalTrafficPolicy Local: nat entries, SVC + SVL + EXT, filter DROPs
SAMPLE_GOAL_SECONDS = 0.3
CPU_GOAL_SHARE = 0.10


def cluster_model(n_services: int):
    """1,000 services in the mix a real cluster has: mostly ClusterIP, some NodePort (Cluster and Local
    policy, Local ones without a pod on two nodes), one in a hundred without endpoints."""
    from svcdoctor.model.cluster import ClusterModel, Endpoint, ServicePort

    model = ClusterModel()
    workers = [name for name, role in NODES if role == "worker"]
    for i in range(n_services):
        kind = i % 10
        sp = ServicePort("bench", f"svc-{i}", "http", "TCP", 80, target_port=8080,
                         cluster_ips=[f"10.201.{i // 250}.{i % 250 + 1}"])
        if kind in (7, 8, 9):
            sp.type, sp.node_port = "NodePort", 30000 + i
            sp.external_traffic_policy = "Local" if kind == 9 else "Cluster"
        if i % 100 != 50:
            hosts = workers[:2] if kind == 9 else workers
            for k, node in enumerate(hosts):
                ip = f"10.10.{k + 2}.{10 + i % 200}"
                sp.endpoints.append(Endpoint(ip, 8080, node=node, pod=f"bench/pod-{i}-{k}"))
                model.pods_by_ip[ip], model.pod_nodes[ip] = f"bench/pod-{i}-{k}", node
        model.service_ports.append(sp)
    return model


def node_rules_text(model, node: str, index: int) -> str:
    from svcdoctor.model.expected import ProxySettings, expected_restore_text

    texts = expected_restore_text(model, ProxySettings(node_name=node, node_ips=(f"172.30.0.{index + 2}",),
                                                       cluster_cidr="10.10.0.0/16"))
    return texts["filter"] + texts["nat"]


def remove_bench_nodes(client) -> None:
    for container in client.containers.list(all=True, filters={"label": BENCH_LABEL}):
        container.remove(force=True)


def start_bench_nodes(client, n_services: int):
    """The 4 node containers, each with kube-proxy's rules for n_services services. Returns their containers."""
    from tests.lab import harness

    image = harness.build_light_image(client)
    privileges = harness.privilege_options(client, image)
    privileges.pop("unconfined_paths", None)  # only the lab's sysctls need a writable /proc/sys
    remove_bench_nodes(client)
    model = cluster_model(n_services)
    containers = []
    for name, role in NODES:
        containers.append(client.containers.run(
            image, ["sleep", "infinity"], name=name, hostname=name, detach=True, init=True,
            labels={"io.x-k8s.kind.cluster": CLUSTER, "io.x-k8s.kind.role": role, BENCH_LABEL: CLUSTER},
            **privileges))

    def program(args):
        index, container = args
        text = node_rules_text(model, container.name, index)
        container.put_archive("/", single_file_tar("bench/kube-proxy.rules", text.encode()))
        result = container.exec_run(["iptables-restore", "/bench/kube-proxy.rules"])
        if result.exit_code != 0:
            raise SystemExit(f"{container.name}: iptables-restore failed: {result.output.decode()[:300]}")
        return text.count("\n-A ")

    with ThreadPoolExecutor(max_workers=len(containers)) as pool:
        rules = list(pool.map(program, enumerate(containers)))
    return containers, rules


def exec_round_trip(containers, repeat: int = 9) -> float:
    """The floor of any per-node read: one `docker exec NODE true`, median."""
    times = []
    for i in range(repeat):
        container = containers[i % len(containers)]
        t0 = time.perf_counter()
        container.exec_run(["true"])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_sample_seconds(repeat: int) -> tuple[float, float, int, int]:
    """(median seconds of one service sample over all nodes, median of a full-dump sample, rows, nodes): the
    command's own code path, in this process, after the same first full read the command makes."""
    from svcdoctor.collect.sampler import Sampler
    from svcdoctor.inputs import build_view, resolve_service
    from svcdoctor.inputs import InputOptions, load
    from svcdoctor.commands.watch import _service_sample
    from svcdoctor.model.watch.plan import plan_service_watch
    from svcdoctor.model.watch.tracker import WatchTracker
    from svcdoctor.render.watch_view import sample_document

    loaded = load(InputOptions(cluster=CLUSTER, no_api=True, service=WATCHED))
    if loaded.failed:
        raise SystemExit(f"bench nodes could not be read: {loaded.failed}")
    ns, name = resolve_service(WATCHED, None, loaded)
    plan = plan_service_watch(build_view(loaded, ns, name), loaded.rules, loaded.cluster, loaded.rules6)
    backends = {n.name: n.backend for n in loaded.snapshot.nodes}
    sampler = Sampler.open(CLUSTER, list(loaded.rules), backends)
    try:
        tracker = WatchTracker(2.0, plan.service)
        times, full = [], []
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            frame = _service_sample(sampler, plan, tracker)
            sample_document(frame)
            times.append(time.perf_counter() - t0)
            if frame.failed:
                raise SystemExit(f"a sample missed nodes: {frame.failed}")
            rows = len(frame.rows)
        for _ in range(max(3, repeat // 3)):
            t0 = time.perf_counter()
            sampler.read_dumps(list(loaded.rules))
            full.append(time.perf_counter() - t0)
    finally:
        sampler.close()
    return statistics.median(times), statistics.median(full), rows, len(loaded.rules)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_cpu_share(interval: float, samples: int) -> tuple[float, float, float]:
    """The real CLI at --interval: its CPU time between its first and its last sample, over that wall time.
    Returns (share of one core, CPU seconds, wall seconds). The first sample comes after the slow full read
    (both backends of every node), which is setup and stays out of the window."""
    cmd = [sys.executable, "-m", "svcdoctor", "watch", WATCHED, "--cluster", CLUSTER, "--no-api",
           "--interval", f"{interval:g}", "--count", str(samples + 1), "-o", "json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        cpu0, wall0 = _cpu_seconds(proc.pid), time.monotonic()
        for _ in range(samples - 1):
            proc.stdout.readline()
        last = proc.stdout.readline()
        cpu1, wall1 = _cpu_seconds(proc.pid), time.monotonic()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not first or not last:
        raise SystemExit(f"watch exited {proc.returncode}: {err.strip()[:500]}")
    return (cpu1 - cpu0) / (wall1 - wall0), cpu1 - cpu0, wall1 - wall0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=5, help="samples in the CPU measurement (at --interval 2)")
    parser.add_argument("--repeat", type=int, default=9, help="timed samples for the per-sample figure")
    parser.add_argument("--keep", action="store_true", help="leave the bench nodes running (remove them yourself)")
    args = parser.parse_args()

    from tests.lab import harness

    reason = harness.unavailable_reason()
    if reason:
        print(f"bench_watch: {reason}")
        return 1
    daemon = harness.DockerDaemon()
    client = daemon.ensure()
    try:
        t0 = time.perf_counter()
        containers, rules = start_bench_nodes(client, args.services)
        print(f"{len(containers)} nodes with {args.services} services each ({min(rules)}-{max(rules)} rules a node), "
              f"ready in {time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs")
        round_trip = exec_round_trip(containers)
        sample, full, rows, nodes = one_sample_seconds(args.repeat)
        share, cpu, wall = steady_cpu_share(2.0, args.samples)
        print(f"baseline: one `docker exec NODE true` round trip {round_trip * 1000:.0f} ms; "
              f"a full-dump sample (iptables-save -c of every node) {full * 1000:.0f} ms")
        print(f"one sample of {WATCHED} on {nodes} nodes ({rows} rows): {sample * 1000:.0f} ms, median of "
              f"{args.repeat}; {sample / round_trip:.1f}x one exec round trip, {sample / full:.2f}x a full-dump sample")
        ok = report("one sample (seconds)", sample, SAMPLE_GOAL_SECONDS, "s")
        print(f"watch --interval 2, {args.samples} samples after the first: {cpu:.2f}s CPU in {wall:.1f}s")
        ok &= report("svcdoctor's CPU, share of one core", share, CPU_GOAL_SHARE)
        return 0 if ok else 1
    finally:
        if not args.keep:
            remove_bench_nodes(client)
        client.close()
        daemon.stop()


if __name__ == "__main__":
    raise SystemExit(main())
