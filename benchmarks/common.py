"""Shared benchmark helpers: machines here are noisy, so every number is printed next to a baseline measured in
the same run, and goals are stated as ratios against that baseline."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REFERENCE_RESTORE_SECONDS = 0.75  # `iptables-restore --test` of the 10,000-service dump on the reference machine


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def restore_test_seconds(path: str, repeat: int = 3) -> float:
    """The baseline: the kernel tools' own parser reading the same file (`iptables-restore --test` changes nothing)."""
    def run():
        with open(path) as f:
            subprocess.run(["iptables-restore", "--test"], stdin=f, check=True, stdout=subprocess.DEVNULL)
    return best_of(run, repeat)


def report(name: str, value: float, goal: float, unit: str = "") -> bool:
    ok = value <= goal
    print(f"{name}: {value:.3f}{unit} (goal <= {goal}{unit}) {'OK' if ok else 'OVER'}")
    return ok


# A user's install has bytecode (pip compiles on install); a machine that sets PYTHONDONTWRITEBYTECODE would make
# every timed run compile svcdoctor's modules from source first (~60 ms). The first of the runs writes it.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def best_cli_run(cmd: list[str], ok_codes=(0,), repeat: int = 3) -> tuple[float, subprocess.CompletedProcess | None]:
    """The best wall time of a command over `repeat` runs, and its last run; (inf, the failed run) when it fails."""
    best, run = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=CLI_ENV)
        best = min(best, time.perf_counter() - t0)
        if run.returncode not in ok_codes:
            print(run.stderr)
            return float("inf"), run
    return best, run


def single_file_tar(path: str, data: bytes) -> bytes:
    """A tar holding one file, for docker's put_archive (docker cp into a tmpfs would be invisible)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
