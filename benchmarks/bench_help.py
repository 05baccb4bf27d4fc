"""Issue #2: `svcdoctor --help` <= 0.25 s: docker and kubernetes are imported only by commands that need them.
Baseline in the same run: a bare `python -c pass` start."""

from __future__ import annotations

import subprocess
import sys

from common import best_of, report


def main() -> int:
    bare = best_of(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 5)
    helps = best_of(lambda: subprocess.run([sys.executable, "-m", "svcdoctor", "--help"], check=True,
                                           stdout=subprocess.DEVNULL), 5)
    loaded = subprocess.run([sys.executable, "-c", "import sys, svcdoctor.cli; "
                             "print(','.join(m for m in ('docker', 'kubernetes') if m in sys.modules))"],
                            capture_output=True, text=True).stdout.strip()
    print(f"python start {bare:.3f}s; svcdoctor --help {helps:.3f}s; heavy modules imported at start: {loaded or 'none'}")
    ok = report("svcdoctor --help", helps, 0.25, "s")
    ok &= report("--help / bare python start", helps / bare, 8.0)
    return 0 if ok and not loaded else 1


if __name__ == "__main__":
    raise SystemExit(main())
