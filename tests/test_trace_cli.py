"""All 169 of kube-proxy's packet flows through the command users type: `svcdoctor trace --bundle … -o json`."""

import pytest

from cli_run import run_cli
from test_trace_cases import ALL_FLOWS, case_text, expected_of


@pytest.fixture(scope="module")
def rules_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    files = {}
    for _, folder, _, _, _ in ALL_FLOWS:
        if folder not in files:
            path = root / f"{len(files):02d}-node.txt"
            path.write_text(case_text(folder))
            files[folder] = path
    return files


@pytest.mark.parametrize("folder,node_ip,flow,protocol", [f[1:] for f in ALL_FLOWS], ids=[f[0] for f in ALL_FLOWS])
def test_flow_through_the_cli(rules_files, folder, node_ip, flow, protocol):
    r = run_cli("trace", "--bundle", str(rules_files[folder]), "--dst", f"{flow['destIP']}:{flow['destPort']}",
                "--src", flow["sourceIP"], "--node-ip", node_ip, "--proto", protocol, "-o", "json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    verdict, targets = expected_of(flow)
    got = (doc["verdict"], {f"{e['ip']}:{e['port']}" for e in doc["endpoints"] if e.get("verdict", "dnat") == "dnat"},
           doc["masquerade"])
    assert got == (verdict, targets, flow["masq"])
