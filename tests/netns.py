"""Real netfilter for tests: a throw-away network namespace to load rules into and dump them back.

    from netns import Namespace, require_netns

    def test_x():
        require_netns()                      # fails under CI=true when it cannot run, else skips
        with Namespace() as ns:
            ns.restore(text, backend="nft")  # iptables-nft-restore inside the namespace
            dump = ns.save(backend="nft")    # iptables-nft-save -c

Each namespace has its own nft and legacy (x_tables) rulesets, so nothing a test loads touches the host's rules.
The namespace is deleted on exit, also when the test fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    iptables: str
    restore: str
    save: str


BACKENDS = {
    "nft": Backend("nft", "iptables-nft", "iptables-nft-restore", "iptables-nft-save"),
    "legacy": Backend("legacy", "iptables-legacy", "iptables-legacy-restore", "iptables-legacy-save"),
}

_counter = itertools.count()


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    missing = [tool for tool in ("ip", *(b.restore for b in BACKENDS.values()), *(b.save for b in BACKENDS.values()))
               if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    return None


def require_netns() -> None:
    """Skip a netns test where it cannot run, except in CI (CI=true), where that is a failure."""
    reason = netns_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"netns test cannot run in CI: {reason}")
    pytest.skip(reason)


class Namespace:
    """A network namespace named svcdoctor-test-<pid>-<n>; use it as a context manager."""

    def __init__(self) -> None:
        self.name = f"svcdoctor-test-{os.getpid()}-{next(_counter)}"
        self._created = False

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True)
        self._created = True
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._created:
            subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)
            self._created = False

    def run(self, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the namespace; raise with its stderr when it fails."""
        proc = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def restore(self, text: str, backend: str = "nft", counters: bool = False) -> None:
        """iptables-restore [-c] the text (replaces the tables it names)."""
        b = BACKENDS[backend]
        self.run(b.restore, *(["-c"] if counters else []), input=text)

    def save(self, backend: str = "nft", counters: bool = True, with_warnings: bool = False) -> str:
        """iptables-save [-c]; with_warnings puts stderr's `# Warning: …` lines first, as `2>&1` would."""
        b = BACKENDS[backend]
        proc = self.run(b.save, *(["-c"] if counters else []))
        return (proc.stderr + proc.stdout) if with_warnings else proc.stdout

    def list_rules(self, table: str, backend: str = "nft", verbose: bool = True, with_warnings: bool = False) -> str:
        """`iptables -t TABLE -S [-v]`: no table header, `-P`/`-N`/`-A` lines, `-c P B` inline with -v."""
        b = BACKENDS[backend]
        proc = self.run(b.iptables, "-t", table, "-S", *(["-v"] if verbose else []))
        return (proc.stderr + proc.stdout) if with_warnings else proc.stdout

    def iptables(self, *args: str, backend: str = "nft") -> str:
        return self.run(BACKENDS[backend].iptables, *args).stdout


def round_trip(text: str, backend: str = "nft", counters: bool = True) -> str:
    """Load `text` into a fresh namespace and return what iptables-save [-c] prints for it."""
    with Namespace() as ns:
        ns.restore(text, backend)
        return ns.save(backend, counters=counters)
