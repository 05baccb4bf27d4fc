"""`svcdoctor check`: desired (kube-proxy's plan from the API objects) against programmed (each node's rules).

Every kube-proxy test case, as a bundle of its expected dump plus its API objects, must check clean but for what
the case is about. Then one fault at a time is planted by editing the dump's text, and exactly that finding must
come out, on the right node, through the real command line.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_cli
from kube_proxy_cases import iter_cases
from rich.console import Console

from svcdoctor.collect.bundle import write_bundle
from svcdoctor.collect.snapshot import ApiObjects, ClusterSnapshot, NodeCapture
from svcdoctor.commands.check import parse_selector, run_check
from svcdoctor.inputs import InputOptions, load
from svcdoctor.errors import UsageError
from svcdoctor.model.hashes import endpoint_chain, service_chain
from svcdoctor.render.check_view import render_check

CASES = {case.name: case for case in iter_cases()}
NODE = "test-hostname"  # the fake proxier's node: endpoints with this nodeName are local

# What each case is about (its services.md): the findings a clean check of it must still report, all warnings.
INTENDED: dict[str, set[tuple[str, str | None]]] = {
    "01-overall-multiple-services": {("etp-local-no-local-endpoints", NODE), ("no-endpoints", None)},
    "05-clusterip-no-endpoints": {("no-endpoints", None)},
    "07c-itp-local-no-local-endpoint": {("itp-local-no-local-endpoints", NODE)},
    "08c-terminating-etp-local-terminating-on-remote-node": {("etp-local-no-local-endpoints", NODE)},
    "08d-terminating-etp-local-no-usable-endpoints": {("no-endpoints", None)},
}


def kube_proxy_config(case) -> dict:
    """The case's proxier settings as kube-proxy's own ConfigMap would say them (KubeProxyConfiguration)."""
    s = case.settings
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
        "clusterCIDR": s.cluster_cidr or "", "detectLocalMode": "ClusterCIDR",
        "iptables": {"masqueradeAll": s.masquerade_all, "masqueradeBit": s.masquerade_bit,
                     "localhostNodePorts": s.localhost_node_ports},
        "nodePortAddresses": list(s.node_port_addresses),
    }
    if s.local_interface:
        config["detectLocalMode"] = "InterfaceNamePrefix"
        config["detectLocal"] = {"interfaceNamePrefix": s.local_interface.rstrip("+")}
    return config


def make_bundle(path: Path, case, dumps: dict[str, str] | None = None, api: bool = True, config: bool = False,
                services: list[dict] | None = None) -> str:
    """A bundle directory: the case's dump (or `dumps`, node -> text) and, with `api`, the case's objects."""
    dumps = dumps or {NODE: case.restore_text}
    nodes = [NodeCapture(name=n, iptables_save=text, internal_ip=case.node_ip if n == NODE else None)
             for n, text in dumps.items()]
    objects = ApiObjects(status="not in the bundle")
    if api:
        objects = ApiObjects(services=services if services is not None else case.items("services"),
                             endpointslices=case.items("endpointslices"), status="ok",
                             kube_proxy_config=kube_proxy_config(case) if config else None)
    return write_bundle(ClusterSnapshot(cluster="case", nodes=nodes, api=objects), path)


def check(bundle: str, *args: str) -> tuple[int, dict]:
    result = run_cli("check", "--bundle", bundle, "-o", "json", *args)
    assert "Traceback" not in result.stderr
    assert result.exit_code in (0, 1, 4), result.stderr
    return result.exit_code, result.json()


def found(doc: dict) -> set[tuple[str, str | None]]:
    return {(f["id"], f["node"]) for f in doc["findings"]}


def planted(doc: dict, case_name: str) -> list[dict]:
    """The findings besides what the case itself is about."""
    intended = INTENDED.get(case_name, set())
    return [f for f in doc["findings"] if (f["id"], f["node"]) not in intended]


# --- editing a dump -----------------------------------------------------------------------------------------

def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is in the dump {text.count(old)} times"
    return text.replace(old, new)


def add_nat_chain(text: str, name: str, rules: list[str]) -> str:
    # the case's text is filter then nat: declare after "*nat", rules before nat's COMMIT (the last one)
    text = text.replace("*nat\n", f"*nat\n:{name} - [0:0]\n", 1)
    at = text.rindex("COMMIT")
    return text[:at] + "".join(f"-A {name} {r}\n" for r in rules) + text[at:]


def drop_lines(text: str, *needles: str) -> str:
    lines = text.splitlines(keepends=True)
    kept = [ln for ln in lines if not any(n in ln for n in needles)]
    assert len(kept) < len(lines), f"nothing matched {needles}"
    return "".join(kept)


def sep_rules(spn: str, address: str) -> list[str]:
    ip = address.rsplit(":", 1)[0]
    return [f"-m comment --comment {spn} -s {ip} -j KUBE-MARK-MASQ",
            f"-m comment --comment {spn} -m tcp -p tcp -j DNAT --to-destination {address}"]


SVC1 = "ns1/svc1:p80"
SVC1_CHAIN = service_chain("KUBE-SVC-", SVC1, "tcp")
SVC1_SEP = endpoint_chain(SVC1, "tcp", "10.180.0.1:80")
SVC1_JUMP = f'-A {SVC1_CHAIN} -m comment --comment "{SVC1} -> 10.180.0.1:80" -j {SVC1_SEP}\n'


# --- every case checks clean --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("source", ["inferred", "configmap", "no-api"])
def test_every_case_checks_clean_but_for_what_it_is_about(tmp_path, name, source):
    case = CASES[name]
    bundle = make_bundle(tmp_path / "b", case, api=source != "no-api", config=source == "configmap")
    code, doc = check(bundle)
    assert found(doc) == INTENDED.get(name, set()), [f["message"] for f in doc["findings"]]
    assert all(f["severity"] == "warning" for f in doc["findings"])
    assert code == 0
    assert doc["summary"] == {"error": 0, "warning": len(doc["findings"]), "info": 0}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_case_checks_clean_with_its_own_settings_given(tmp_path, name):
    case = CASES[name]  # settings.json: exactly the fake proxier's settings of kube-proxy's test
    result = run_check(load(InputOptions(bundle=make_bundle(tmp_path / "b", case))), settings={NODE: case.settings})
    assert {(f.id, f.node) for f in result.findings} == INTENDED.get(name, set())
    assert result.settings == {NODE: "given"}


def test_settings_come_from_the_configmap_or_the_rules(tmp_path):
    case = CASES["10-internal-external-masquerade/masquerade-all"]
    for config, source in ((True, "from the kube-proxy ConfigMap"), (False, "inferred from the node's rules")):
        loaded = load(InputOptions(bundle=make_bundle(tmp_path / str(config), case, config=config)))
        result = run_check(loaded)
        assert result.settings == {NODE: source} and result.api and not result.findings


def test_the_kernels_own_spelling_checks_clean_too(tmp_path):
    """The same case after a trip through real iptables: normalised order, /32 masks, quoting, counters."""
    from netns import require_netns, round_trip

    require_netns()
    for name in ("01-overall-multiple-services", "03-etp-local-lb-session-affinity",
                 "02-loadbalancer-source-ranges"):
        case = CASES[name]
        dump = round_trip(case.restore_text)
        assert "[0:0] -A KUBE-SERVICES -d 172.30.0.4" in dump  # really the kernel's spelling
        for api in (True, False):
            bundle = make_bundle(tmp_path / f"{name}-{api}", case, {NODE: dump}, api=api)
            assert {(f.id, f.node) for f in run_check(load(InputOptions(bundle=bundle))).findings} \
                == INTENDED.get(name, set())


# --- planted faults -----------------------------------------------------------------------------------------

def _stale_extra_endpoint(text: str) -> str:
    """svc1 gets a second endpoint that no EndpointSlice has (an old pod), split evenly as kube-proxy would."""
    old = "10.180.0.99:80"
    sep = endpoint_chain(SVC1, "tcp", old)
    text = replace_once(text, SVC1_JUMP,
                        f'-A {SVC1_CHAIN} -m comment --comment "{SVC1} -> 10.180.0.1:80" -m statistic --mode random '
                        f'--probability 0.5000000000 -j {SVC1_SEP}\n'
                        f'-A {SVC1_CHAIN} -m comment --comment "{SVC1} -> {old}" -j {sep}\n')
    return add_nat_chain(text, sep, sep_rules(SVC1, old))


def _replaced_endpoint(text: str) -> str:
    """svc1's only endpoint rewritten to another address, chain name and all: the rules of before a pod moved."""
    old = "10.180.0.77:80"
    return text.replace(SVC1_SEP, endpoint_chain(SVC1, "tcp", old)).replace("10.180.0.1:80", old) \
        .replace("-s 10.180.0.1 ", "-s 10.180.0.77 ")


