"""Acceptance (issue #11), with the real CLI (`python -m svcdoctor`): in a real pseudo-terminal at 80 and 120
columns words are never cut and names never elided; through a pipe every line is whole, unpadded, and greppable;
a reader that goes away (`| head -1`) ends the run quietly with the status of its work."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
ENV.update({"PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "xterm"})


def in_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """Run svcdoctor in a pseudo-terminal `columns` wide; (exit status, what the screen got)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin/stdout/stderr are the terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 200, columns, 0, 0))
        os.execve(sys.executable, [sys.executable, "-m", "svcdoctor", *args], ENV)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode().replace("\r\n", "\n")


def in_pipe(args: list[str], columns: int | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV, COLUMNS=str(columns)) if columns else ENV
    return subprocess.run([sys.executable, "-m", "svcdoctor", *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("columns", [80, 120])
def test_nodes_names_every_node_whole_on_a_terminal(columns):
    status, screen = in_terminal(["nodes", "--demo"], columns)
    assert status == 0
    assert all(len(line) <= columns for line in screen.splitlines())
    row = next(line for line in screen.splitlines() if "myk8s-worker2" in line)
    assert "172.18.0.4" in row and "…" not in row


@pytest.mark.parametrize("columns", [None, 80, 120, 40])
def test_nodes_through_a_pipe_greps_at_any_width(columns):
    nodes = in_pipe(["nodes", "--demo"], columns)
    grep = subprocess.run(["grep", "worker2"], input=nodes.stdout, capture_output=True, text=True)
    assert grep.returncode == 0
    assert grep.stdout.split()[:3] == ["myk8s-worker2", "worker", "172.18.0.4"]


@pytest.mark.parametrize("columns", [80, 120])
def test_no_check_line_breaks_inside_a_word_on_a_terminal(columns):
    status, screen = in_terminal(["check", "--demo"], columns)
    whole = in_pipe(["check", "--demo"]).stdout
    assert status == 1  # the demo's planted error
    lines = screen.splitlines()
    assert all(len(line) <= columns for line in lines)
    # a word cut in two would leave pieces that are not words of the unwrapped output
    assert set(screen.split()) <= set(whole.split())
    # the continuation lines of a finding are indented under it (a hanging indent)
    finding = next(i for i, line in enumerate(lines) if "etp-local-no-local-endpoints" in line)
    assert lines[finding + 1].startswith("      ") and lines[finding + 1].strip()


@pytest.mark.parametrize("columns", [80, 120])
def test_explain_wraps_at_words_on_a_terminal(columns):
    status, screen = in_terminal(["explain", "svc-clusterip", "--demo"], columns)
    whole = in_pipe(["explain", "svc-clusterip", "--demo"]).stdout
    assert status == 0
    assert all(len(line) <= columns for line in screen.splitlines())
    assert set(screen.split()) - {"│"} <= set(whole.split())  # the tree's guide continues beside wrapped lines


@pytest.mark.parametrize("columns", [None, 80])
def test_a_pipe_gets_whole_unpadded_lines(columns):
    for args in (["explain", "svc-clusterip", "--demo"], ["check", "--demo"], ["nodes", "--demo"],
                 ["trace", "--dst", "10.200.1.73:9000", "--demo"], ["services", "-A", "--demo"]):
        out = in_pipe(args, columns).stdout
        assert out and not any(line != line.rstrip() for line in out.splitlines()), args
        assert "…" not in out, args
    explain = in_pipe(["explain", "svc-clusterip", "--demo"], columns).stdout
    pod_line = next(line for line in explain.splitlines() if "webpod-dhb6q6wzxh-wzpx6" in line)
    assert "@ myk8s-worker" in pod_line and "pkts" in pod_line  # its node and counter on the grepped line
    check = in_pipe(["check", "--demo"], columns).stdout
    assert len([line for line in check.splitlines() if "etp-local-no-local-endpoints" in line]) == 2


def test_color_always_colours_a_pipe_and_never_wraps_it():
    out = in_pipe(["check", "--demo", "--color", "always"]).stdout
    assert "\x1b[" in out
    assert len([line for line in out.splitlines() if "etp-local-no-local-endpoints" in line]) == 2
    assert "\x1b[" not in in_pipe(["check", "--demo", "--color", "never"]).stdout


@pytest.mark.parametrize("args, status", [
    (["explain", "svc-clusterip", "--demo"], 0),
    (["explain", "svc-clusterip", "--demo", "-o", "json"], 0),
    (["check", "--demo"], 1),  # the status of the work: the demo's planted error
    (["nodes", "--demo"], 0),
])
def test_a_closed_pipe_ends_quietly_with_the_status_of_the_work(args, status):
    # `true` exits at once, long before svcdoctor has read its input: every write meets a closed pipe
    command = " ".join([sys.executable, "-m", "svcdoctor", *args]) + " | true; exit ${PIPESTATUS[0]}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == status, result.stderr
    assert result.stderr == ""
    head = subprocess.run(["bash", "-c", command.replace("| true", "| head -1")], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert head.returncode == status and head.stderr == ""
