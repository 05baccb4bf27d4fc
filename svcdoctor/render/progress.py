"""What a live read shows on stderr while it runs: a spinner with the current step, and, when nodes are read
through the API (hundreds or thousands of them), a bar of nodes done / failed / left with an ETA. Only on a
terminal: a pipe or a file gets nothing (rich draws nothing there), so stdout and logs stay clean."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn


@contextmanager
def collection_progress(console: Console, first: str = "collecting rules…"):
    """Yields the callback live collection calls: with a str (a step) or an object with done/failed/total."""
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                        TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task(first, total=None, counts="")

    def update(event) -> None:
        if isinstance(event, str):
            progress.update(task, description=event)
            return
        left = event.total - event.done
        progress.update(task, total=event.total, completed=event.done,
                        counts=f"{event.done}/{event.total} done, {event.failed} failed, {left} left")

    with progress:
        yield update