def _missing_endpoint(text: str) -> str:
    """svc4 (two endpoints) loses its jump to 10.180.0.5's chain and that chain; the other takes everything."""
    svc4 = "ns4/svc4:p80"
    gone = endpoint_chain(svc4, "tcp", "10.180.0.5:80")
    text = drop_lines(text, f"-j {gone}", f"-A {gone} ", f":{gone} ")
    return replace_once(text, f'"{svc4} -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j',
                        f'"{svc4} -> 10.180.0.4:80" -j')


def _missing_service_rules(text: str) -> str:
    """Every rule and chain of svc3 gone (kube-proxy never synced it on this node)."""
    svc3 = "ns3/svc3:p80"
    names = [service_chain(p, svc3, "tcp") for p in ("KUBE-SVC-", "KUBE-EXT-")]
    names.append(endpoint_chain(svc3, "tcp", "10.180.0.3:80"))
    return drop_lines(text, *names)


def _uneven_split(text: str) -> str:
    return replace_once(text, '"ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000',
                        '"ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.9000000000')


def _orphan_left_over(text: str) -> str:
    """A deleted Service's chains, nothing jumping to them any more."""
    gone = "ns9/deleted:p80"
    svc, sep = service_chain("KUBE-SVC-", gone, "tcp"), endpoint_chain(gone, "tcp", "10.180.9.9:80")
    text = add_nat_chain(text, sep, sep_rules(gone, "10.180.9.9:80"))
    return add_nat_chain(text, svc, [f'-m comment --comment "{gone} -> 10.180.9.9:80" -j {sep}'])


