"""Help and habits (issue #11): every command's --help has examples that run on the demo bundle with the exit
status they are listed with; the summaries are whole; bare `svcdoctor` is the help; the input options come before
or after the command; completion scripts load in a real shell; `kubectl svcdoctor` runs the plugin."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import run_cli
from svcdoctor.cli import app
from svcdoctor.help_examples import EXAMPLES

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands if not c.hidden]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}


def test_every_command_has_examples_in_its_help():
    assert set(COMMANDS) == set(EXAMPLES)
    for command in COMMANDS:
        text = run_cli(command, "--help").stdout
        assert "Examples:" in text, command
        for example in EXAMPLES[command]:
            assert example.line in text, (command, example.line)


def _argv(line: str) -> list[str]:
    """What svcdoctor itself is asked, from an example line: the shell's `source <(…)`, pipes and redirections
    left out."""
    if line.startswith("source <("):
        line = line[len("source <("):].rstrip(")")
    words = shlex.split(line.split(" | ", 1)[0].split(" > ", 1)[0])
    assert words[0] == "svcdoctor", line
    return words[1:]


@pytest.mark.parametrize("command, example", [(c, e) for c in EXAMPLES for e in EXAMPLES[c]],
                         ids=[e.line for c in EXAMPLES for e in EXAMPLES[c]])
def test_each_example_runs_on_the_demo(command, example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # collect writes its bundle here
    argv = _argv(example.line)
    if command != "completion" and "--demo" not in argv:
        argv.append("--demo")
    result = run_cli(*argv)
    assert result.exit_code == example.demo_status, (argv, result.stderr)
    assert "Traceback" not in result.stderr


def test_bare_svcdoctor_is_the_help_and_exit_0():
    result = run_cli()
    assert result.exit_code == 0
    assert "Commands:" in result.stdout and "Examples:" in result.stdout


def test_the_command_summaries_are_whole():
    text = " ".join(run_cli("--help").stdout.split())
    assert ",..." not in text and "s..." not in text  # click cuts a summary as "paths,..."
    for info in app.registered_commands:
        if info.hidden:
            continue
        first_line = " ".join(info.callback.__doc__.strip().splitlines()[0].split())
        assert first_line in text, first_line


@pytest.mark.parametrize("args", [
    ["--demo", "nodes"],
    ["--demo", "-o", "json", "nodes"],
    ["--output=json", "--demo", "nodes"],
    ["-n", "kube-system", "--demo", "services"],
    ["--demo", "--node", "myk8s-worker", "explain", "svc-clusterip"],
])
def test_the_input_options_may_come_before_the_command(args):
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr


def test_svc_is_services():
    assert run_cli("svc", "--demo").stdout == run_cli("services", "--demo").stdout


# --- completion, in the real shells ------------------------------------------------------------------------------
def _svcdoctor(*args, env=None):
    return subprocess.run([sys.executable, "-m", "svcdoctor", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_the_bash_completion_script_loads_and_completes(tmp_path):
    # the script runs `svcdoctor` from PATH: a shim that runs this checkout
    shim = tmp_path / "svcdoctor"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m svcdoctor "$@"\n')
    shim.chmod(0o755)
    env = {**ENV, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    loads = subprocess.run(["bash", "-c", "source <(svcdoctor completion bash)"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert loads.returncode == 0, loads.stderr
    script = ("source <(svcdoctor completion bash) && COMP_WORDS=(svcdoctor ser) && COMP_CWORD=1 && "
              "_svcdoctor_completion svcdoctor && echo \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["services"], done.stderr


def test_completion_offers_choices():
    env = {**ENV, "_SVCDOCTOR_COMPLETE": "complete_bash", "COMP_WORDS": "svcdoctor check --fail-on ",
           "COMP_CWORD": "3"}
    assert _svcdoctor(env=env).stdout.split() == ["error", "warning", "info"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_the_zsh_and_fish_scripts(shell):
    result = _svcdoctor("completion", shell)
    assert result.returncode == 0 and "_SVCDOCTOR_COMPLETE" in result.stdout
    if shutil.which(shell):  # parse it where the shell is installed
        check = subprocess.run([shell, "-n"], input=result.stdout, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def test_an_unknown_shell_is_exit_2():
    assert run_cli("completion", "tcsh").exit_code == 2


# --- kubectl svcdoctor -------------------------------------------------------------------------------------------
def test_pyproject_declares_the_kubectl_plugin():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'kubectl-svcdoctor = "svcdoctor.cli:kubectl_main"' in text


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
def test_kubectl_runs_the_plugin(tmp_path):
    plugin = tmp_path / "kubectl-svcdoctor"  # what pip installs for the console script
    plugin.write_text(f"#!{sys.executable}\nfrom svcdoctor.cli import kubectl_main\nkubectl_main()\n")
    plugin.chmod(0o755)
    env = {**ENV, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    result = subprocess.run([shutil.which("kubectl"), "svcdoctor", "explain", "svc-clusterip", "-n", "default",
                             "--demo"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("default/svc-clusterip")
