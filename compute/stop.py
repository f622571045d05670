"""Stopping a run in order: something asks it to stop (Ctrl-C, a cancel, a full disk, a Prefect
server that stays down), and the work stops at a point where what is published stays whole.

`request(stopped)` records why; it is all a signal handler does, since raising from one while C
code runs (Ray's, Arrow's) corrupts that call. The long waits look at the request themselves:
a fan-out between its `ray.wait` calls, half a second apart (compute/cluster.py), the fit through
`wait` (a thread of its own that the caller polls), and the stage protocol at every `checkpoint`:
before a stage, before its build, after it. None of them is half-way through a publish. Stopped
is a BaseException, so that no `except Exception` on the way, ours or a library's, mistakes it
for an error and carries on; the stage protocol deletes the stage's staging folders on the way out
(compute/stage.py), and the flows turn it into the stage's and the run's final state and one line
(flows/pipeline.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")
Outcome = Literal["cancelled", "failed"]
POLL_SECONDS = 0.25


class Stopped(BaseException):
    """Why the run stops, its exit status, what to do next, and where (the stage, once one ran)."""

    def __init__(
        self, reason: str, code: int, outcome: Outcome = "cancelled", then: str = "run again to go on"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code  # 130 for SIGINT, 143 for SIGTERM, ...
        self.outcome = outcome  # the final state: cancelled (asked to stop) or failed (could not go on)
        self.then = then
        self.stage: str | None = None


_lock = threading.Lock()
_requested: Stopped | None = None
running: str | None = None  # the stage running now (compute/stage.py), for whoever stops it


def request(stopped: Stopped) -> bool:
    """Ask the run to stop; False when it was asked already (the first reason stands)."""
    global _requested
    with _lock:
        if _requested is not None:
            return False
        _requested = stopped
        return True


def requested() -> Stopped | None:
    return _requested


def clear() -> None:
    """Forget a request (a new run in the same process, such as the tests')."""
    global _requested
    with _lock:
        _requested = None


def checkpoint() -> None:
    """Raise the request, if there is one."""
    if _requested is not None:
        raise _requested


def wait(work: Callable[[], T], name: str) -> T:
    """`work()`, run on a thread of its own while this one watches for a stop: its result or its
    exception, or Stopped as soon as a stop is asked for. Work left running then ends with the
    process (a Ray job's actors end with its driver)."""
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(work())
        except BaseException as exc:  # handed to the waiting thread
            failed.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        checkpoint()
    if failed:
        raise failed[0]
    return done[0]
