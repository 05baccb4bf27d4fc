"""`explain` of one service on a 3-node bundle of 10,000-service dumps: <= 1.0 x `iptables-restore --test` of one
node's dump, <= 500 MB peak; on a single-node bundle (the whole CLI process): <= 0.5 x. Runs the real CLI in a
child process; the baseline is measured in the same run. explain reads only what the service needs
(svcdoctor/model/scoped_read.py), which is what makes these goals reachable."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile

from common import best_cli_run, report, restore_test_seconds
from scale_dump import CACHE_DIR, real_dump


def make_bundle(root: str, text: str, nodes=("node-1", "node-2", "node-3")) -> None:
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump({"format": "svcdoctor-bundle/v1", "cluster": "scale", "nodes": list(nodes)}, f)
    for n in nodes:
        os.makedirs(os.path.join(root, "nodes", n))
        with open(os.path.join(root, "nodes", n, "iptables.txt"), "w") as f:
            f.write(text)


def main() -> int:
    text = real_dump(10000)
    baseline = restore_test_seconds(os.path.join(CACHE_DIR, "nat-10000.save"))
    with tempfile.TemporaryDirectory() as tmp:
        make_bundle(tmp, text)
        cmd = [sys.executable, "-m", "svcdoctor", "explain", "svc-4242", "-n", "scale", "--bundle", tmp, "-o", "json"]
        best, r = best_cli_run(cmd)
        if r.returncode != 0:
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        make_bundle(tmp, text, nodes=("node-1",))
        cmd = [sys.executable, "-m", "svcdoctor", "explain", "svc-4242", "-n", "scale", "--bundle", tmp, "-o", "json"]
        single, _ = best_cli_run(cmd)
    doc = json.loads(r.stdout)
    n_eps = len(doc["ports"][0]["nodes"][0]["entries"][0]["endpoints"])
    print(f"explain scale/svc-4242 on 3 nodes: {best:.3f}s wall, {peak_mb:.0f} MB peak, {n_eps} endpoints; "
          f"iptables-restore --test baseline {baseline:.3f}s")
    ok = report("explain on 3 nodes / restore baseline", best / baseline, 1.0)
    ok &= report("explain on 1 node / restore baseline", single / baseline, 0.5)
    report("explain wall (absolute, for reference; noisy)", best, 1.0, "s")
    ok &= report("explain peak memory", peak_mb, 500, " MB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
