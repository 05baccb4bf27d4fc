"""`trace` as people read it (issue #11): identical nodes folded into one block, the service, port and pods named,
the rule that drops the packet quoted with its comment, masquerading counted per path."""

from cli_run import run_cli
from svcdoctor.model.trace import TracePath, TraceResult, Packet
from svcdoctor.render.trace_view import masquerade_words


def test_identical_nodes_are_one_block():
    out = run_cli("trace", "--dst", "10.200.1.73:9000", "--src", "10.10.1.5", "--demo").stdout
    lines = out.splitlines()
    assert lines[0] == "myk8s-control-plane, myk8s-worker, myk8s-worker2, myk8s-worker3: same path"
    assert out.count("steps (share of new connections") == 1
    assert "(no path is masqueraded)" in lines[1]


def test_the_service_port_and_pods_are_named():
    r = run_cli("trace", "--dst", "10.200.1.73:9000", "--src", "10.10.1.5", "--demo")
    assert "service default/svc-clusterip, port svc-webport" in r.stdout
    assert "10.10.2.2:80  webpod-dhb6q6wzxh-wzpx6 @ myk8s-worker" in r.stdout
    doc = run_cli("trace", "--dst", "10.200.1.73:9000", "--src", "10.10.1.5", "--demo", "-o", "json").json()
    first = doc["items"][0]
    assert first["service"] == {"namespace": "default", "name": "svc-clusterip", "port": "svc-webport",
                                "servicePortName": "default/svc-clusterip:svc-webport"}
    assert first["pods"] == ["default/webpod-dhb6q6wzxh-hbn9p", "default/webpod-dhb6q6wzxh-qkcfk",
                             "default/webpod-dhb6q6wzxh-wzpx6"]
    assert {e["node"] for e in first["endpoints"]} == {"myk8s-worker", "myk8s-worker2", "myk8s-worker3"}


def test_the_dropping_rule_is_quoted_with_its_comment():
    r = run_cli("trace", "--dst", "172.18.0.5:31437", "--demo")
    lines = r.stdout.splitlines()
    assert "myk8s-control-plane, myk8s-worker, myk8s-worker2: same path" in lines
    assert "  filter KUBE-EXTERNAL-SERVICES: default/svc-local:http has no local endpoints → DROP" in lines
    doc = run_cli("trace", "--dst", "172.18.0.5:31437", "--demo", "--node", "myk8s-worker3", "-o", "json").json()
    assert doc["verdict"] == "drop"
    (stop,) = doc["stoppedBy"]
    assert stop["comment"] == "default/svc-local:http has no local endpoints" and stop["share"] == 1.0


def test_without_api_objects_pods_are_not_named():
    doc = run_cli("trace", "--dst", "10.200.1.73:9000", "--demo", "--no-api", "--node", "myk8s-worker",
                  "-o", "json").json()
    assert doc["pods"] == [] and all(e["pod"] is None for e in doc["endpoints"])
    assert doc["service"]["name"] == "svc-clusterip"  # from the rules' comments


def _result(*masq: bool, verdict="dnat") -> TraceResult:
    paths = [TracePath(1 / len(masq), verdict, "10.0.0.1:80", m, []) for m in masq]
    return TraceResult("n", Packet("1.2.3.4", "10.0.0.9", 80), verdict, [], any(masq), [], paths=paths)


def test_masquerade_is_worded_per_path():
    assert masquerade_words(_result(True, True, True)) == "every path is masqueraded"
    assert masquerade_words(_result(True, False, True)) == "masqueraded on 2 of 3 paths"
    assert masquerade_words(_result(False, False)) == "no path is masqueraded"
    assert masquerade_words(_result(True)) == "masqueraded"
    assert masquerade_words(_result(True, verdict="drop")) is None  # a dropped packet is not masqueraded
