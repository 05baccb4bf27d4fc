"""A dump pasted from a terminal reads as the clean dump it came from (model/paste.py).

The fixtures are made here from the demo bundle's kernel-made dump of one node: prompts, typed commands, prose
and kubectl banners put between its lines, lines repeated, indentation and CR line ends; a grep paste with its
`:CHAIN - [0:0]` declarations; a chain listed twice with moved counters. hypothesis mixes these at random and
shrinks any failing paste to its core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_run import run_cli
from svcdoctor.collect.bundle import demo_bundle_path
from svcdoctor.commands.explain import explain
from svcdoctor.inputs import InputOptions, load
from svcdoctor.render.json_doc import explain_document

NODE_DUMP = demo_bundle_path() / "nodes" / "myk8s-worker" / "iptables.txt"
CLEAN = NODE_DUMP.read_text()
NOISE = [
    "$ iptables-save -c",
    "user@host:~$ sudo iptables -t nat -S",
    "controlplane $ kubectl exec -it -n kube-system kube-proxy-abcde -- iptables-save",
    'Defaulted container "kube-proxy" out of: kube-proxy',
    "Here is what the node has after the restart:",
    "iptables -t nat -S",
]


def _answer(path, service: str = "svc-clusterip") -> dict:
    doc = explain_document(explain(load(InputOptions(bundle=str(path), service=f"default/{service}")), service))
    return {"ports": doc["ports"], "findings": doc["findings"]}


@pytest.fixture(scope="module")
def clean_answer(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "node.txt"
    path.write_text(CLEAN)
    return _answer(path)


@st.composite
def pastes(draw):
    lines = CLEAN.splitlines()
    for _ in range(draw(st.integers(0, 4))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(NOISE)))
    for _ in range(draw(st.integers(0, 4))):
        rules = [i for i, ln in enumerate(lines) if "-A " in ln]
        at = draw(st.sampled_from(rules))
        lines.insert(at + 1, lines[at])  # a line pasted twice
    indent = draw(st.sampled_from(["", "  ", "\t"]))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(indent + ln for ln in lines) + end


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paste=pastes())
def test_a_paste_explains_like_the_clean_dump(paste, clean_answer, tmp_path):
    path = tmp_path / "node.txt"  # the node is named after the file
    path.write_text(paste, newline="")
    assert _answer(path) == clean_answer


def test_skipped_lines_are_named_once_on_stderr(tmp_path):
    path = tmp_path / "paste.txt"
    path.write_text("user@host:~$ sudo iptables-save -c\n" + CLEAN + "That was all.\n")
    r = run_cli("explain", "svc-clusterip", "--bundle", str(path))
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("skipped 2 lines that are not rules") == 1
    assert "line 1 `user@host:~$ sudo iptables-save -c`" in r.stderr


def test_a_grep_paste_with_declarations_outside_a_table(tmp_path, clean_answer):
    chains = {w for ln in CLEAN.splitlines() if "svc-clusterip" in ln for w in ln.split() if w.startswith("KUBE-S")}
    grep = [ln.split("] ", 1)[-1] for ln in CLEAN.splitlines()
            if any(c in ln for c in chains) and not ln.startswith("*")]
    path = tmp_path / "grep.txt"
    path.write_text("$ iptables-save | grep svc-clusterip\n" + "\n".join(grep) + "\n")
    r = run_cli("explain", "svc-clusterip", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stderr
    shares = {(e["ip"], round(e["probability"], 3)) for p in r.json()["ports"] for n in p["nodes"] for en in n["entries"]
              for e in en["endpoints"]}
    want = {(e["ip"], round(e["probability"], 3)) for p in clean_answer["ports"] for n in p["nodes"]
            for en in n["entries"] for e in en["endpoints"]}
    assert shares == want


def test_a_chain_listed_twice_is_not_concatenated(tmp_path):
    svc = next(ln.split()[2] for ln in CLEAN.splitlines() if "-A KUBE-SVC-" in ln and "svc-clusterip" in ln)
    listing = [ln.split("] ", 1)[1] for ln in CLEAN.splitlines() if ln.split("] ", 1)[-1].startswith(f"-A {svc} ")]
    first = "\n".join(ln.replace(" -j ", " -c 1 60 -j ") for ln in listing)
    later = "\n".join(ln.replace(" -j ", " -c 9 540 -j ") for ln in listing)
    entry = next(ln.split("] ", 1)[1] for ln in CLEAN.splitlines() if "-A KUBE-SERVICES " in ln and svc in ln)
    path = tmp_path / "twice.txt"
    path.write_text(f"{entry}\n$ iptables -t nat -S {svc} -v\n{first}\n$ iptables -t nat -S {svc} -v\n{later}\n")
    r = run_cli("graph", "svc-clusterip", "--bundle", str(path), "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert "listed more than once, the last counters read" in r.stderr
    chains = [c for n in r.json()["nodes"].values() for c in n["chains"] if c["name"] == svc]
    assert [c["rules"] for c in chains] == [len(listing)]  # once, not twice


@pytest.mark.parametrize("text, message", [
    ("$ iptables -S\nnothing here\n", "no iptables rules found"),
    ("$ iptables -S\n-A KUBE-SERVICES -j\n[12:x] -A KUBE-SERVICES -j ACCEPT\n", "line 3"),
])
def test_bad_pastes_are_still_errors(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    r = run_cli("explain", "svc-clusterip", "--bundle", str(path))
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def _svcdoctor(*args: str, stdin) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "svcdoctor", *args], stdin=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NO_COLOR": "1"})


def test_bundle_dash_reads_a_paste_from_standard_input(clean_answer):
    with open(NODE_DUMP) as dump:
        r = _svcdoctor("explain", "svc-clusterip", "--bundle", "-", "-o", "json", stdin=dump)
    assert r.returncode == 0, r.stderr
    endpoints = json.loads(r.stdout)["ports"][0]["nodes"][0]["entries"][0]["endpoints"]
    assert [e["ip"] for e in endpoints] == [
        e["ip"] for e in clean_answer["ports"][0]["nodes"][0]["entries"][0]["endpoints"]]


def test_a_dump_piped_in_without_bundle_dash_is_named_not_sent_to_docker():
    with open(NODE_DUMP) as dump:
        r = _svcdoctor("explain", "svc-clusterip", stdin=dump)
    assert r.returncode == 2
    assert "--bundle -" in r.stderr and "Traceback" not in r.stderr


def test_a_chain_listed_again_from_its_n_line_is_read_from_the_later_listing(tmp_path):
    ext = next(ln.split()[2] for ln in CLEAN.splitlines() if "-A KUBE-EXT-" in ln and "svc-local" in ln)
    later = [ln.split("] ", 1)[1] for ln in CLEAN.splitlines() if ln.split("] ", 1)[-1].startswith(f"-A {ext} ")]
    svc = ext.replace("KUBE-EXT-", "KUBE-SVC-")
    earlier = [f'-A {ext} -m comment --comment "masquerade traffic for default/svc-local:http external destinations"'
               " -j KUBE-MARK-MASQ", f"-A {ext} -j {svc}"]
    path = tmp_path / "ext.txt"
    path.write_text("\n".join([f"# policy Cluster\n$ iptables -t nat -S {ext}", f"-N {ext}", *earlier,
                               f"# policy Local\n$ iptables -t nat -S {ext}", f"-N {ext}", *later]) + "\n")
    r = run_cli("graph", "svc-local", "--bundle", str(path), "-o", "json")
    assert "listed twice with different rules, the later listing read: " + ext in r.stderr
    from svcdoctor.model.parse import parse_pasted_rules
    rules = parse_pasted_rules(path.read_text(), "ext")
    assert [r.text for r in rules.chain("nat", ext).rules] == later


SERVICES = ["svc-clusterip", "svc-nodeport", "svc-local", "svc-affinity"]


def _shares(doc: dict) -> set:
    return {(e["kind"], ep["ip"], round(ep["probability"], 3))
            for p in doc["ports"] for n in p["nodes"] for e in n["entries"] if e["kind"] == "clusterIP"
            for ep in e["endpoints"]}


@st.composite
def partial_pastes(draw):
    """A grep for one service, or `iptables -t nat -S CHAIN -v` of its chains, with the paste's usual noise."""
    service = draw(st.sampled_from(SERVICES))
    lines = [ln.split("] ", 1)[-1] for ln in CLEAN.splitlines()]
    if draw(st.booleans()):
        body = [f"$ iptables-save | grep {service}"] + [ln for ln in lines if service + ":" in ln]
    else:
        chains = sorted({ln.split()[1] for ln in lines if ln.startswith("-A KUBE-S") and service + ":" in ln
                         and ln.split()[1].startswith(("KUBE-SVC-", "KUBE-SVL-"))})
        body = []
        for chain in chains:
            body += [f"user@node:~$ sudo iptables -t nat -S {chain} -v", f"-N {chain}"]
            body += [ln.replace(" -j ", " -c 0 0 -j ") for ln in lines if ln.startswith(f"-A {chain} ")]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(body) - 1))
        body.insert(at + 1, body[at])  # pasted twice
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return service, end.join(body) + end


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=partial_pastes())
def test_a_partial_paste_gives_the_clean_dumps_split(case, tmp_path):
    service, paste = case
    clean = tmp_path / "node.txt"
    clean.write_text(CLEAN)
    want = _shares(explain_document(explain(load(InputOptions(bundle=str(clean))), service)))
    path = tmp_path / "paste.txt"
    path.write_text(paste, newline="")
    got = _shares(explain_document(explain(load(InputOptions(bundle=str(path))), service)))
    assert got == want
