"""Lines that wrap for people and stay whole for pipes.

On a terminal a long line (a finding, an endpoint with its pod, node and counters) is broken at word boundaries and
its continuation lines are indented under its start (a hanging indent), so no word is cut and the eye finds the next
item; a word longer than the line is folded. Into a pipe or a file it is one line (`render/console.py`, `wrapping`),
for grep.
"""

from __future__ import annotations

import re

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text

from svcdoctor.render.console import wrapping

_WORD = re.compile(r"\S+\s*")


class Hanging:
    """A Text that wraps with a hanging indent on a terminal, and is printed whole anywhere else."""

    def __init__(self, text: Text | str, indent: int = 4):
        self.text = text if isinstance(text, Text) else Text(text)
        self.indent = indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not wrapping(console):
            yield from self.text.render(console)
            yield Segment.line()
            return
        for line in hanging_lines(self.text, options.max_width, self.indent):
            yield from line.render(console)
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions):
        from rich.measure import Measurement

        return Measurement(min(options.max_width, self.indent + 1), self.text.cell_len)


def hanging_lines(text: Text, width: int, indent: int) -> list[Text]:
    """`text` cut at word boundaries into lines of at most `width` cells; the lines after the first start with
    `indent` spaces."""
    indent = min(indent, max(width // 2, 0))
    lines = text.divide(_breaks(text.plain, width, indent))
    out = []
    for i, line in enumerate(lines):
        line.rstrip()
        if i:
            line = Text(" " * indent) + line
        out.append(line)
    return out


def _breaks(plain: str, width: int, indent: int) -> list[int]:
    """Offsets in `plain` where a new line starts: before the word that would not fit (greedy, as fmt does)."""
    breaks: list[int] = []
    room = max(width, 1)
    lead = len(plain) - len(plain.lstrip(" "))
    column = lead
    for match in _WORD.finditer(plain, lead):
        word = match.group()
        size = cell_len(word.rstrip())
        longer_than_a_line = size > width - indent
        if column and column + size > room and (not longer_than_a_line or room - column < 8):
            breaks.append(match.start())
            room, column = max(width - indent, 1), 0
        start = match.start()
        while column + size > room:  # a word longer than a line: fold it where it is
            cut = _fold_at(plain, start, room - column)
            breaks.append(cut)
            size -= cell_len(plain[start:cut])
            start, room, column = cut, max(width - indent, 1), 0
        column += cell_len(word[start - match.start():])
    return breaks


def _fold_at(plain: str, start: int, room: int) -> int:
    used, i = 0, start
    while i < len(plain) and used + cell_len(plain[i]) <= room:
        used += cell_len(plain[i])
        i += 1
    return max(i, start + 1)


def print_line(console: Console, text: Text | str, indent: int = 4) -> None:
    """One logical line: wrapped with a hanging indent on a terminal, whole anywhere else."""
    if wrapping(console):
        console.print(Hanging(text, indent))
    else:
        console.print(text, soft_wrap=True)
