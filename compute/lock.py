"""One run at a time per output location.

A run holds its output's lock from start to end; a second run on the same output waits for it
(saying who holds it) or, without waiting, refuses at once. Runs on different outputs never meet.

- Local path: an OS lock (flock) on `<out>/.stockpipe.lock`. The kernel releases it when the
  process ends, however it ends (kill -9 included), so a dead run's lock is simply free.
- Object store (no locks): a lease object `<out>/_lease.json` naming its owner and an expiry,
  renewed by a thread while the run lives. A lease past its expiry belonged to a dead run and is
  taken over. Two runs that claim a free lease at the same moment both write it, wait, and read it
  back: only the one whose claim is there goes on.

The lock file names its holder (host, process id, Prefect flow run), for the run that waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compute import storage

log = logging.getLogger(__name__)
LOCK_FILE = ".stockpipe.lock"
LEASE_FILE = "_lease.json"


class OutputBusy(RuntimeError):
    """Another live run holds the output (raised when not waiting)."""


def owner(flow_run: str | None = None) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "flow_run": flow_run,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "id": uuid.uuid4().hex,
    }


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run"
    flow_run = f", Prefect flow run {holder['flow_run']}" if holder.get("flow_run") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{flow_run}, since {holder.get('since')}"


# Locks this process holds, by output, with how many blocks hold each: a flow run inside
# `stockpipe` re-enters the lock the command took (flock is per open file: a second flock by the
# same process would wait for itself), and each stage re-enters the flow run's.
_held: dict[str, list[Any]] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def hold(
    out: str,
    *,
    wait: bool = True,
    flow_run: str | None = None,
    say: Callable[[str], None] = log.info,
    lease_seconds: float = 60.0,
    poll_seconds: float = 1.0,
) -> Iterator[None]:
    """Hold the output's lock for the block: wait for another run to finish (say who it is, once),
    or raise OutputBusy at once when not waiting."""
    with _held_lock:
        entry = _held.get(out)
        if entry:
            entry[1] += 1
    if entry:
        if flow_run:
            entry[0].name_flow_run(flow_run)
        try:
            yield
        finally:
            with _held_lock:
                entry[1] -= 1
        return
    me = owner(flow_run)
    holder = _LocalLock(out, me) if storage.is_local(out) else _Lease(out, me, lease_seconds)
    said = False
    while not holder.try_acquire():
        if not wait:
            raise OutputBusy(f"{out} is in use by {describe(holder.current())}")
        if not said:
            say(f"waiting for {describe(holder.current())}, which is writing {out}")
            said = True
        time.sleep(poll_seconds)
    if said:
        say(f"{out} is free: going on")
    with _held_lock:
        _held[out] = [holder, 1]
    try:
        yield
    finally:
        with _held_lock:
            del _held[out]
        holder.release()


class _LocalLock:
    def __init__(self, out: str, me: dict[str, Any]) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        self.path = Path(out) / LOCK_FILE
        self.me = me
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        self._record()
        return True

    def _record(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(self.me).encode(), 0)

    def name_flow_run(self, flow_run: str) -> None:
        self.me["flow_run"] = flow_run
        self._record()

    def current(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class _Lease:
    def __init__(self, out: str, me: dict[str, Any], seconds: float) -> None:
        self.location = storage.join(out, LEASE_FILE)
        self.me = me
        self.seconds = seconds
        self.stop = threading.Event()
        self.renewer: threading.Thread | None = None

    def current(self) -> dict[str, Any] | None:
        found = storage.read_json(self.location)
        return found if isinstance(found, dict) else None

    def name_flow_run(self, flow_run: str) -> None:
        self.me["flow_run"] = flow_run
        self._write()

    def _write(self) -> None:
        storage.write_json({**self.me, "expires": time.time() + self.seconds}, self.location)

    def try_acquire(self) -> bool:
        found = self.current()
        if found and found.get("id") != self.me["id"] and found.get("expires", 0) > time.time():
            return False
        self._write()
        time.sleep(min(2.0, self.seconds / 10))  # let a claim made at the same moment land
        found = self.current()
        if not found or found.get("id") != self.me["id"]:
            return False
        self.renewer = threading.Thread(target=self._renew, name="stockpipe-lease", daemon=True)
        self.renewer.start()
        return True

    def _renew(self) -> None:
        while not self.stop.wait(self.seconds / 3):
            found = self.current()
            if found and found.get("id") != self.me["id"]:
                log.error("the lease on %s was taken by %s", self.location, describe(found))
                return
            self._write()

    def release(self) -> None:
        self.stop.set()
        if self.renewer:
            self.renewer.join()
        if (self.current() or {}).get("id") == self.me["id"]:
            storage.delete_file(self.location)
