"""`check` over a 3-node bundle of 10,000-service dumps with matching API objects: <= 3.0 x `iptables-restore --test`
of one node's dump, <= 500 MB peak. Runs the real CLI in a child process, best of 3; the baseline is measured in the
same run. (The per-node comparison runs in forked workers on big inputs: checks/engine.py.)

The API objects are made here to match `scale_dump.restore_text`: Service scale/svc-N, port "http" 80 -> 8080,
cluster IP 10.201.N/250.N%250+1, three ready endpoints 10.10.{2,3,4}.(10 + N%200):8080, one on each node.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

from common import best_cli_run, report, restore_test_seconds
from scale_dump import CACHE_DIR, real_dump

NODES = ("node-1", "node-2", "node-3")
GOAL_SECONDS = 3.0  # printed for reference; the goal is the ratio
GOAL_RATIO = 3.0
GOAL_MB = 500


def api_objects(n_services: int) -> tuple[list[dict], list[dict]]:
    services, slices = [], []
    for i in range(n_services):
        name = f"svc-{i}"
        services.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "scale", "name": name, "labels": {"app": name, "tier": str(i % 3)}},
            "spec": {"type": "ClusterIP", "clusterIP": f"10.201.{i // 250}.{i % 250 + 1}",
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]},
        })
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": "scale", "name": f"{name}-abcde",
                         "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": [f"10.10.{k}.{10 + i % 200}"], "conditions": {"ready": True},
                           "nodeName": NODES[k - 2]} for k in (2, 3, 4)],
        })
    return services, slices


def make_bundle(root: str, text: str, n_services: int) -> None:
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump({"format": "svcdoctor-bundle/v1", "cluster": "scale", "nodes": list(NODES)}, f)
    for n in NODES:
        os.makedirs(os.path.join(root, "nodes", n))
        with open(os.path.join(root, "nodes", n, "iptables.txt"), "w") as f:
            f.write(text)
    os.makedirs(os.path.join(root, "cluster"))
    services, slices = api_objects(n_services)
    for name, items in (("services", services), ("endpointslices", slices)):
        with open(os.path.join(root, "cluster", f"{name}.json"), "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)


def stages(bundle: str) -> tuple[float, float, int]:
    """In this process: CPU seconds to read the bundle (parse, API objects) and to check it, and the findings.
    Attributes the child's wall time: what `check` adds on top of what every command pays to load the input."""
    from svcdoctor.commands.check import run_check
    from svcdoctor.inputs import InputOptions, load

    t0 = time.process_time()
    loaded = load(InputOptions(bundle=bundle))
    t1 = time.process_time()
    result = run_check(loaded)
    return t1 - t0, time.process_time() - t1, len(result.findings)


def main() -> int:
    n = 10000
    text = real_dump(n)
    baseline = restore_test_seconds(os.path.join(CACHE_DIR, f"nat-{n}.save"))
    with tempfile.TemporaryDirectory() as tmp:
        make_bundle(tmp, text, n)
        cmd = [sys.executable, "-m", "svcdoctor", "check", "--bundle", tmp, "-o", "json"]
        best, r = best_cli_run(cmd, ok_codes=(0, 1))
        if r.returncode not in (0, 1):
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        load_cpu, check_cpu, _ = min((stages(tmp) for _ in range(2)), key=lambda s: s[0] + s[1])
    doc = json.loads(r.stdout)
    print(f"check on 3 nodes x {n} services: {best:.3f}s wall (goal <= {GOAL_SECONDS}s), {peak_mb:.0f} MB peak "
          f"(goal <= {GOAL_MB} MB), {len(doc['findings'])} findings {doc['summary']}; "
          f"iptables-restore --test baseline {baseline:.3f}s")
    print(f"  in-process CPU: reading the bundle {load_cpu:.3f}s, the check itself {check_cpu:.3f}s")
    ok = report("check wall / restore baseline", best / baseline, GOAL_RATIO)
    ok &= report("check peak memory", peak_mb, GOAL_MB, " MB")
    ok &= len(doc["findings"]) == 0  # the generated objects match the dump: anything found is a false alarm
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
