"""The terminal: one place that decides colour, width and where output goes. `svcdoctor/environment.py` carries the
consoles made here to the output code.

Two kinds of stdout, as kubectl has them: a terminal gets lines wrapped at word boundaries (render/wrap.py); a pipe
or a file gets whole lines, never wrapped and never elided, without the trailing spaces rich pads cells with, so
that grep, awk and cut see every name, IP and chain on the line it belongs to.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO

from rich.console import Console

# A pipe has no width: tables take their natural width under this one, and no line is wrapped or elided.
PIPE_WIDTH = 100_000
COLOUR_MODES = ("auto", "always", "never")


class WholeLines(io.TextIOBase):
    """stdout when it is not a terminal: lines passed on whole, each without its trailing spaces."""

    def __init__(self, file: TextIO):
        self.file = file
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if lines:
            self.file.write("\n".join(line.rstrip(" ") for line in lines) + "\n")
        return len(text)

    def flush(self) -> None:
        if self._partial:  # a print without its newline: pass it on as it is
            self.file.write(self._partial)
            self._partial = ""
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.file, "encoding", None) or "utf-8"


class OutputConsole(Console):
    """rich's Console, but a closed pipe (`svcdoctor … | head -1`) does not end the program with status 1: the output
    stops quietly and the command still returns the status of its work (`svcdoctor/cli.py`)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stdout()


def silence_stdout() -> None:
    """The reader went away: send whatever is left to /dev/null, so that neither this write nor Python's last flush
    at exit complains (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # stdout is not a file descriptor (a test's StringIO): nothing to silence


def is_pipe(console: Console) -> bool:
    return isinstance(console.file, WholeLines)


def wrapping(console: Console) -> bool:
    """Whether lines are wrapped for a reader: on a terminal, yes (at word boundaries, render/wrap.py); into a pipe
    or a file, never (even with --color always); a console a test hands in that is not a terminal, no either."""
    return console.is_terminal and not is_pipe(console)


def colour_wanted(no_color: bool = False, color: str = "auto") -> bool:
    """--color never, --no-color and NO_COLOR (https://no-color.org) turn colours off; --color always turns them on,
    in pipes too (a flag the user typed wins over the environment, as no-color.org asks)."""
    if color == "always":
        return True
    return not (no_color or color == "never" or "NO_COLOR" in os.environ)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def make_consoles(no_color: bool = False, json_output: bool = False, width: int | None = None, color: str = "auto"):
    """(stdout console, stderr console). --color, NO_COLOR and FORCE_COLOR are honoured; JSON output never gets ANSI
    codes; stdout that is not a terminal gets whole lines (`WholeLines`)."""
    colour = colour_wanted(no_color, color) and not json_output
    force = color == "always" or os.environ.get("FORCE_COLOR") not in (None, "", "0")
    terminal = _stdout_is_terminal()
    out = OutputConsole(
        file=sys.stdout if terminal else WholeLines(sys.stdout),
        no_color=not colour,
        force_terminal=(force and colour) or None,
        color_system="auto" if colour else None,
        highlight=False,
        width=width or (None if terminal else PIPE_WIDTH),
        soft_wrap=json_output,
    )
    err = Console(file=sys.stderr, no_color=not colour_wanted(no_color, color), highlight=False, stderr=True,
                  soft_wrap=True)
    return out, err


def print_input_report(loaded, err: Console) -> None:
    """What every command says on stderr after reading its input: warnings, and each node that failed and why."""
    for w in loaded.warnings:
        err.print(f"svcdoctor: warning: {w}", highlight=False, markup=False)
    for node, why in sorted(loaded.failed.items()):
        err.print(f"svcdoctor: node {node} could not be read: {why}", highlight=False, markup=False)
