"""Helpers for the tests that check svcdoctor's model of kube-proxy's nftables proxier
(svcdoctor/model/nft/expected.py) against kube-proxy's own tests (pkg/proxy/nftables/proxier_test.go):

    from nft_cases import CASES, needs_cases, fake_settings, service, port, endpoint_slice, ep, eport
    text = expected_ruleset(build_cluster_model(services, slices).service_ports, fake_settings())
    decls, rules, elements = ruleset_parts(text)      # compare with kube-proxy's expected text
    as_json, as_text = kernel_listings(text, "IPv4")  # loaded with `nft -f` in a network namespace, listed back

The reference cases come from SVCDOCTOR_NFT_CASES (docs/explanation/kube-proxy-nftables.md); without them the
tests that need them skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from netns import Namespace, require_netns

from svcdoctor.model.nft.expected import NftProxySettings

CASES = Path(os.environ.get("SVCDOCTOR_NFT_CASES", "/work/shared/reference/kube-proxy-nft-cases"))
needs_cases = pytest.mark.skipif(not CASES.is_dir(), reason=f"reference cases not on this machine ({CASES})")

# NewFakeProxier (proxier_test.go): its interfaces, and the addresses kube-proxy's test tracer takes as local
INTERFACE_IPS = ("192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2")
TRACER_NODE_IPS = list(INTERFACE_IPS)

# hashed object names as kube-proxy writes them (names.py PREFIXES), wherever they stand in a rule or element
HASHED_NAME = re.compile(r'(?<![\w-])(?:service|local|external|firewall|endpoint|affinity)-[A-Z2-7]{8}-[^\s,}"]+')


def fake_settings(family: str = "IPv4", node_port_addresses=("192.168.0.2/32", "2001:db8::1/128"),
                  masquerade_all: bool = False, local_detector: bool = True, generation: str = "v1.34-1.35",
                  node_name: str = "test-node", service_cidrs: bool = True) -> NftProxySettings:
    ipv6 = family == "IPv6"
    return NftProxySettings(
        node_name=node_name,
        node_ips=INTERFACE_IPS,
        pod_cidrs=(("fd00:10::/64",) if ipv6 else ("10.0.0.0/8",)) if local_detector else (),
        service_cidrs=(("fd00:10:96::/112",) if ipv6 else ("172.30.0.0/16",)) if service_cidrs else (),
        node_port_addresses=tuple(node_port_addresses),
        masquerade_all=masquerade_all,
        ip_family=family,
        generation=generation,
    )


# --- API objects, as the tests build them ------------------------------------------------------------------
def service(ns: str, name: str, cluster_ip: str, ports: list[dict], type_: str | None = None,
            ingress: list[str] = (), **spec) -> dict:
    obj = {"metadata": {"namespace": ns, "name": name},
           "spec": {"clusterIP": cluster_ip, "ports": ports, **spec},
           "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}}
    if type_:
        obj["spec"]["type"] = type_
    return obj


def port(name: str = "p80", number: int = 80, protocol: str = "TCP", node_port: int | None = None,
         target: int | None = None) -> dict:
    p = {"name": name, "port": number, "protocol": protocol, "targetPort": target or number}
    if node_port:
        p["nodePort"] = node_port
    return p


def endpoint_slice(ns: str, svc: str, endpoints: list[dict], ports: list[dict], address_type: str = "IPv4",
                   suffix: str = "1") -> dict:
    return {"metadata": {"namespace": ns, "name": f"{svc}-{suffix}",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": address_type, "endpoints": endpoints, "ports": ports}


def ep(ip: str, node: str | None = None, ready=None, serving=None, terminating=None) -> dict:
    out = {"addresses": [ip]}
    if node:
        out["nodeName"] = node
    cond = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None}
    if cond:
        out["conditions"] = cond
    return out


def eport(name: str = "p80", number: int = 80, protocol: str = "TCP") -> dict:
    return {"name": name, "port": number, "protocol": protocol}


# --- comparing, loading, tracing -----------------------------------------------------------------------------
def ruleset_parts(text: str) -> tuple[set[str], dict[str, list[str]], dict[str, set[str]]]:
    """Declarations; rules per chain (in order, as nft runs them); elements per set or map (unordered): what
    kube-proxy's tests compare (knftables.Fake sorts its dump)."""
    decls: set[str] = set()
    rules: dict[str, list[str]] = defaultdict(list)
    elements: dict[str, set[str]] = defaultdict(set)
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split(" ", 5)
        if words[:2] == ["add", "rule"]:
            rules[words[4]].append(words[5])
        elif words[:2] == ["add", "element"]:
            elements[words[4]].add(words[5])
        else:
            decls.add(line)
    return decls, dict(rules), dict(elements)


def kernel_listings(text: str, family: str) -> tuple[str, str]:
    """`nft -f` the text into a fresh network namespace; `nft -j list table` and `nft list table` of it."""
    require_netns()
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (scripts/install-system-deps.sh installs nftables)")
    with Namespace() as ns:
        run = ["ip", "netns", "exec", ns.name, "nft"]
        loaded = subprocess.run(run + ["-f", "-"], input=text, text=True, capture_output=True)
        assert loaded.returncode == 0, loaded.stderr + "\n" + text
        table = ["table", "ip6" if family == "IPv6" else "ip", "kube-proxy"]
        as_json = subprocess.run(run + ["-j", "list", *table], text=True, check=True, capture_output=True).stdout
        as_text = subprocess.run(run + ["list", *table], text=True, check=True, capture_output=True).stdout
    return as_json, as_text


def trace_answer(result) -> str:
    """kube-proxy's tracer's form: the DNAT destinations, or DROP / REJECT, or ""."""
    if result.endpoints:
        return ", ".join(sorted(e.address for e in result.endpoints))
    return result.verdict.upper() if result.verdict in ("drop", "reject") else ""
