"""Prefect's temporary server and Ray, for one command: started side by side before its flow,
stopped side by side after it, and then a quick exit.

Started one after the other (Prefect's temporary server when the flow begins, Ray when the first
stage finds work), a cold `stockpipe run` waited about 10 s for them here; side by side, with the
flows' own imports done while they start, 5-6 s.

The temporary server is the one Prefect's client starts when no server is configured: uvicorn
serving Prefect's API app without the UI, on a local port, in a child process, with the same
settings. Started from here, this process never imports Prefect's server package, which only the
child needs (1.6 s and 80 MiB here).

At the end, `ray.shutdown` stops Ray's daemons one at a time (about 1.3 s here) while Prefect's
queued logs go out and its server stops. After that, the interpreter's own teardown (freeing every
module and object, about 1 s here) does nothing a user needs: `exit_now` runs the exit handlers
and ends the process at once.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

from compute import timeline
from compute.settings import Settings
from flows import lasting

_server: PrefectServer | None = None
_api: str | None = None  # the API URL `start` chose: its temporary server's, or `stockpipe up`'s

# Runs a module as `python -m` would, and ends it once its parent is gone: out of the command's
# process group, the server would outlive a command killed by SIGKILL.
WATCH_PARENT = """
import os, runpy, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


class PrefectServer:
    """Prefect's temporary server as a child process (`prefect.server.api.server`'s
    SubprocessASGIServer starts the same command)."""

    def __init__(self) -> None:
        from prefect.logging import get_logger
        from prefect.settings import get_current_settings

        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._settings = get_current_settings()
        self._log = get_logger()  # "prefect", where Prefect says the same

    def wait(self) -> None:
        """Return once the server answers; raise if it exits or does not answer in time."""
        # Said here, not at the spawn: Prefect sets its log handlers up when its flow API is first
        # imported, which happens in between.
        self._log.info(f"Starting temporary server on {self.url.removesuffix('/api')}")
        timeout = self._settings.server.ephemeral.startup_timeout_seconds
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code == 3:  # uvicorn's "address in use": another process took the port meanwhile
                self.spawn()
            elif code is not None:
                raise RuntimeError(f"Prefect's temporary server exited with code {code}")
            with suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout} s")

    def spawn(self) -> None:
        import prefect

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **self._settings.to_environment_variables(exclude_unset=True),
        }
        command = [sys.executable, "-c", WATCH_PARENT, "uvicorn", "--app-dir",
                   str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
                   "--lifespan", "on"]  # fmt: skip
        if self.process is None:
            atexit.register(self.stop)  # whatever way this process ends
        # A process group of its own: a terminal's Ctrl-C goes to the foreground group, and the
        # server must outlive it while the run stops in order and records its final state.
        self.process = subprocess.Popen(command, env=env, process_group=0)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        from compute import stop

        if stop.requested() is None:  # after a stop, its line is the last one the command writes
            self._log.info(f"Stopping temporary server on {self.url.removesuffix('/api')}")
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start(
    settings: Settings, ray_too: bool, imports: tuple[str, ...] = (), up: lasting.Services | None = None
) -> None:
    """Start Prefect's temporary server (unless a server is configured, or `up`, the services of
    `stockpipe up`, has one) and import `imports` on a thread while this thread starts or joins
    Ray (when `ray_too`); return when all are done. Ray's errors are raised. A server that cannot
    start is left to the flow's own attempt, which then says why."""
    # Prefect's client retries a call 5 times by default, about 30 s in all: past that, a server
    # that is away for a minute fails the run with tracebacks before watch_api has its say.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
    thread = threading.Thread(
        target=_prefect_and_imports, args=(imports, up), name="prefect-start", daemon=True
    )
    thread.start()
    try:
        if ray_too:
            from compute import cluster

            cluster.connect(settings, progress=lambda _: None)  # the stages announce the dashboard
            timeline.mark("ray")
    finally:
        thread.join()
    if up is not None and (_api == up.prefect_api or settings.ray_address == up.ray_address):
        print(lasting.note(up, _api == up.prefect_api, settings.ray_address == up.ray_address),
              file=sys.stderr, flush=True)  # fmt: skip


