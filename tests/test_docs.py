"""The docs are tested: the command reference is --help, and every `svcdoctor … --demo` line in the docs runs."""

import shlex
from pathlib import Path

import pytest

from cli_run import run_cli
from svcdoctor.cli_reference import reference

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_command_reference_is_the_help_text():
    assert (DOCS / "reference" / "commands.md").read_text() == reference(), (
        "docs/reference/commands.md is stale: python -m svcdoctor.cli_reference > docs/reference/commands.md")


def demo_commands():
    found = []
    for md in sorted(DOCS.rglob("*.md")) + [DOCS.parent / "README.md"]:
        in_code = False
        for line in md.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            if in_code and line.startswith("svcdoctor ") and "--demo" in line:
                cmd = line.split(" #", 1)[0].split(">", 1)[0].split("|", 1)[0].strip()
                found.append((f"{md.relative_to(DOCS.parent)}: {cmd}", cmd))
    return found


DEMO_COMMANDS = demo_commands()


def test_docs_have_demo_commands():
    assert len(DEMO_COMMANDS) >= 8


@pytest.mark.parametrize("cmd", [c for _, c in DEMO_COMMANDS], ids=[i for i, _ in DEMO_COMMANDS])
def test_demo_command_in_docs_runs(cmd):
    argv = shlex.split(cmd)[1:]
    result = run_cli(*argv)
    assert result.exit_code in (0, 1), result.stderr  # check exits 1 on the demo's planted error, as documented
    assert "Traceback" not in result.stderr
    if argv[0] == "trace":  # a trace that matches nothing would mean the docs name an address the demo lacks
        assert "NONE" not in result.stdout.split("\n", 1)[0], result.stdout


def test_tutorial_quotes_real_output(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("NO_COLOR", "1")
    text = (DOCS / "tutorial.md").read_text()
    nodes = run_cli("nodes", "--demo")
    for line in nodes.stdout.splitlines():
        assert line.rstrip() in text
    monkeypatch.setenv("COLUMNS", "200")
    explain = run_cli("explain", "svc-clusterip", "--demo").stdout
    quoted = [line.rstrip() for line in explain.splitlines()][:9]
    assert "myk8s-control-plane 92" in explain
    for line in quoted:
        assert line in text, f"the tutorial's explain excerpt is stale: {line!r}"
