"""docs/reference/commands.md is made from every command's --help (as sqlite-utils does), so the reference
cannot drift from the CLI: tests/test_docs.py fails when they differ. Regenerate with
`python -m svcdoctor.cli_reference > docs/reference/commands.md`.

It runs the CLI itself, so it sits next to `svcdoctor/cli.py`, not in `render/` (which the CLI imports)."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout

COMMANDS = ("explain", "trace", "check", "watch", "nodes", "services", "collect", "graph")  # the input options
OTHER_COMMANDS = ("completion",)  # reads no input

INTRO = """# Command reference

Generated from `svcdoctor COMMAND --help`; do not edit by hand (see `svcdoctor/cli_reference.py`).

Every command reads its input from one of: `--bundle PATH` (a bundle directory, a `.tar.gz`, or one rules file),
`--demo` (the bundle shipped with svcdoctor), or the live kind cluster (`--cluster`, `--kubeconfig`, `--context`).
`-o json` prints exactly one JSON document on stdout (JSON Lines for `watch`); progress, warnings and errors go to
stderr. `--color auto|always|never`, `NO_COLOR` and `FORCE_COLOR` are honoured. On a terminal long lines wrap at
word boundaries; into a pipe or a file every line is whole and unpadded (grep, awk and cut see every name, IP and
chain). The input options may also come before the command (`svcdoctor --demo nodes`); bare `svcdoctor` prints the
help. `kubectl svcdoctor …` runs the same program (the `kubectl-svcdoctor` plugin that pip installs).

## Exit codes

| code | meaning |
|---|---|
| 0 | done (for `check`: no finding at or above `--fail-on`, default `error`) |
| 1 | `check` found problems at or above `--fail-on` |
| 2 | usage error or unusable input: bad flag, unreadable or malformed bundle, unknown service (with close matches) |
| 3 | cannot reach what the command needs: no docker daemon, no such kind cluster, API unreachable when needed |
| 4 | partial: some nodes could not be read; the rest is reported, each failed node named with its reason |
| 130 | interrupted (Ctrl-C) |
"""


def command_help(command: str) -> str:
    from svcdoctor.cli import run

    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with redirect_stdout(out):
            run([command, "--help"])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue().rstrip() + "\n"


def reference() -> str:
    parts = [INTRO]
    for command in COMMANDS + OTHER_COMMANDS:
        parts.append(f"\n## `svcdoctor {command}`\n\n```\n{command_help(command)}```\n")
    return "".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
