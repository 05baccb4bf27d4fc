"""Issue #12: `report` of a 3-node bundle of 10,000 services (bench_check's bundle) takes at most 2 x `check` on the
same bundle, both timed here as the real CLI in a child process, best of 3; and the file stays small enough to
attach to a ticket (its size is printed; the goal is what common ticket systems accept, 25 MB).
"""

from __future__ import annotations

import os
import sys
import tempfile

from bench_check import make_bundle
from common import best_cli_run, report
from scale_dump import real_dump

GOAL_RATIO = 2.0
GOAL_MB = 25


def main() -> int:
    n = 10000
    text = real_dump(n)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = os.path.join(tmp, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, text, n)
        check, r = best_cli_run([sys.executable, "-m", "svcdoctor", "check", "--bundle", bundle, "-o", "json"],
                                ok_codes=(0, 1))
        out = os.path.join(tmp, "report.html")
        rep, r2 = best_cli_run([sys.executable, "-m", "svcdoctor", "report", "--bundle", bundle, "--out", out])
        if r is None or r2 is None or r2.returncode != 0:
            return 1
        size_mb = os.path.getsize(out) / 1e6
    print(f"report on 3 nodes x {n} services: {rep:.3f}s wall; check {check:.3f}s; report file {size_mb:.1f} MB")
    ok = report("report wall / check wall", rep / check, GOAL_RATIO)
    ok &= report("report file size", size_mb, GOAL_MB, " MB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