@contextmanager
def prefect_api() -> Iterator[None]:
    """Prefect's client pointed at the server `start` chose, if it chose one."""
    if _api is None:
        yield
        return
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_UI_URL,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_API_URL: _api, PREFECT_UI_URL: _api.removesuffix("/api")}
    if _server is not None:
        # The temporary server serves no UI, so Prefect must not print links to one. Nor does any
        # process watch its flow runs' heartbeats, which tell a lasting server that a run's process
        # is alive; and Prefect's heartbeat thread, which sleeps a second at a time, held the end
        # of every flow run for up to a second while Prefect waited for it to notice the end.
        updates |= {PREFECT_UI_URL: "", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with temporary_settings(updates=updates):
        yield


def watch_api(out: str, wait_seconds: float) -> None:
    """Watch the Prefect API this command's flow talks to (`PREFECT_API_URL`, or the temporary
    server). While it does not answer, Prefect's client retries its calls (8 times, over about
    4 minutes, unless PREFECT_CLIENT_MAX_RETRIES says otherwise: set in `start`) and its log and
    event senders' complaints are held back. Once it has not answered for `wait_seconds`, the run
    ends: one line (which server, since when, what is published, how to resume), its staging
    folders removed, exit status 75. Prefect's client would otherwise retry for minutes; the
    kernel releases the run's lock, and Ray's daemons end with the process. A server that answers
    again in time is as if it had never gone."""
    from prefect.settings import PREFECT_API_URL

    url = _api or str(PREFECT_API_URL.value() or "")
    if url:
        threading.Thread(
            target=_watch, args=(url, out, wait_seconds), name="prefect-api-watch", daemon=True
        ).start()


class _Silenced(logging.Filter):
    """Prefect's complaints that its server does not answer, while it does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _quiet(on: bool) -> None:
    source = logging.getLogger("prefect._internal.concurrency")  # its events and logs senders
    logging.raiseExceptions = not on  # the stdlib's switch for a handler's own errors
    for found in [f for f in source.filters if isinstance(f, _Silenced)]:
        source.removeFilter(found)
    if on:
        source.addFilter(_Silenced())


def _watch(url: str, out: str, wait_seconds: float) -> None:
    from compute import publish, stop
    from compute.layout import Layout
    from flows import stopping, terminal

    silent_since: float | None = None
    while True:
        time.sleep(2)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    if silent_since is not None:
                        _quiet(False)
                    silent_since = None
                    continue
        except OSError:
            pass
        if silent_since is None:
            silent_since = time.time()
            _quiet(True)
        if time.time() - silent_since < wait_seconds:
            continue
        since = time.strftime("%H:%M:%S", time.localtime(silent_since))
        stopped = stop.Stopped(
            f"the Prefect server at {url.removesuffix('/api')} has not answered since {since} "
            f"({wait_seconds:g} s): stopped{f' during {stop.running}' if stop.running else ''}",
            code=75, outcome="failed", then="run again once the server answers",
        )  # fmt: skip
        stopped.stage = stop.running
        stop.request(stopped)  # nothing more starts while this ends it
        publish.remove_every_leftover(out)
        # Straight to the file: a stage's progress bar may hold sys.stderr (rich wraps and buffers
        # it), and nothing is flushed after os._exit.
        terminal.alone(stopping.line(stopped, Layout(out)))
        os._exit(75)


def exit_now(code: int) -> NoReturn:
    """Stop Ray and Prefect's temporary server where this process started them (Prefect's logs and
    events sent first, while the server is up), run the exit handlers, and end the process without
    the interpreter's teardown."""
    prefect = threading.Thread(target=_stop_prefect, name="prefect-stop")
    prefect.start()
    if "ray" in sys.modules:  # a command that did not run a flow never imported it
        import ray

        ray.shutdown()  # on the main thread, which started it
    prefect.join()
    atexit._run_exitfuncs()  # CPython's own exit handlers, as a normal exit would run them
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    timeline.mark("shutdown")
    os._exit(code)


def _stop_prefect() -> None:
    if "prefect" in sys.modules:
        # What Prefect does at interpreter exit: send the logs and events still queued.
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=10)
    if _server is not None:
        _server.stop()


def _prefect_and_imports(imports: tuple[str, ...], up: lasting.Services | None) -> None:
    # One thread for both, so that two threads never import Prefect's modules at once.
    global _server, _api
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    server = None
    if PREFECT_API_URL.value():
        pass  # configured: the flow talks to it
    elif up is not None:
        _api = up.prefect_api
    elif PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        server = PrefectServer()
        server.spawn()
    for name in imports:  # while the server starts
        with suppress(Exception):  # raised again where the module is next imported
            importlib.import_module(name)
    timeline.mark("flow-imports")
    if server is not None:
        try:
            server.wait()
            _server, _api = server, server.url
            timeline.mark("prefect")
        except Exception:
            server.stop()
