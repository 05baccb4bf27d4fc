"""Redacted bundles (issue #12): on the demo and on kube-proxy's own test cases, every command's JSON (explain of
every service, check, nodes, trace of every cluster IP) on the redacted bundle equals the original's once the
pseudonyms are mapped back; no original name or address is left anywhere in the redacted bundle; the mapping is
written beside it, not inside."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cli_run import run_cli
from kube_proxy_cases import iter_cases
from svcdoctor.collect.bundle import demo_bundle_path, load_input, write_bundle
from svcdoctor.collect.redact import HASHED_CHAIN, IPV4, IPV6
from svcdoctor.collect.snapshot import ClusterSnapshot, NodeCapture


def case_bundle(case, root: Path) -> Path:
    node = NodeCapture(name="node-a", iptables_save=case.restore_text, internal_ip=case.node_ip, backend="nft",
                       proxy_mode="iptables", role="worker")
    write_bundle(ClusterSnapshot("kp-case", [node], case.api_objects(), "2024-01-01T00:00:00Z"), root)
    return root


def bundles():
    yield "demo", lambda tmp: demo_bundle_path()
    seen = set()
    for case in iter_cases():
        if case.case in seen:
            continue
        seen.add(case.case)
        yield case.case, (lambda tmp, case=case: case_bundle(case, tmp / "orig"))


BUNDLES = dict(bundles())


class Unmapper:
    """Maps a redacted document's strings back to the original names, addresses and chains."""

    def __init__(self, mapping: dict):
        self.names = {v: k for k, v in mapping["names"].items()}
        self.addresses = {v: k for k, v in mapping["addresses"].items()}
        self.chains = {v: k for k, v in mapping["chains"].items()}
        alternatives = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
        self.name_re = re.compile(f"(?<![A-Za-z0-9_-])(?:{alternatives})(?![A-Za-z0-9_-])")

    def text(self, s: str) -> str:
        s = HASHED_CHAIN.sub(lambda m: self.chains.get(m.group(0), m.group(0)), s)
        s = IPV4.sub(lambda m: self.addresses.get(m.group(0), m.group(0)), s)
        s = IPV6.sub(lambda m: self.addresses.get(m.group(0), m.group(0)), s)
        return self.name_re.sub(lambda m: self.names[m.group(0)], s)

    def doc(self, value):
        if isinstance(value, dict):
            return {self.text(k): self.doc(v) for k, v in value.items() if k not in ("source", "readFrom")}
        if isinstance(value, list):
            return [self.doc(v) for v in value]
        return self.text(value) if isinstance(value, str) else value


def canonical(value):
    """Lists compared as multisets: a sort by address or name may order pseudonyms differently."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items() if k not in ("source", "readFrom")}
    if isinstance(value, list):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def run_json(*args) -> dict:
    r = run_cli(*args, "-o", "json")
    assert r.exit_code in (0, 1, 3), r.stderr
    return r.json()


def command_lines(original: Path) -> list[list[str]]:
    """Every command, as run on the original bundle."""
    snapshot = load_input(original)
    lines = [["check"], ["nodes"]]
    services = snapshot.api.services or []
    for svc in services:
        meta = svc["metadata"]
        lines.append(["explain", meta["name"], "-n", meta.get("namespace") or "default"])
        spec = svc.get("spec") or {}
        for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
            if ip == "None":
                continue
            for port in spec.get("ports") or []:
                host = f"[{ip}]" if ":" in ip else ip
                lines.append(["trace", "--dst", f"{host}:{port['port']}", "--proto", port.get("protocol", "TCP").lower()])
    return lines


def redacted_line(line: list[str], mapping: dict) -> list[str]:
    out = []
    for arg in line:
        if arg.startswith("--"):
            out.append(arg)
            continue
        host, sep, port = arg.rpartition(":")
        if sep and port.isdigit() and host:
            bare = host.strip("[]")
            mapped = mapping["addresses"].get(bare, bare)
            out.append(f"[{mapped}]:{port}" if host.startswith("[") else f"{mapped}:{port}")
        else:
            out.append(mapping["names"].get(arg, arg))
    return out


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_every_command_answers_the_same_on_the_redacted_bundle(name, tmp_path):
    original = BUNDLES[name](tmp_path)
    out = tmp_path / "redacted"
    r = run_cli("redact", str(original), str(out))
    assert r.exit_code == 0, r.stderr
    mapping_file = tmp_path / "redacted.mapping.json"
    assert mapping_file.is_file() and not (out / "redacted.mapping.json").exists()
    assert oct(os.stat(mapping_file).st_mode & 0o777) == "0o600"
    mapping = json.loads(mapping_file.read_text())
    unmap = Unmapper(mapping)
    for line in command_lines(original):
        before = run_json(*line, "--bundle", str(original))
        after = run_json(*redacted_line(line, mapping), "--bundle", str(out))
        assert canonical(unmap.doc(after)) == canonical(before), line


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_no_original_name_or_address_is_left(name, tmp_path):
    original = BUNDLES[name](tmp_path)
    out = tmp_path / "redacted.tar.gz"
    assert run_cli("redact", str(original), str(out)).exit_code == 0
    mapping = json.loads((tmp_path / "redacted.mapping.json").read_text())
    # the redacted bundle as one text (read back as svcdoctor reads it: the archive's members)
    snapshot = load_input(out)
    text = "\n".join([json.dumps(snapshot.api.services), json.dumps(snapshot.api.endpointslices),
                      json.dumps(snapshot.api.pods), json.dumps(snapshot.api.nodes), str(snapshot.cluster)]
                     + [n.name + (n.internal_ip or "") + n.iptables_save + (n.ip6tables_save or "")
                        for n in snapshot.nodes])
    # kube-proxy's and Kubernetes' own words ("kubernetes service portals", kubernetes.io/ label keys) are not the
    # service called kubernetes
    text = re.sub(r'"kubernetes [a-z ;:,.()-]+"|kubernetes\.io/|k8s-app', "", text)
    secrets = set(mapping["names"]) | {a.split("/")[0] for a in mapping["addresses"]}
    assert secrets, "nothing was redacted"
    for secret in secrets:
        pattern = (re.escape(secret) if not secret[0].isalnum() else
                   f"(?<![A-Za-z0-9_.:-]){re.escape(secret)}(?![A-Za-z0-9_-]|\\.\\d)")
        assert not re.search(pattern, text), secret


def test_subnets_keep_their_shape():
    from svcdoctor.collect.redact import Pseudonyms

    p = Pseudonyms()
    net = p.address("10.10.0.0/16")
    import ipaddress

    for ip in ("10.10.2.5", "10.10.3.7", "10.10.255.1"):
        assert ipaddress.ip_address(p.address(ip)) in ipaddress.ip_network(net)
    assert ipaddress.ip_address(p.address("10.11.0.1")) not in ipaddress.ip_network(net)
    assert p.address("127.0.0.1") == "127.0.0.1" and p.address("0.0.0.0/0") == "0.0.0.0/0"
    assert p.address("10.10.2.5") == p.address("10.10.2.5")  # the same input, the same pseudonym
    v6 = p.address("fd00:10:244::/64")
    assert ipaddress.ip_address(p.address("fd00:10:244::5")) in ipaddress.ip_network(v6)
