"""Every -o json document against the shapes in docs/reference/json.md (the fields listed there are required), on
the demo bundle."""

from cli_run import run_cli


def doc(*args):
    r = run_cli(*args, "-o", "json")
    assert r.exit_code in (0, 1), r.stderr
    assert "\x1b[" not in r.stdout
    d = r.json()
    assert d["apiVersion"] == "svcdoctor/v1"
    return d


def test_nodes():
    d = doc("nodes", "--demo")
    assert d["kind"] == "Nodes"
    assert [n["name"] for n in d["nodes"]] == ["myk8s-control-plane", "myk8s-worker", "myk8s-worker2", "myk8s-worker3"]
    for n in d["nodes"]:
        assert {"name", "role", "internalIP", "backend", "proxyMode", "rules", "kubeChains"} <= set(n)
        assert n["backend"] == "nft" and n["proxyMode"] == "iptables" and n["rules"] > 100


def test_check_and_fail_on():
    r = run_cli("check", "--demo", "-o", "json")
    assert r.exit_code == 1  # the demo's ETP-Local node has dropped packets: an error
    d = r.json()
    assert d["kind"] == "Check"
    assert {"nodes", "findings", "summary"} <= set(d)
    assert set(d["summary"]) == {"error", "warning", "info"}
    assert d["summary"]["error"] == sum(1 for f in d["findings"] if f["severity"] == "error") >= 1
    for f in d["findings"]:
        assert {"id", "severity", "node", "service", "message", "evidence"} <= set(f)
    ids = {(f["id"], f["node"]) for f in d["findings"]}
    assert ("etp-local-no-local-endpoints", "myk8s-worker3") in ids
    # --fail-on raises or lowers the bar
    assert run_cli("check", "--demo", "--node", "myk8s-worker", "-o", "json").exit_code == 0
    assert run_cli("check", "--demo", "--node", "myk8s-control-plane", "--fail-on", "warning").exit_code == 1


def test_trace():
    d = doc("trace", "--dst", "10.200.1.73:9000", "--src", "10.10.1.5", "--node", "myk8s-control-plane", "--demo")
    assert d["kind"] == "Trace"
    assert {"node", "packet", "verdict", "endpoints", "masquerade", "steps"} <= set(d)
    assert d["packet"] == {"src": "10.10.1.5", "dst": "10.200.1.73", "dport": 9000, "protocol": "tcp"}
    assert d["verdict"] == "dnat" and d["masquerade"] is False
    assert sorted(e["ip"] for e in d["endpoints"]) == ["10.10.2.2", "10.10.3.2", "10.10.4.2"]
    for e in d["endpoints"]:
        assert {"ip", "port", "chain", "probability", "masquerade"} <= set(e)
    for s in d["steps"]:
        assert {"table", "chain", "rule", "action"} <= set(s)


def test_trace_over_several_nodes_is_one_document():
    d = doc("trace", "--dst", "172.18.0.5:31437", "--src", "172.18.0.100", "--demo")
    assert d["kind"] == "TraceList" and len(d["items"]) == 4
    by_node = {t["node"]: t for t in d["items"]}
    assert by_node["myk8s-worker3"]["verdict"] == "drop"


def test_explain_demo_seed_counters():
    d = doc("explain", "svc-clusterip", "--demo", "--node", "myk8s-control-plane")
    assert d["kind"] == "Explain"
    port = d["ports"][0]
    assert port["chains"]["svc"] == "KUBE-SVC-KBDEBIL6IU6WL7RF"
    (node,) = port["nodes"]
    (entry,) = node["entries"]
    assert entry["packets"] == 92
    assert [e["packets"] for e in entry["endpoints"]] == [38, 29, 25]
    assert [round(e["probability"], 6) for e in entry["endpoints"]] == [0.333333] * 3
    assert [e["ruleProbability"] for e in entry["endpoints"]] == [0.33333333349, 0.5, None]
    assert all(e["pod"].startswith("default/webpod-") for e in entry["endpoints"])


def test_collect_from_a_bundle_round_trips(tmp_path):
    out = tmp_path / "copy.tar.gz"
    r = run_cli("collect", "--out", str(out), "--demo")
    assert r.exit_code == 0, r.stderr
    a = doc("explain", "svc-local", "--demo")
    b = doc("explain", "svc-local", "--bundle", str(out))
    a.pop("source"), b.pop("source")
    assert a == b


def test_every_command_takes_the_common_options():
    """docs/reference/commands.md: every command takes --bundle, --demo, --cluster, --kubeconfig, --context, --no-api, --node,
    -o/--output and --no-color."""
    from svcdoctor.cli_reference import COMMANDS, command_help

    for command in COMMANDS:
        text = command_help(command)
        for option in ("--bundle", "--demo", "--cluster", "--kubeconfig", "--context", "--no-api", "--node",
                       "-o, --output", "--no-color"):
            assert option in text, (command, option)


def test_graph_json():
    d = doc("graph", "svc-local", "--demo")
    assert d["kind"] == "Graph" and set(d["nodes"]) == {"myk8s-control-plane", "myk8s-worker", "myk8s-worker2",
                                                         "myk8s-worker3"}
