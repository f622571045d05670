"""Stopping a run in order, as Prefect sees it: Ctrl-C and SIGTERM (a terminal, `kill`, a worker
cancelling a deployment run) become a stop request (compute/stop.py), the stopped stage's task
ends Cancelled (or Failed, for a full disk) with one line that says where it stopped and what
stands, and the flow run ends in the same state. A second signal ends the process at once.

Prefect's engine turns SIGTERM into an exception that it records as a crash; the handlers here
replace its bridge while a flow runs. Prefect logs every final task state but Completed at ERROR;
a stop is the outcome the person asked for (or a condition the line explains), not a crash, so
`StopLines` lowers those lines, and only those, to INFO or WARNING.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from compute import stop
from flows import terminal
from flows.stages import NAMES, stages

if TYPE_CHECKING:
    from compute.layout import Layout

SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


# The output of a command whose Prefect server and Ray are still starting (None: not starting).
_starting: Layout | None = None


def on_signal(signum: int) -> None:
    name = SIGNALS.get(signal.Signals(signum), signal.Signals(signum).name)
    if signum == signal.SIGINT:
        terminal.ctrl_c_echoed()
    stopped = stop.Stopped(f"interrupted ({name})", code=128 + signum)
    if not stop.request(stopped):
        # The second: at once. The kernel releases the run's lock, the children stop with this
        # process, and the next run removes the staging folder.
        terminal.alone(f"{name} again: stopping at once")
        os._exit(128 + signum)
    if (starting := _starting) is not None:
        # Nothing is written before the first stage, and Ray's start cannot be cut short in order:
        # its daemons share the terminal's process group, a Ctrl-C kills some of them as they
        # start, and ray.init then fails with their log or waits a minute. So: at once. Ray's
        # daemons end with this process (their parent-death signal), Prefect's temporary server
        # with its watcher (flows/services.py), and the kernel releases the output's lock.
        terminal.alone(line(stopped, starting))
        os._exit(stopped.code)


@contextmanager
def starting(layout: Layout) -> Iterator[None]:
    """While the block starts Prefect's server and Ray for a command on `layout`, a stop ends the
    process at once, with its one line."""
    global _starting
    _starting = layout
    try:
        yield
    finally:
        _starting = None


def _noted(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the signal was already written to the wakeup pipe, which `_watch`
    reads; installing a handler is what makes CPython catch the signal at all."""


def _watch(pipe: int) -> None:
    """Every signal, as the C-level handler wrote it to the wakeup pipe, one byte each, until the
    pipe closes."""
    with os.fdopen(pipe, "rb", buffering=0) as signals:
        while received := signals.read(1):
            if signal.Signals(received[0]) in SIGNALS:
                on_signal(received[0])


@contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM stop the run while the block runs (main thread only: elsewhere the
    process's own handlers stay).

    A Python signal handler runs on the main thread, between two of its bytecodes: while that
    thread waits (a quarter of a second between a fit's polls) the kernel may deliver the signal
    to another thread, and a second signal before the handler ran is the same call: two Ctrl-Cs a
    twentieth of a second apart stopped the run in order, as if pressed once. CPython's wakeup
    pipe gets one byte per signal, from whichever thread caught it, at once; a thread of its own
    reads it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(write, False)  # the C handler must never block on it
    before = {s: signal.signal(s, _noted) for s in SIGNALS}
    wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read,), name="stockpipe-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(wakeup)
        for s, handler in before.items():
            signal.signal(s, handler)
        os.close(write)  # the watcher reads what is left, and ends
        watcher.join(timeout=5)


def line(stopped: stop.Stopped, layout: Layout) -> str:
    """e.g. `interrupted (Ctrl-C) during features: stage 1 is published, stage 2 is unchanged;
    run again to go on`."""
    upto = NAMES[: NAMES.index(stopped.stage) + 1] if stopped.stage in NAMES else ()
    stands = []
    for name in upto:
        stage = stages()[name]
        if name != stopped.stage:
            if stage.is_published(layout):  # an earlier stage this run did not build is not worth a word
                stands.append(f"{stage.output_name} is published")
        elif (after := stage.after_stop(layout)) is not None:
            stands.append(after)
    # An interruption names the stage it cut short; a failure's reason says where it happened.
    head = stopped.reason
    if stopped.outcome == "cancelled":
        head += f" during {stopped.stage}" if stopped.stage else " before any stage began"
    return f"{head}: {', '.join(stands)}; {stopped.then}" if stands else f"{head}; {stopped.then}"


class StopLines(logging.Filter):
    """Prefect's `Finished in state Cancelled(...)` (or Failed) for a stop is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        stopped = stop.requested()
        if stopped is not None and record.levelno >= logging.ERROR:
            message = record.getMessage()
            if message.startswith("Finished in state ") and stopped.reason in message:
                record.levelno, record.levelname = (
                    (logging.INFO, "INFO") if stopped.outcome == "cancelled" else (logging.WARNING, "WARNING")
                )
        return True


class DrainNotes(logging.Filter):
    """Prefect's `Still processing items: 1 items remaining...`, which its log and event senders
    write at WARNING whenever they are drained (the flow's end sends its logs before its final
    state; the command's exit sends the rest) with anything still queued: progress, not a
    problem, and the run goes on to send them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


def quiet_stop_lines() -> None:
    """Install StopLines on Prefect's run loggers, and DrainNotes on its senders' (once)."""
    for name, kind in [("prefect.task_runs", StopLines), ("prefect.flow_runs", StopLines),
                       ("APILogWorker", DrainNotes), ("EventsWorker", DrainNotes)]:  # fmt: skip
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
