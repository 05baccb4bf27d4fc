"""Issue #2: parsing one node's dump of 10,000 ClusterIP services x 3 endpoints (~150,000 lines of real
`iptables-save -c`) takes no longer than `iptables-restore --test` on the same file. Prints parse / restore."""

from __future__ import annotations

import os

from common import best_of, report, restore_test_seconds
from scale_dump import CACHE_DIR, real_dump

from svcdoctor.model.parse import parse_rules


def main() -> int:
    text = real_dump(10000)
    path = os.path.join(CACHE_DIR, "nat-10000.save")
    lines = text.count("\n")
    baseline = restore_test_seconds(path)
    parse = best_of(lambda: parse_rules(text, path))
    print(f"dump: {lines} lines; iptables-restore --test: {baseline:.3f}s; svcdoctor parse: {parse:.3f}s")
    return 0 if report("parse / iptables-restore --test", parse / baseline, 1.0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
