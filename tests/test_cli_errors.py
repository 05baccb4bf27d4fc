"""Bad input never shows a traceback: one line on stderr and the contract's exit code."""

import os
import subprocess
import sys

import pytest

from cli_run import run_cli
from kube_proxy_cases import iter_cases

CASE01 = next(c for c in iter_cases() if c.name.startswith("01-"))


def one_line_error(result, code=2):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("svcdoctor: error: ")
    assert "Traceback" not in result.stderr


@pytest.fixture
def dump_file(tmp_path):
    p = tmp_path / "node1.txt"
    p.write_text(CASE01.restore_text)
    return p


def test_missing_path(tmp_path):
    one_line_error(run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(tmp_path / "nope")))


def test_empty_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    one_line_error(run_cli("explain", "svc1", "--bundle", str(p)))


def test_random_bytes(tmp_path):
    p = tmp_path / "random.bin"
    p.write_bytes(os.urandom(4096))
    one_line_error(run_cli("explain", "svc1", "--bundle", str(p)))


def test_truncated_dump_without_commit(tmp_path):
    text = CASE01.restore_text
    p = tmp_path / "cut.txt"
    p.write_text(text[: text.rindex("COMMIT")])
    one_line_error(run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(p)))


def test_truncated_mid_line(tmp_path):
    text = CASE01.restore_text
    p = tmp_path / "cut.txt"
    p.write_text(text[: len(text) // 2])
    one_line_error(run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(p)))


def test_overlong_line(tmp_path):
    p = tmp_path / "long.txt"
    p.write_text("*nat\n-A KUBE-SERVICES " + "x" * 100_000 + "\nCOMMIT\n")
    one_line_error(run_cli("explain", "svc1", "--bundle", str(p)))


def test_unknown_output_format(dump_file):
    one_line_error(run_cli("explain", "svc1", "-n", "ns1", "--bundle", str(dump_file), "-o", "yaml"))


def test_unknown_flag(dump_file):
    one_line_error(run_cli("explain", "svc1", "--bundle", str(dump_file), "--frobnicate"))


def test_unknown_service_names_close_matches(dump_file):
    r = run_cli("explain", "svc7", "-n", "ns1", "--bundle", str(dump_file))
    one_line_error(r)
    assert "ns1/svc1" in r.stderr


def test_service_in_other_namespace_is_suggested(dump_file):
    r = run_cli("explain", "svc4", "--bundle", str(dump_file))
    one_line_error(r)
    assert "-n ns4" in r.stderr


def test_bad_trace_destination(dump_file):
    one_line_error(run_cli("trace", "--dst", "nonsense", "--bundle", str(dump_file)))


def test_bad_fail_on(dump_file):
    one_line_error(run_cli("check", "--fail-on", "panic", "--bundle", str(dump_file)))


def test_bad_manifest_json(tmp_path):
    (tmp_path / "nodes" / "n1").mkdir(parents=True)
    (tmp_path / "manifest.json").write_text("{not json")
    one_line_error(run_cli("nodes", "--bundle", str(tmp_path)))


def test_wrong_bundle_format(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "something-else/v9"}')
    one_line_error(run_cli("nodes", "--bundle", str(tmp_path)))


def test_python_dash_m_behaves_like_the_script(dump_file):
    r = subprocess.run([sys.executable, "-m", "svcdoctor", "explain", "svc9", "-n", "ns1", "--bundle", str(dump_file)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("svcdoctor: error: no service ns1/svc9")
    assert "Traceback" not in r.stderr
