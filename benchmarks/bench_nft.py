"""Issue #13: reading kube-proxy's nftables table of 10,000 services (3 endpoints each): svcdoctor's reading of
`nft -j list table ip kube-proxy` <= 0.5 x the time `nft` itself takes to print it, and `explain` of one service on
3 such nodes (the whole CLI process) <= 1.0 x that `nft` time. The table is kube-proxy's own layout
(svcdoctor/model/nft/expected.py), loaded into a network namespace with the real `nft -f`; the baseline is measured
in the same run. Needs root and nft.

    python benchmarks/bench_nft.py [--services 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import best_cli_run, best_of, report  # noqa: E402


def cluster(n: int):
    from svcdoctor.model.cluster import build_cluster_model

    services, slices = [], []
    for i in range(n):
        name = f"svc-{i}"
        services.append({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "scale", "name": name},
                         "spec": {"type": "ClusterIP", "clusterIP": f"172.30.{i // 250}.{i % 250 + 1}",
                                  "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}})
        slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                       "metadata": {"namespace": "scale", "name": f"{name}-x",
                                    "labels": {"kubernetes.io/service-name": name}},
                       "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                       "endpoints": [{"addresses": [f"10.{k}.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True},
                                      "nodeName": f"node-{k}"} for k in (1, 2, 3)]})
    return build_cluster_model(services, slices)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    args = parser.parse_args()
    from svcdoctor.model.nft import read_listing
    from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset

    settings = NftProxySettings(node_name="node-1", node_ips=("192.168.0.2",), pod_cidrs=("10.0.0.0/8",),
                                service_cidrs=("172.30.0.0/16",))
    text = expected_ruleset(cluster(args.services).service_ports, settings)
    ns = f"svcdoctor-bench-nft-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "netns", "exec", ns, "nft"]
        subprocess.run(run + ["-f", "-"], input=text, text=True, check=True)
        listing = subprocess.run(run + ["-j", "list", "table", "ip", "kube-proxy"], text=True, check=True,
                                 capture_output=True).stdout
        nft_print = best_of(lambda: subprocess.run(run + ["-j", "list", "table", "ip", "kube-proxy"],
                                                   stdout=subprocess.DEVNULL, check=True))
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    read = best_of(lambda: read_listing(listing))
    t0 = time.perf_counter()
    (rs,) = read_listing(listing)
    chains = len(rs.chains)
    print(f"{args.services} services: {len(listing) / 1e6:.1f} MB of JSON, {chains} chains read in "
          f"{time.perf_counter() - t0:.3f}s; nft -j list table: {nft_print:.3f}s")
    ok = report("reading nft's listing / nft printing it", read / nft_print, 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump({"format": "svcdoctor-bundle/v1", "cluster": "scale", "nodes": ["n1", "n2", "n3"]}, f)
        for node in ("n1", "n2", "n3"):
            os.makedirs(os.path.join(tmp, "nodes", node))
            with open(os.path.join(tmp, "nodes", node, "nftables.json"), "w") as f:
                f.write(listing)
            with open(os.path.join(tmp, "nodes", node, "node.json"), "w") as f:
                json.dump({"proxyMode": "nftables"}, f)
        cmd = [sys.executable, "-m", "svcdoctor", "explain", "svc-4242", "-n", "scale", "--bundle", tmp, "-o", "json"]
        best, result = best_cli_run(cmd)
        if result is None or result.returncode != 0:
            return 1
    ok &= report("explain of one service on 3 nftables nodes / nft printing one", best / nft_print, 1.0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
