"""The terminal a run shares with its progress bars. rich draws them from a thread of its own, ten
times a second, with the cursor hidden and left at the end of the last bar; a line written straight
to the file descriptor then runs into the bar. The lines that must be written that way (a second
Ctrl-C, the watchdog's: the process ends with os._exit, so nothing buffered would be flushed) go
through `alone`, which puts them on a line of their own, shows the cursor again and keeps the bars
from drawing after them."""

from __future__ import annotations

import os
import sys
import termios
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.live import Live
    from rich.progress import Progress

# Every colour and style off, and the cursor shown: what rich turns on while a bar is live.
RESTORE = "\x1b[0m\x1b[?25h"

_live: tuple[Live, int] | None = None  # the bars drawing now, and the descriptor they draw on


class Bars:
    """A stage's progress bars, one per fan-out label, drawn while the context is open and stdout
    is a terminal (plain log lines say the same otherwise)."""

    def __init__(self) -> None:
        self.bars: Progress | None = None
        self.ids: dict[str, int] = {}

    def __enter__(self) -> Bars:
        global _live
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            fd = sys.stdout.fileno()  # rich replaces sys.stdout while the bars are live
            self.bars = RichProgress(
                TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self.bars.start()
            _live = (self.bars.live, fd)
        return self

    def update(self, label: str, done: int, total: int) -> None:
        if self.bars is not None:
            if label not in self.ids:
                self.ids[label] = self.bars.add_task(label, total=total)
            self.bars.update(self.ids[label], completed=done)

    def __exit__(self, *exc: object) -> None:
        global _live
        if self.bars is not None:
            try:
                self.bars.stop()
            finally:
                _live = None


def alone(line: str) -> None:
    """Write `stockpipe: <line>` to stderr on a line of its own, the terminal restored, and no bar
    drawn after it: for a process about to end with os._exit (from a signal handler or a thread)."""
    live = _live
    # rich draws each frame holding the Live's lock; taking it (and never giving it back) lets a
    # frame being drawn finish and stops the next. Reentrant: the main thread may hold it already.
    # Frames are drawn where the console is interactive, and the cursor is then at the end of a bar;
    # a bar closing at this moment may have ended its line already: at worst an empty line.
    if live is not None and live[0]._lock.acquire(timeout=1.0) and live[0].console.is_interactive:
        os.write(live[1], f"{RESTORE}\n".encode())
    os.write(2, f"stockpipe: {line}\n".encode())


def ctrl_c_echoed() -> None:
    """A terminal that echoes control characters has written `^C` where its cursor was. Unless a
    bar is live (its next frame, or `alone`, ends that line), end the line there, so that what the
    command writes next starts on a line of its own, as a shell's prompt does after a Ctrl-C."""
    if _live is not None or not os.isatty(2):
        return
    try:
        flags = termios.tcgetattr(2)[3]
    except termios.error:
        return
    if flags & termios.ECHO and flags & termios.ECHOCTL:
        os.write(2, b"\n")
