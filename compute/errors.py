"""Which failures can pass when the same work runs again, and which cannot.

A lost Ray worker or node, a network error or an object-store timeout can pass: running the stage
again is worth it. A bug (a count that does not add up, a type error) or bad input (a missing
stage, an unreadable source) fails the same way every time, so retrying only doubles the wait.
Ray's own task retries already cover a worker that dies inside a fan-out; this decides whether a
whole stage is worth a second try.
"""

from __future__ import annotations

import errno

import ray.exceptions as rex


class Refused(ValueError):
    """A stage cannot do what it was asked, with these settings or this input, and says why in one
    line (and what to do next, `then`): the same run would be refused again. The stage protocol
    turns it into a stop that fails the run with that line, exit status 1 (compute/stage.py)."""

    def __init__(self, reason: str, then: str = "fix that, then run again") -> None:
        super().__init__(reason)
        self.then = then


# Ray's errors for work that was lost, not work that failed.
_LOST = (
    rex.WorkerCrashedError,
    rex.RayActorError,
    rex.NodeDiedError,
    rex.ObjectLostError,
    rex.LocalRayletDiedError,
    rex.OutOfMemoryError,
    rex.ObjectStoreFullError,
    rex.RaySystemError,
    rex.RpcError,
    rex.GetTimeoutError,
)
# What pyarrow's object-store clients say when the store, not the request, is at fault.
_STORE_MESSAGES = ("NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SLOW_DOWN", "SERVICE_UNAVAILABLE",
                   "INTERNAL_FAILURE", "THROTTLING", "Connection reset", "timed out")  # fmt: skip


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a failure that may pass on a retry."""
    for cause in _causes(error):
        if isinstance(cause, (ConnectionError, TimeoutError, *_LOST)):
            return True
        if type(cause) is OSError and any(m in str(cause) for m in _STORE_MESSAGES):
            return True
    return False


def store_failure(error: BaseException) -> str | None:
    """What the object store said, when it is the store that keeps failing `error` (after the
    client's own retries): throttling, resets, timeouts; None for any other error."""
    for cause in _causes(error):
        if type(cause) is OSError and any(m in str(cause) for m in _STORE_MESSAGES):
            return str(cause).splitlines()[0]
    return None


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error` (or what caused it, in a Ray task or a Ray Train worker) is a full disk."""
    return any(
        (isinstance(cause, OSError) and cause.errno == errno.ENOSPC)
        or "No space left on device" in str(cause)
        for cause in _causes(error)
    )


def _causes(error: BaseException) -> list[BaseException]:
    """The error, what caused it, and for Ray Train the errors of its workers and controller."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]  # type: ignore[list-item]
        todo += list(getattr(current, "worker_failures", {}).values())  # ray.train.WorkerGroupError
        todo.append(getattr(current, "controller_failure", None))  # type: ignore[arg-type]
        todo.append(getattr(current, "cause", None))  # type: ignore[arg-type]  # ray.exceptions.RayTaskError
    return seen
