"""Drive the lab by hand (from the repository root, as root):

    python -m tests.lab up          # dockerd if needed, node image, the seed scenario's cluster `myk8s`
    python -m tests.lab up --scenario nft   # the same cluster with kube-proxy in nftables mode (or: mixed)
    python -m tests.lab status
    python -m tests.lab apiserver   # the stand-in API server in the foreground (--scenario too); prints its kubeconfig
    python -m tests.lab down        # removes what the lab made; stops dockerd if `up` started it

Then e.g. `svcdoctor explain svc-clusterip --cluster myk8s --kubeconfig /tmp/svcdoctor-lab/kubeconfig`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from . import harness
from . import scenario as sc
from .standin_apiserver import StandinApiServer


SCENARIOS = {"seed": sc.seed_scenario, "nft": sc.nft_scenario, "mixed": sc.mixed_scenario}


def _dockerd_we_started() -> int | None:
    """The dockerd PID an earlier `up` recorded, if that process is still a dockerd."""
    pid_path = harness.DockerDaemon().pid_path
    try:
        pid = int(pid_path.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, ValueError):
        pid_path.unlink(missing_ok=True)
        return None
    return pid if cmdline.endswith(b"dockerd") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "apiserver"])
    parser.add_argument("--fault", action="append", default=[], metavar="NODE=FAULT",
                        help=f"plant a fault at `up` ({', '.join(sc.FAULTS)}); repeatable")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="seed",
                        help="kube-proxy's modes: seed (iptables), nft (nftables), mixed (nftables, worker2 iptables)")
    args = parser.parse_args(argv)
    reason = harness.unavailable_reason()
    if reason and args.command != "apiserver":
        print(f"lab unavailable: {reason}", file=sys.stderr)
        return 2
    if args.command == "apiserver":
        return _serve_apiserver(SCENARIOS[args.scenario]())
    daemon = harness.DockerDaemon()
    if args.command == "up":
        client = daemon.ensure()
        if daemon.started_here:
            print(f"started dockerd (pid {daemon.process.pid}, log {daemon.log_path}); `down` stops it")
        faults = dict(f.split("=", 1) for f in args.fault)
        lab = harness.Lab(client, scenario=SCENARIOS[args.scenario]().with_faults(**faults)).up()
        print(f"lab up in {lab.timings['total']:.1f}s ({', '.join(f'{k} {v:.1f}s' for k, v in lab.timings.items())})")
        _status(client)
        return 0
    if not daemon.answers():
        print("no docker daemon answers: nothing to do")
        return 0
    client = daemon.client()
    if args.command == "status":
        _status(client)
        return 0
    harness.Lab(client).down()
    print("lab containers removed")
    pid = _dockerd_we_started()
    if pid:
        harness.stop_pid(pid)
        harness.DockerDaemon().pid_path.unlink(missing_ok=True)
        print(f"stopped dockerd (pid {pid}), which `up` had started")
    return 0


def _status(client) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{harness.LAB_LABEL}={sc.CLUSTER}"}):
        nets = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        ip = (nets.get("kind") or {}).get("IPAddress") or "-"
        role = (container.labels or {}).get(harness.ROLE_LABEL, "client")
        print(f"  {container.name:32s} {container.status:8s} {ip:15s} {role}")


def _serve_apiserver(scenario: sc.Scenario) -> int:
    kubeconfig = harness.LAB_DIR / "kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    with StandinApiServer(scenario.api_objects()) as server:
        server.write_kubeconfig(kubeconfig)
        print(f"stand-in API server at {server.url}; kubeconfig {kubeconfig} (context kind-{sc.CLUSTER}). Ctrl-C stops it.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
