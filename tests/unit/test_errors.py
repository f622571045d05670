"""Which failures a stage is retried for: those that can pass, never bugs or bad input."""

from __future__ import annotations

import pytest
import ray.exceptions as rex
from ray.train import WorkerGroupError

from compute.errors import is_transient


def caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("connection refused"),
        TimeoutError("read timed out"),
        rex.WorkerCrashedError(),
        rex.NodeDiedError("node 1 died"),
        OSError("When reading information for key 'a': AWS Error NETWORK_CONNECTION during HeadObject"),
        caused(RuntimeError("stage failed"), ConnectionResetError("peer went away")),
        WorkerGroupError("worker 1 died", {1: rex.ActorDiedError()}),
    ],
)
def test_failures_that_can_pass_are_retried(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("row counts do not add up"),
        AssertionError("rows do not add up"),
        TypeError("unsupported operand"),
        FileNotFoundError("no stage 1 output in /out: run `stockpipe ingest` first"),
        OSError("cannot use 's3://x': unknown scheme"),
        WorkerGroupError("worker 0 raised", {0: KeyError("vol_moving_avg")}),
    ],
)
def test_bugs_and_bad_input_are_not(error: BaseException) -> None:
    assert not is_transient(error)