def _orphan_still_routed(text: str) -> str:
    """A deleted Service whose cluster IP is still DNATed to its old pod."""
    gone = "ns9/deleted:p80"
    svc = service_chain("KUBE-SVC-", gone, "tcp")
    text = _orphan_left_over(text)
    return replace_once(text, '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports;',
                        f'-A KUBE-SERVICES -m comment --comment "{gone} cluster IP" -m tcp -p tcp -d 172.30.9.9 '
                        f'--dport 80 -j {svc}\n-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports;')


def _renamed_sep(text: str) -> str:
    return text.replace(SVC1_SEP, "KUBE-SEP-AAAAAAAAAAAAAAAA")


def _renamed_svc(text: str) -> str:
    return text.replace(SVC1_CHAIN, "KUBE-SVC-AAAAAAAAAAAAAAAA")


def _old_node_port(text: str) -> str:
    return replace_once(text, "--dport 3003 -j", "--dport 3999 -j")


def _etp_local_acting_cluster(text: str) -> str:
    """Case 04 (NodePort, externalTrafficPolicy Local): the external chain written as for Cluster."""
    svc = "ns1/svc1:p80"
    ext, svc_chain = (service_chain(p, svc, "tcp") for p in ("KUBE-EXT-", "KUBE-SVC-"))
    text = drop_lines(text, f"-A {ext} ")
    return add_nat_chain(text.replace(f":{ext} - [0:0]\n", ""), ext, [
        f'-m comment --comment "masquerade traffic for {svc} external destinations" -j KUBE-MARK-MASQ',
        f"-j {svc_chain}"])


def _itp_local_acting_cluster(text: str) -> str:
    """Case 07b (internalTrafficPolicy Local): cluster IP traffic sent to a KUBE-SVC chain, not KUBE-SVL."""
    svl = service_chain("KUBE-SVL-", "ns1/svc1", "tcp")
    return text.replace(svl, service_chain("KUBE-SVC-", "ns1/svc1", "tcp"))


