"""One run at a time per output: a real second process waits or is refused, a lock left by
kill -9 is free at once, and object-store leases expire and are taken over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compute import lock

HOLDER = """
import sys, time
from compute import lock
with lock.hold(sys.argv[1], flow_run="flow-run-42"):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_in_another_process(out: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert process.stdout and process.stdout.readline().strip() == "holding"
    return process


def test_a_second_run_is_refused_at_once_or_waits_saying_who_holds_the_output(tmp_path: Path) -> None:
    holder = hold_in_another_process(tmp_path, 1.5)
    try:
        busy = rf"in use by process {holder.pid} on .*flow-run-42"
        with pytest.raises(lock.OutputBusy, match=busy), lock.hold(str(tmp_path), wait=False):
            pass
        said: list[str] = []
        started = time.monotonic()
        with lock.hold(str(tmp_path), say=said.append, poll_seconds=0.1):
            waited = time.monotonic() - started
        assert waited > 1.0, "got the lock while the other process held it (for 1.5 s)"
        assert said[0].startswith(f"waiting for process {holder.pid} ")
        assert said[-1].endswith("is free: going on")
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_kill_9_is_free_at_once(tmp_path: Path) -> None:
    holder = hold_in_another_process(tmp_path, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with lock.hold(str(tmp_path), wait=False):
        recorded = json.loads((tmp_path / lock.LOCK_FILE).read_text())
        assert recorded["pid"] != holder.pid


def test_the_same_process_reenters_its_own_lock_and_names_its_flow_run(tmp_path: Path) -> None:
    with lock.hold(str(tmp_path), wait=False):
        with lock.hold(str(tmp_path), wait=False, flow_run="abc"):  # a flow inside the command
            assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["flow_run"] == "abc"
        with lock.hold(str(tmp_path), wait=False):  # a stage inside the flow
            pass


def lease(path: Path, seconds: float = 1.0) -> lock._Lease:
    return lock._Lease(str(path), lock.owner(), seconds)


def test_a_live_lease_holds_an_expired_one_is_taken_over(tmp_path: Path) -> None:
    first = lease(tmp_path, seconds=3.0)
    assert first.try_acquire()
    second = lease(tmp_path)
    assert not second.try_acquire(), "a live lease (renewed by its thread) must hold"
    first.stop.set()  # the run dies: nothing renews its lease any more
    first.renewer.join()  # type: ignore[union-attr]
    time.sleep(3.1)
    assert second.try_acquire(), "an expired lease belonged to a dead run"
    second.release()
    assert not (tmp_path / lock.LEASE_FILE).exists()


def test_two_claims_of_a_free_lease_at_the_same_moment_let_one_through(tmp_path: Path) -> None:
    claims = [lease(tmp_path, seconds=5.0) for _ in range(2)]
    won: list[bool] = [False, False]

    def claim(i: int) -> None:
        won[i] = claims[i].try_acquire()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, True]
    for c, w in zip(claims, won, strict=True):
        if w:
            c.release()
