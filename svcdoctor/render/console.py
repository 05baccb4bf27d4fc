"""The terminal: one place that decides colour and where output goes. `svcdoctor/environment.py` carries the
consoles made here to the output code."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def colour_wanted(no_color: bool = False) -> bool:
    """--no-color and NO_COLOR (https://no-color.org) turn colours off, whatever FORCE_COLOR says."""
    return not (no_color or "NO_COLOR" in os.environ)


def make_consoles(no_color: bool = False, json_output: bool = False, width: int | None = None):
    """(stdout console, stderr console). NO_COLOR / FORCE_COLOR are honoured; JSON output never gets ANSI codes."""
    force = os.environ.get("FORCE_COLOR") not in (None, "", "0")
    no_colour = not colour_wanted(no_color)
    out = Console(
        file=sys.stdout,
        no_color=no_colour or json_output,
        force_terminal=(force and not no_colour and not json_output) or None,
        color_system=None if (no_colour or json_output) else "auto",
        highlight=False,
        width=width,
        soft_wrap=json_output,
    )
    err = Console(file=sys.stderr, no_color=no_colour, highlight=False, stderr=True, soft_wrap=True)
    return out, err


def print_input_report(loaded, err: Console) -> None:
    """What every command says on stderr after reading its input: warnings, and each node that failed and why."""
    for w in loaded.warnings:
        err.print(f"svcdoctor: warning: {w}", highlight=False, markup=False)
    for node, why in sorted(loaded.failed.items()):
        err.print(f"svcdoctor: node {node} could not be read: {why}", highlight=False, markup=False)
