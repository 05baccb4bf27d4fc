"""The demo bundle (svcdoctor/demo/myk8s): complete, consistent with its API objects, and the kernel's own output.

The consistency checks re-derive everything from the bundle's JSON with svcdoctor's hash functions only, so they do
not depend on the model under test. The `netns` test rebuilds the bundle through the kernel and wants the very
same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from svcdoctor.model.hashes import endpoint_chain, endpoint_string, service_chain, service_port_name

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "svcdoctor" / "demo" / "myk8s"
GENERATOR = REPO / "tools" / "make_demo_bundle.py"
CP = "myk8s-control-plane"
SEED_SVC = "KUBE-SVC-KBDEBIL6IU6WL7RF"  # hash of "default/svc-clusterip:svc-webport" + "tcp", as in the seed
HASHED = re.compile(r"^KUBE-(SVC|SVL|EXT|FW|SEP)-[A-Z2-7]{16}$")
RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")


# ------------------------------------------------------------------------------------------------ reading


def load(rel: str):
    return json.loads((BUNDLE / rel).read_text())


def items(kind_file: str) -> list[dict]:
    doc = load(f"cluster/{kind_file}.json")
    assert doc["apiVersion"] == "v1" and doc["kind"] == "List", kind_file
    return doc["items"]


class Dump:
    """Just enough of an iptables-save -c reader for these checks."""

    def __init__(self, text: str):
        self.text = text
        self.chains: dict[str, list[str]] = defaultdict(list)  # table -> declared chains
        self.policies: dict[tuple[str, str], tuple[int, int]] = {}
        self.rules: list[tuple[str, str, int, int, str]] = []  # table, chain, pkts, bytes, rest
        table = None
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                name, policy, counters = line[1:].split(" ")
                self.chains[table].append(name)
                p, b = counters.strip("[]").split(":")
                self.policies[(table, name)] = (int(p), int(b))
            elif line.startswith("["):
                m = RULE.match(line)
                assert m, line
                self.rules.append((table, m[3], int(m[1]), int(m[2]), m[4]))

    def chain_rules(self, table: str, chain: str) -> list[tuple[int, int, str]]:
        return [(p, b, r) for t, c, p, b, r in self.rules if t == table and c == chain]

    def jumps_to(self, table: str, target: str) -> list[tuple[int, int, str]]:
        return [(p, b, r) for t, c, p, b, r in self.rules if t == table and r.endswith(f"-j {target}")]


def dump(node: str) -> Dump:
    return Dump((BUNDLE / "nodes" / node / "iptables.txt").read_text())


def target(rule: str) -> str | None:
    m = re.search(r"-j (\S+)", rule)
    return m[1] if m else None


def expected_service_ports() -> list[dict]:
    """Service ports with their endpoints, straight from services.json and endpointslices.json."""
    slices = defaultdict(list)
    for es in items("endpointslices"):
        meta = es["metadata"]
        slices[(meta["namespace"], meta["labels"]["kubernetes.io/service-name"])].append(es)
    out = []
    for svc in items("services"):
        meta, spec = svc["metadata"], svc["spec"]
        for port in spec["ports"]:
            spn = service_port_name(meta["namespace"], meta["name"], port.get("name"))
            proto = port["protocol"].lower()
            eps = []
            for es in slices[(meta["namespace"], meta["name"])]:
                ep_port = next(p["port"] for p in es["ports"] if p["name"] == port["name"]
                               and p["protocol"] == port["protocol"])
                for ep in es["endpoints"]:
                    for addr in ep["addresses"]:
                        eps.append({"address": endpoint_string(addr, ep_port), "node": ep.get("nodeName")})
            eps.sort(key=lambda e: e["address"])  # kube-proxy's byEndpoint order
            out.append({"spn": spn, "proto": proto, "clusterIP": spec["clusterIP"], "port": port["port"],
                        "nodePort": port.get("nodePort"), "etp": spec.get("externalTrafficPolicy"),
                        "affinity": spec["sessionAffinity"] == "ClientIP", "endpoints": eps})
    return out


# ------------------------------------------------------------------------------------------------ layout


def test_manifest_and_node_files():
    manifest = load("manifest.json")
    assert manifest["format"] == "svcdoctor-bundle/v1"
    assert manifest["cluster"] == "myk8s"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["collectedAt"])
    assert manifest["nodes"] == ["myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"]
    assert sorted(p.name for p in (BUNDLE / "nodes").iterdir()) == sorted(manifest["nodes"])
    ips = {"myk8s-control-plane": "172.18.0.2", "myk8s-worker": "172.18.0.3", "myk8s-worker2": "172.18.0.4",
           "myk8s-worker3": "172.18.0.5"}
    for node in manifest["nodes"]:
        assert (BUNDLE / "nodes" / node / "iptables.txt").is_file()
        meta = load(f"nodes/{node}/node.json")
        assert meta == {"name": node, "internalIP": ips[node], "backend": "nft", "proxyMode": "iptables",
                        "role": "control-plane" if node == CP else "worker"}
    for kind in ("services", "endpointslices", "pods", "nodes"):
        assert (BUNDLE / "cluster" / f"{kind}.json").is_file()


def test_api_lists_look_like_kubectl_output():
    for kind_file, api_version, kind in [("services", "v1", "Service"), ("pods", "v1", "Pod"),
                                         ("nodes", "v1", "Node"),
                                         ("endpointslices", "discovery.k8s.io/v1", "EndpointSlice")]:
        raw = (BUNDLE / "cluster" / f"{kind_file}.json").read_text()
        assert raw.endswith("}\n") and raw.startswith('{\n    "apiVersion": "v1",')  # Go's MarshalIndent, 4 spaces
        objs = items(kind_file)
        assert objs
        for o in objs:
            assert (o["apiVersion"], o["kind"]) == (api_version, kind)
            meta = o["metadata"]
            assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    uids = [o["metadata"]["uid"] for f in ("services", "endpointslices", "pods", "nodes") for o in items(f)]
    assert len(uids) == len(set(uids))
    pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in items("pods")}
    for (ns, name), p in pods.items():
        owners = p["metadata"].get("ownerReferences")
        if name == "net-pod":
            assert owners is None  # a bare pod, as in the seed
        else:
            assert owners and owners[0]["controller"] is True, name
    nodes = {n["metadata"]["name"]: n for n in items("nodes")}
    for n in nodes.values():
        assert n["status"]["nodeInfo"]["kubeletVersion"] == "v1.31.0"
        assert n["spec"]["podCIDR"].startswith("10.10.")
    # every EndpointSlice endpoint points at a real pod on the node it names
    for es in items("endpointslices"):
        for ep in es["endpoints"]:
            ref = ep.get("targetRef")
            if ref:
                pod = pods[(ref["namespace"], ref["name"])]
                assert pod["metadata"]["uid"] == ref["uid"]
                assert pod["status"]["podIP"] in ep["addresses"]
                assert pod["spec"]["nodeName"] == ep["nodeName"]


def test_services_are_the_seeds():
    svcs = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["spec"] for s in items("services")}
    assert set(svcs) == {("default", "kubernetes"), ("kube-system", "kube-dns"), ("default", "svc-clusterip"),
                         ("default", "svc-nodeport"), ("default", "svc-local"), ("default", "svc-affinity")}
    for spec in svcs.values():
        assert spec["clusterIP"].startswith("10.200.1.")
    nodeport = svcs[("default", "svc-nodeport")]
    assert nodeport["type"] == "NodePort" and nodeport["externalTrafficPolicy"] == "Cluster"
    assert nodeport["ports"][0]["nodePort"] == 32624 and nodeport["ports"][0]["targetPort"] == 8080
    assert svcs[("default", "svc-local")]["externalTrafficPolicy"] == "Local"
    assert svcs[("default", "svc-affinity")]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800


# ------------------------------------------------------------------------------------------------ rules


@pytest.mark.parametrize("node", ["myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"])
def test_rules_are_iptables_save_output(node):
    text = (BUNDLE / "nodes" / node / "iptables.txt").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# Generated by iptables-save v") and "(nf_tables)" in lines[0]
    d = Dump(text)
    assert list(d.chains) == ["mangle", "filter", "nat"]
    assert text.count("COMMIT\n") == 3
    # iptables' normalised spellings, not kube-proxy's input ones (docs/reference/kube-proxy-layout.md §2.9)
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in text
    assert "-j MARK --set-xmark 0x4000/0x0" in text
    assert "--or-mark" not in text and "0x00004000" not in text
    assert "-j MASQUERADE --random-fully" in text
    # kind's and Docker's chains around kube-proxy's, as on a real kind node
    for chain in ("DOCKER_OUTPUT", "DOCKER_POSTROUTING", "KIND-MASQ-AGENT", "KUBE-KUBELET-CANARY",
                  "KUBE-PROXY-CANARY", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-SERVICES"):
        assert chain in d.chains["nat"], chain
    for chain in ("KUBE-FORWARD", "KUBE-FIREWALL", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL",
                  "KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY"):
        assert chain in d.chains["filter"], chain
    assert "KUBE-IPTABLES-HINT" in d.chains["mangle"]
    # entry jumps from the builtin chains: kube-proxy's are first, kind's masq agent is last
    assert target(d.chain_rules("nat", "PREROUTING")[0][2]) == "KUBE-SERVICES"
    assert target(d.chain_rules("nat", "OUTPUT")[0][2]) == "KUBE-SERVICES"
    post = [target(r) for _, _, r in d.chain_rules("nat", "POSTROUTING")]
    assert post == ["KUBE-POSTROUTING", "DOCKER_POSTROUTING", "KIND-MASQ-AGENT"]
    assert [target(r) for _, _, r in d.chain_rules("filter", "INPUT")] == [
        "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL"]
    assert [target(r) for _, _, r in d.chain_rules("filter", "FORWARD")] == [
        "KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
    # the nodeports jump must be the last rule of KUBE-SERVICES
    assert target(d.chain_rules("nat", "KUBE-SERVICES")[-1][2]) == "KUBE-NODEPORTS"
    # 1.31's nfacct rules loaded (iptables-save prints the name after two spaces)
    assert "-m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP" in text


@pytest.mark.parametrize("node", ["myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"])
def test_chain_names_are_the_hashes_of_the_api_objects(node):
    d = dump(node)
    nat = d.text
    expected: set[str] = set()
    for sp in expected_service_ports():
        svc = service_chain("KUBE-SVC-", sp["spn"], sp["proto"])
        expected.add(svc)
        entry = [r for p, b, r in d.chain_rules("nat", "KUBE-SERVICES") if target(r) == svc]
        assert len(entry) == 1, sp["spn"]
        assert f'--comment "{sp["spn"]} cluster IP"' in entry[0]
        assert f"-d {sp['clusterIP']}/32" in entry[0] and f"--dport {sp['port']}" in entry[0]
        local = [e for e in sp["endpoints"] if e["node"] == node]
        if sp["nodePort"]:
            ext = service_chain("KUBE-EXT-", sp["spn"], sp["proto"])
            expected.add(ext)
            np_rules = [r for p, b, r in d.chain_rules("nat", "KUBE-NODEPORTS") if target(r) == ext]
            assert len(np_rules) == 2 and all(f"--dport {sp['nodePort']}" in r for r in np_rules)
            if sp["etp"] == "Local":
                svl = service_chain("KUBE-SVL-", sp["spn"], sp["proto"])
                drop = f'"{sp["spn"]} has no local endpoints"'
                if local:
                    expected.add(svl)
                    assert target(d.chain_rules("nat", ext)[-1][2]) == svl
                    assert drop not in nat
                else:
                    assert svl not in d.chains["nat"]
                    assert [target(r) for _, _, r in d.chain_rules("nat", ext)] == [svc, "KUBE-MARK-MASQ", svc]
                    assert drop in nat
        for ep in sp["endpoints"]:
            sep = endpoint_chain(sp["spn"], sp["proto"], ep["address"])
            expected.add(sep)
            dnat = d.chain_rules("nat", sep)[-1][2]
            assert dnat.endswith(f"-j DNAT --to-destination {ep['address']}"), (sep, dnat)
            assert f'--comment "{sp["spn"]}"' in dnat
            jumps = [r for p, b, r in d.jumps_to("nat", sep) if "--rcheck" not in r]
            assert jumps and all(f'"{sp["spn"]} -> {ep["address"]}"' in r for r in jumps)
        # endpoints in "ip:port" string order, probabilities 1/(n-i) as iptables prints them
        lb = [r for p, b, r in d.chain_rules("nat", svc) if target(r).startswith("KUBE-SEP-") and "--rcheck" not in r]
        assert [target(r) for r in lb] == [endpoint_chain(sp["spn"], sp["proto"], e["address"])
                                           for e in sp["endpoints"]]
        n = len(lb)
        for i, r in enumerate(lb):
            if i < n - 1:
                assert "-m statistic --mode random --probability" in r
                printed = float(re.search(r"--probability (\S+)", r)[1])
                assert abs(printed - 1 / (n - i)) < 1e-9
            else:
                assert "statistic" not in r
        if sp["affinity"]:
            assert sum("--rcheck --seconds 10800 --reap" in r for _, _, r in d.chain_rules("nat", svc)) == n
    present = {c for c in d.chains["nat"] if HASHED.match(c)}
    assert present == expected  # nothing stale, nothing missing


@pytest.mark.parametrize("node", ["myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"])
def test_counters_add_up(node):
    """Whatever enters a service or endpoint chain leaves through one of its endpoint jumps or its DNAT."""
    d = dump(node)
    for chain in d.chains["nat"]:
        if not HASHED.match(chain):
            continue
        into = sum(p for p, _, r in d.jumps_to("nat", chain))
        rules = d.chain_rules("nat", chain)
        if chain.startswith("KUBE-SEP-"):
            assert rules[-1][0] == into, chain
        elif chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            out = sum(p for p, _, r in rules if target(r).startswith("KUBE-SEP-"))
            assert out == into, chain
    marks = sum(p for p, _, r in d.jumps_to("nat", "KUBE-MARK-MASQ"))
    assert d.chain_rules("nat", "KUBE-MARK-MASQ")[0][0] == marks


def test_the_seeds_counters_on_the_control_plane():
    d = dump(CP)
    entry = [(p, b) for p, b, r in d.chain_rules("nat", "KUBE-SERVICES") if target(r) == SEED_SVC]
    assert entry == [(92, 5520)]
    jumps = [(p, b, r) for p, b, r in d.chain_rules("nat", SEED_SVC) if target(r).startswith("KUBE-SEP-")]
    assert [(p, b) for p, b, _ in jumps] == [(38, 2280), (29, 1740), (25, 1500)]
    assert "--probability 0.33333333349" in jumps[0][2] and "--probability 0.50000000000" in jumps[1][2]
    for p, b, r in jumps:
        assert d.chain_rules("nat", target(r))[-1][:2] == (p, b)
    # the seed's PREROUTING and KUBE-POSTROUTING counters, and no SNAT for pod -> ClusterIP
    assert d.chain_rules("nat", "PREROUTING")[0][:2] == (778, 46758)
    assert d.chain_rules("nat", "KUBE-POSTROUTING")[0][:2] == (572, 35232)
    assert d.chain_rules("nat", SEED_SVC)[0][0] == 0  # the `! -s 10.10.0.0/16` masquerade rule


def test_etp_local_drop_is_hit_on_worker3_only():
    drops = {}
    for node in ("myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"):
        d = dump(node)
        drops[node] = [(p, r) for p, _, r in d.chain_rules("filter", "KUBE-EXTERNAL-SERVICES")
                       if '"default/svc-local:http has no local endpoints"' in r]
    assert not drops["myk8s-worker"] and not drops["myk8s-worker2"]
    assert len(drops[CP]) == 1 and drops[CP][0][0] == 0
    assert len(drops["myk8s-worker3"]) == 1 and drops["myk8s-worker3"][0][0] > 0
    assert drops["myk8s-worker3"][0][1].endswith("--dport 31437 -j DROP")


def test_nodeport_traffic_from_mypc_is_masqueraded_on_the_worker():
    d = dump("myk8s-worker")
    ext = service_chain("KUBE-EXT-", "default/svc-nodeport:svc-webport", "tcp")
    masq, jump = d.chain_rules("nat", ext)
    assert masq[0] == jump[0] > 0 and target(masq[2]) == "KUBE-MARK-MASQ"
    assert d.chain_rules("nat", "KUBE-POSTROUTING")[2][0] >= masq[0]  # MASQUERADE --random-fully
    assert d.chain_rules("filter", "KUBE-FORWARD")[1][0] > 0  # forwarded thanks to the 0x4000 mark


# ------------------------------------------------------------------------------------------------ the kernel


def _iptables_version() -> str | None:
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


@pytest.mark.netns
def test_regenerating_through_the_kernel_gives_the_same_bytes(tmp_path):
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        pytest.skip("needs root, iproute2 and iptables (ip netns, iptables-restore -c)")
    header = (BUNDLE / "nodes" / CP / "iptables.txt").read_text().splitlines()[0]
    made_with = re.search(r"iptables-save (v\S+ \(\w+\))", header)[1]  # e.g. "v1.8.9 (nf_tables)"
    have = _iptables_version() or ""
    if made_with.replace("(", "").replace(")", "") not in have.replace("(", "").replace(")", ""):
        pytest.skip(f"the bundle was made with iptables {made_with}; this host has {have!r}")
    out = tmp_path / "myk8s"
    res = subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    shipped = sorted(p.relative_to(BUNDLE) for p in BUNDLE.rglob("*") if p.is_file())
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert made == shipped
    for rel in shipped:
        assert (out / rel).read_bytes() == (BUNDLE / rel).read_bytes(), rel


# ------------------------------------------------------------------------------------------------ the docs


def _text_blocks(doc: Path) -> list[list[str]]:
    blocks, current = [], None
    for line in doc.read_text().splitlines():
        if current is None and line.strip() == "```text":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_rules_quoted_in_the_docs_are_the_bundles():
    """The docs illustrate kube-proxy with the demo's real lines; a rebuilt bundle must not leave them behind."""
    doc = REPO / "docs" / "explanation" / "kube-proxy-rules.md"
    checked = 0
    for block in _text_blocks(doc):
        m = re.fullmatch(r"# nodes/([\w-]+)/iptables\.txt \((\w+)\)", block[0])
        assert m, f"a rules block without its '# nodes/<node>/iptables.txt (table)' header: {block[0]!r}"
        node, table = m[1], m[2]
        d = dump(node)
        lines = {f"[{p}:{b}] -A {c} {r}" for t, c, p, b, r in d.rules if t == table}
        for line in block[1:]:
            assert line in lines, f"{node} {table}: not in the demo bundle: {line}"
            checked += 1
    assert checked > 30
    ref = REPO / "docs" / "reference" / "bundle-format.md"
    cp_lines = set((BUNDLE / "nodes" / CP / "iptables.txt").read_text().splitlines())
    example = _text_blocks(ref)[0]
    assert example[0].startswith("# Generated by iptables-save")
    for line in example:
        assert line in cp_lines, f"bundle-format.md example: not in the demo bundle: {line}"