def _affinity_lost(text: str) -> str:
    """Case 03 (sessionAffinity ClientIP): the affinity checks gone from the balancing chains."""
    return drop_lines(text, "--rcheck")


def _source_ranges_widened(text: str) -> str:
    return replace_once(text, "-s 203.0.113.0/25 -j", "-s 0.0.0.0/0 -j")


PLANTS = {
    # name: (case, edit, {(id, severity)} expected besides the case's own findings)
    "stale-endpoint": ("01-overall-multiple-services", _stale_extra_endpoint, {("stale-endpoint", "error")}),
    "stale-and-missing": ("01-overall-multiple-services", _replaced_endpoint,
                          {("stale-endpoint", "error"), ("missing-endpoint", "error")}),
    "missing-endpoint": ("01-overall-multiple-services", _missing_endpoint, {("missing-endpoint", "error")}),
    "missing-service-rules": ("01-overall-multiple-services", _missing_service_rules,
                              {("missing-service-rules", "error")}),
    "uneven-split": ("01-overall-multiple-services", _uneven_split, {("uneven-split", "warning")}),
    "orphan-left-over": ("01-overall-multiple-services", _orphan_left_over, {("orphan-chain", "warning")}),
    "orphan-still-routed": ("01-overall-multiple-services", _orphan_still_routed, {("orphan-chain", "error")}),
    "hash-mismatch-sep": ("01-overall-multiple-services", _renamed_sep, {("hash-mismatch", "warning")}),
    "hash-mismatch-svc": ("01-overall-multiple-services", _renamed_svc, {("hash-mismatch", "warning")}),
    "old-node-port": ("01-overall-multiple-services", _old_node_port,
                      {("missing-entry", "error"), ("stale-entry", "warning")}),
    "etp-local-acting-cluster": ("04-etp-local-nodeport", _etp_local_acting_cluster, {("policy-mismatch", "error")}),
    "itp-local-acting-cluster": ("07b-itp-local-with-local-endpoint", _itp_local_acting_cluster,
                                 {("policy-mismatch", "error")}),
    "affinity-lost": ("03-etp-local-lb-session-affinity", _affinity_lost, {("policy-mismatch", "error")}),
    "source-ranges-widened": ("02-loadbalancer-source-ranges", _source_ranges_widened,
                              {("policy-mismatch", "error")}),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_fault_is_found_on_its_node(tmp_path, plant):
    name, edit, expected = PLANTS[plant]
    case = CASES[name]
    edited = edit(case.restore_text)
    assert edited != case.restore_text
    code, doc = check(make_bundle(tmp_path / "b", case, {NODE: edited}))
    extra = planted(doc, name)
    assert {(f["id"], f["severity"]) for f in extra} == expected, [f["message"] for f in extra]
    for f in extra:
        assert f["node"] == NODE and f["message"] and f["evidence"], f
    assert code == (1 if any(sev == "error" for _, sev in expected) else 0)


def test_findings_name_what_was_expected_and_what_was_found(tmp_path):
    case = CASES["01-overall-multiple-services"]
    _, doc = check(make_bundle(tmp_path / "a", case, {NODE: _stale_extra_endpoint(case.restore_text)}))
    (stale,) = [f for f in doc["findings"] if f["id"] == "stale-endpoint"]
    assert stale["service"] == "ns1/svc1"
    assert "ns1/svc1:p80" in stale["message"] and "10.180.0.99:80" in stale["message"]
    assert any("10.180.0.99:80" in e and e.startswith("nat: ") for e in stale["evidence"])

    _, doc = check(make_bundle(tmp_path / "b", case, {NODE: _missing_endpoint(case.restore_text)}))
    (missing,) = [f for f in doc["findings"] if f["id"] == "missing-endpoint"]
    assert "10.180.0.5:80" in missing["message"]
    assert any(e.startswith("expected nat: ") and endpoint_chain("ns4/svc4:p80", "tcp", "10.180.0.5:80") in e
               for e in missing["evidence"])

    _, doc = check(make_bundle(tmp_path / "c", case, {NODE: _uneven_split(case.restore_text)}))
    (split,) = [f for f in doc["findings"] if f["id"] == "uneven-split"]
    assert "90.0%" in split["message"] and "10.0%" in split["message"] and "50.0%" in split["message"]

    case = CASES["04-etp-local-nodeport"]
    _, doc = check(make_bundle(tmp_path / "d", case, {NODE: _etp_local_acting_cluster(case.restore_text)}))
    (policy,) = doc["findings"]
    assert "externalTrafficPolicy Cluster" in policy["message"] and "says Local" in policy["message"]
    assert "client IP is lost" in policy["message"]
    assert any(e.startswith("expected nat: ") and "KUBE-SVL-" in e for e in policy["evidence"])


# --- several nodes ------------------------------------------------------------------------------------------

def test_the_fault_is_reported_on_the_node_that_has_it(tmp_path):
    case = CASES["09-nodeport-cluster"]  # externalTrafficPolicy Cluster: the same rules on every node
    text = case.restore_text
    sep = endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80")
    broken = text.replace(sep, endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.66:80")).replace(
        "10.180.0.1:80", "10.180.0.66:80")
    dumps = {NODE: text, "node-b": broken, "node-c": text}
    code, doc = check(make_bundle(tmp_path / "api", case, dumps))
    assert code == 1
    assert found(doc) == {("stale-endpoint", "node-b"), ("missing-endpoint", "node-b")}
    assert [n["name"] for n in doc["nodes"]] == [NODE, "node-b", "node-c"]
    # --node restricts the check
    code, doc = check(make_bundle(tmp_path / "api2", case, dumps), "--node", NODE)
    assert code == 0 and doc["findings"] == []

    # without the API there is nothing to expect: the odd node out drifts from the others
    code, doc = check(make_bundle(tmp_path / "noapi", case, dumps, api=False))
    assert found(doc) == {("node-drift", "node-b")}
    (drift,) = doc["findings"]
    assert "10.180.0.66:80" in drift["message"] and "10.180.0.1:80" in drift["message"]
    assert code == 0  # drift is a warning


def test_a_node_without_kube_proxy_rules_is_one_finding_not_thousands(tmp_path):
    case = CASES["01-overall-multiple-services"]
    empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    code, doc = check(make_bundle(tmp_path / "b", case, {NODE: case.restore_text, "node-b": empty}))
    assert code == 1
    on_b = [f for f in doc["findings"] if f["node"] == "node-b"]
    assert [f["id"] for f in on_b] == ["no-kube-proxy-rules"]


def test_a_node_that_could_not_be_read_is_named_and_the_rest_checked(tmp_path):
    case = CASES["09-nodeport-cluster"]
    bundle = make_bundle(tmp_path / "b", case, {NODE: case.restore_text, "node-b": case.restore_text})
    (Path(bundle) / "nodes" / "node-b" / "iptables.txt").unlink()
    code, doc = check(bundle)
    assert code == 4 and doc["findings"] == []
    assert {n["name"]: n["readable"] for n in doc["nodes"]} == {NODE: True, "node-b": False}


# --- choosing what to check ---------------------------------------------------------------------------------

def test_namespace_and_selector_choose_the_services(tmp_path):
    case = CASES["01-overall-multiple-services"]
    text = _uneven_split(_stale_extra_endpoint(case.restore_text))  # faults in ns1/svc1 and ns4/svc4
    services = case.items("services")
    for item in services:
        item["metadata"]["labels"] = {"app": item["metadata"]["name"], "tier": "front" if item["metadata"][
            "namespace"] in ("ns1", "ns2") else "back"}
    bundle = make_bundle(tmp_path / "b", case, {NODE: text}, services=services)
    _, doc = check(bundle, "-n", "ns1")
    assert {(f["id"], f["service"]) for f in doc["findings"]} == {("stale-endpoint", "ns1/svc1")}
    _, doc = check(bundle, "-n", "ns4")
    assert {(f["id"], f["service"]) for f in doc["findings"]} == {("uneven-split", "ns4/svc4")}

    loaded = load(InputOptions(bundle=bundle))
    ids = lambda sel: {(f.id, f.service) for f in run_check(loaded, selector=sel).findings}  # noqa: E731
    assert ids("tier=back") == {("uneven-split", "ns4/svc4"), ("no-endpoints", "ns6/svc6")}
    assert ids("app in (svc1, svc2)") == {("stale-endpoint", "ns1/svc1"), ("etp-local-no-local-endpoints", "ns2/svc2")}
    assert ids("tier!=back,!nolabel") == ids("tier=front")
    assert run_check(loaded, selector="app=nothing").services == 0


def test_selectors_are_parsed_as_kubectl_does():
    assert parse_selector("a=b,c!=d,e,!f,g in (x, y),h notin (z)") == [
        ("a", "=", frozenset({"b"})), ("c", "!=", frozenset({"d"})), ("e", "exists", frozenset()),
        ("f", "!exists", frozenset()), ("g", "in", frozenset({"x", "y"})), ("h", "notin", frozenset({"z"}))]
    for bad in ("a=b=c", "=x", ",", "a in x"):
        with pytest.raises(UsageError):
            parse_selector(bad)


def test_a_selector_needs_the_api(tmp_path):
    case = CASES["09-nodeport-cluster"]
    loaded = load(InputOptions(bundle=make_bundle(tmp_path / "b", case, api=False)))
    with pytest.raises(UsageError, match="selector"):
        run_check(loaded, selector="app=x")


# --- what the user sees -------------------------------------------------------------------------------------

def test_the_human_view_groups_by_severity_one_line_each(tmp_path):
    case = CASES["01-overall-multiple-services"]
    loaded = load(InputOptions(bundle=make_bundle(tmp_path / "b", case, {NODE: _stale_extra_endpoint(
        case.restore_text)})))
    result = run_check(loaded)
    out = io.StringIO()
    render_check(result, Console(file=out, width=80, no_color=True))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Checked 6 service(s) (6 port(s)) on 1 node(s): test-hostname")
    assert lines[1] == "Errors (1)" and "stale-endpoint" in lines[2] and "10.180.0.99:80" in lines[2]
    assert lines[3] == "Warnings (2)" and len(lines) == 7  # a finding is one line, however long
    assert lines[-1] == "1 error(s), 2 warning(s), 0 info"
    wide = io.StringIO()
    render_check(result, Console(file=wide, width=80, no_color=True), wide=True)
    assert "      nat: -A KUBE-SVC-" in wide.getvalue()


def test_python_m_svcdoctor_check_exit_codes(tmp_path):
    case = CASES["01-overall-multiple-services"]
    clean = make_bundle(tmp_path / "clean", case)
    broken = make_bundle(tmp_path / "broken", case, {NODE: _missing_service_rules(case.restore_text)})

    def run(*args):
        return subprocess.run([sys.executable, "-m", "svcdoctor", "check", *args], capture_output=True, text=True)

    assert run("--bundle", clean).returncode == 0  # warnings only
    assert run("--bundle", clean, "--fail-on", "warning").returncode == 1
    r = run("--bundle", broken, "-o", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["summary"]["error"] == 1
    r = run("--bundle", broken, "--fail-on", "bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_two_nodes_that_disagree_are_both_named(tmp_path):
    case = CASES["09-nodeport-cluster"]
    broken = _replaced_endpoint_09(case.restore_text)
    code, doc = check(make_bundle(tmp_path / "b", case, {NODE: case.restore_text, "node-b": broken}, api=False))
    assert found(doc) == {("node-drift", NODE), ("node-drift", "node-b")}
    by_node = {f["node"]: f["message"] for f in doc["findings"]}
    assert "endpoints only here: 10.180.0.66:80" in by_node["node-b"]
    assert "endpoints only here: 10.180.0.1:80" in by_node[NODE]


def _replaced_endpoint_09(text: str) -> str:
    sep = endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80")
    return text.replace(sep, endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.66:80")).replace(
        "10.180.0.1:80", "10.180.0.66:80")


def test_a_probability_that_leaves_connections_unmatched_is_uneven(tmp_path):
    case = CASES["01-overall-multiple-services"]
    text = replace_once(case.restore_text, SVC1_JUMP, SVC1_JUMP.replace(
        " -j ", " -m statistic --mode random --probability 0.7500000000 -j "))
    _, doc = check(make_bundle(tmp_path / "b", case, {NODE: text}))
    (split,) = planted(doc, "01-overall-multiple-services")
    assert split["id"] == "uneven-split" and "25.0% match no endpoint rule" in split["message"]


def test_nodes_in_another_proxy_mode_are_not_diffed(tmp_path):
    case = CASES["09-nodeport-cluster"]
    bundle = make_bundle(tmp_path / "b", case, {NODE: case.restore_text, "node-b": _missing_service_rules_09()})
    meta = Path(bundle) / "nodes" / "node-b" / "node.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "proxyMode": "ipvs"}))
    loaded = load(InputOptions(bundle=bundle))
    result = run_check(loaded)
    assert result.skipped == {"node-b": "kube-proxy runs in ipvs mode there"}
    # said once, as information, in the JSON too
    assert [(f.id, f.severity, f.node) for f in result.findings] == [("proxy-mode-not-read", "info", "node-b")]


def _missing_service_rules_09() -> str:
    # what an ipvs-mode node's iptables look like to svcdoctor: KUBE-SERVICES, no per-service chains
    return ("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + "
            "port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\nCOMMIT\n")


def test_every_finding_id_is_documented_with_its_severity():
    from svcdoctor.checks.findings import CATALOGUE

    text = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "findings.md").read_text()
    for fid, (severity, _) in CATALOGUE.items():
        heading = next((ln for ln in text.splitlines() if ln.startswith(f"## `{fid}` (")), None)
        assert heading is not None, f"docs/reference/findings.md has no section for {fid}"
        assert heading.split("(", 1)[1].startswith(severity), heading


def test_bad_settings_input_is_one_line_not_a_traceback(tmp_path):
    case = CASES["09-nodeport-cluster"]
    bundle = make_bundle(tmp_path / "b", case, config=True)
    (Path(bundle) / "cluster" / "kube-proxy-config.json").write_text(json.dumps({"iptables": ["not", "an", "object"]}))
    result = run_cli("check", "--bundle", bundle)
    assert result.exit_code == 2 and "kube-proxy config" in result.stderr and "Traceback" not in result.stderr
    # a node address that is not one is left out: the check still runs
    bundle = make_bundle(tmp_path / "c", case)
    meta = Path(bundle) / "nodes" / NODE / "node.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "internalIP": "not-an-ip"}))
    code, doc = check(bundle)
    assert code == 0 and doc["findings"] == []


def test_rules_in_the_other_backend_are_one_finding(tmp_path):
    case = CASES["09-nodeport-cluster"]
    empty = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
    nodes = [NodeCapture(name=NODE, iptables_save=empty, backend="nft", other_backend_save=case.restore_text,
                         warnings=["# Warning: iptables-legacy tables present, use iptables-legacy-save to see them"]),
             NodeCapture(name="node-b", iptables_save=case.restore_text, backend="nft")]
    api = ApiObjects(services=case.items("services"), endpointslices=case.items("endpointslices"), status="ok")
    bundle = write_bundle(ClusterSnapshot(cluster="case", nodes=nodes, api=api), tmp_path / "b")
    code, doc = check(bundle)
    assert code == 1 and found(doc) == {("backend-mismatch", NODE)}


def test_source_ranges_are_compared_as_networks(tmp_path):
    """kube-proxy 1.28 writes a range as the user spelled it ("203.0.113.5/25"); iptables prints the network."""
    case = CASES["02-loadbalancer-source-ranges"]
    services = case.items("services")
    ranges = services[0]["spec"]["loadBalancerSourceRanges"]
    services[0]["spec"]["loadBalancerSourceRanges"] = [r.replace("203.0.113.0/25", "203.0.113.5/25") for r in ranges]
    assert services[0]["spec"]["loadBalancerSourceRanges"] != ranges
    _, doc = check(make_bundle(tmp_path / "b", case, services=services))
    assert doc["findings"] == []
