"""How `watch` paces its samples and keeps one view redrawn in place on a terminal (rich Live, SIGWINCH)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from svcdoctor.model.watch.frame import Frame
from svcdoctor.render.watch_view import render_frame


def paced(take: Callable[[], Frame], show: Callable[[Frame], None], interval: float, count: int | None,
          wake: threading.Event | None = None, on_wake: Callable[[], None] | None = None) -> bool:
    """Sample, show, wait; until `count` samples. Returns whether any sample missed a node.

    The schedule starts when the first sample is shown (the first read is the slow, full one), then keeps a steady
    beat: sample k is due `interval` after sample k-1 was due, or at once if svcdoctor fell behind. ``wake`` cuts a
    wait short to call ``on_wake`` (a terminal resize redraws the view at once), then the wait goes on.
    """
    wake = wake or threading.Event()
    partial = False
    due = None
    n = 0
    while True:
        frame = take()
        partial |= bool(frame.failed)
        show(frame)
        n += 1
        if count is not None and n >= count:
            return partial
        now = time.monotonic()
        due = now + interval if due is None else max(due + interval, now)
        while (left := due - time.monotonic()) > 0:
            if wake.wait(left):
                wake.clear()
                if on_wake is not None:
                    on_wake()


def live(take: Callable[[], Frame], out, plan, wide: bool, interval: float, count: int | None,
         all_nodes: bool = False) -> bool:
    """The live view on a terminal: one table redrawn in place, and at once when the terminal is resized. Ctrl-C
    leaves it with the cursor back (rich's Live restores the terminal on the way out) and the command exits 130."""
    from rich.live import Live
    from rich.text import Text

    resized = threading.Event()
    previous = None
    # signal handlers can only be set from the main thread, and Windows has no SIGWINCH
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGWINCH"):
        previous = signal.signal(signal.SIGWINCH, lambda *_: resized.set())
    try:
        with Live(Text("taking the first sample…"), console=out, auto_refresh=False, transient=False,
                  redirect_stdout=False, redirect_stderr=False, vertical_overflow="ellipsis") as view:
            def show(frame: Frame) -> None:
                view.update(render_frame(frame, plan, wide, all_nodes), refresh=True)

            return paced(take, show, interval, count, resized, view.refresh)
    finally:
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
