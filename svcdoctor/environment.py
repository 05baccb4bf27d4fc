"""What a command's output goes to, and how: one object handed to the output code (as httpie hands its
`Environment` around), instead of module globals and loose (stdout, stderr) pairs. Tests build their own with
`Environment(stdout=Console(file=io.StringIO()), stderr=...)` and read what was written.

Importing this module is cheap (rich is imported when consoles are made): `svcdoctor --help` stays fast
(`benchmarks/bench_help.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(slots=True)
class Environment:
    stdout: Console
    stderr: Console
    output: str = "table"  # table | wide | json (svcdoctor.options.OutputFormat, a str)
    colour: bool = True  # colours on the terminal; never in JSON
    debug: bool = False  # --debug: errors show their traceback

    @classmethod
    def create(cls, output: str = "table", no_color: bool = False, debug: bool = False,
               color: str = "auto") -> Environment:
        """The real terminal: sys.stdout and sys.stderr, --color, NO_COLOR and FORCE_COLOR honoured
        (`render/console.py`); a pipe or a file gets whole lines."""
        from svcdoctor.render.console import colour_wanted, make_consoles

        out, err = make_consoles(no_color=no_color, json_output=output == "json", color=color)
        return cls(out, err, output, colour_wanted(no_color, color) and output != "json", debug)

    @property
    def wide(self) -> bool:
        return self.output == "wide"

    @property
    def json(self) -> bool:
        return self.output == "json"

    def show(self, result: Any, document: Callable[[Any], dict], view: Callable[..., None]) -> None:
        """A command's result on stdout: `document(result)` for -o json, else `view(result, console, wide=…)`."""
        if self.json:
            self.write_json(document(result))
        else:
            view(result, self.stdout, wide=self.wide)

    def write_json(self, doc: dict) -> None:
        from svcdoctor.render.json_doc import dumps

        self.write(dumps(doc) + "\n")

    def write(self, text: str) -> None:
        """Text as it is, no markup or wrapping (JSON, DOT, Mermaid). A reader that went away (`| head -1`) ends
        the output quietly; the command still returns the status of its work."""
        from svcdoctor.render.console import silence_stdout

        if self.stdout.quiet:
            return
        try:
            self.stdout.file.write(text)
            self.stdout.file.flush()
        except BrokenPipeError:
            self.stdout.quiet = True
            silence_stdout()

    def note(self, message: str) -> None:
        """One plain line on stderr (progress, warnings, the node that could not be read)."""
        self.stderr.print(message, markup=False, highlight=False)
