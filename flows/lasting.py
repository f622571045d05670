"""A lasting local Prefect server and Ray cluster: `stockpipe up` starts them, later commands on
this machine use them, `stockpipe down` stops them.

A command on its own starts Prefect's temporary server and a Ray of its own and stops both as it
ends: on two cores, about 7 s before its first stage and 1.5 s after its last. With these up, a
command joins them instead, as it joins a configured server (PREFECT_API_URL) and cluster
(RAY_ADDRESS), which still come first; and Prefect's UI, with every run and its artifacts, and
Ray's dashboard stay up between runs.

Nothing runs that the user did not ask for: only `stockpipe up` starts them (with the stock
`prefect server start` and `ray start --head`), each command that uses them says so, `stockpipe up`
lists them, and `stockpipe down` stops every process they started. Those are found by process id:
each carries this start's marker in its environment, wherever it has been reparented.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from compute import stop

STATE = "services.json"
MARKER = "STOCKPIPE_UP_MARKER"  # in the environment of every process `stockpipe up` started
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Services:
    prefect_api: str  # http://127.0.0.1:PORT/api
    ray_address: str  # 127.0.0.1:PORT
    dashboard: str  # http://127.0.0.1:PORT
    marker: str
    pids: dict[str, int]  # the two stock commands: prefect, ray
    logs: str
    started: str

    @property
    def prefect_ui(self) -> str:
        return self.prefect_api.removesuffix("/api")

    def listing(self) -> list[str]:
        return [
            f"  Prefect server: {self.prefect_ui} (UI and API; pid {self.pids['prefect']})",
            f"  Ray cluster:    {self.ray_address}, dashboard {self.dashboard} (pid {self.pids['ray']}; "
            "token: `ray get-auth-token`)",
            f"  started {self.started}; logs in {self.logs}",
        ]


def found(home: Path) -> Services | None:
    """The services `stockpipe up` started, when both answer."""
    services = _read(home)
    if services is None or not _answers(services):
        return None
    return services


def note(services: Services, prefect: bool, ray: bool) -> str:
    """The line a command that uses them writes."""
    used = [*(["Prefect server " + services.prefect_ui] if prefect else []),
            *(["Ray cluster " + services.ray_address] if ray else [])]  # fmt: skip
    return (
        f"stockpipe: using the {' and the '.join(used)} that `stockpipe up` started "
        "(`stockpipe down` stops them)"
    )


def up(home: Path, dashboard_host: str, dashboard_port: int) -> int:
    with _locked(home):
        if (running := found(home)) is not None:
            print("already up (`stockpipe down` stops them):")
            print("\n".join(running.listing()))
            return 0
        if (stale := _read(home)) is not None:  # one of them died: stop the other, start both again
            _stop(home, stale)
        services = _start(home, dashboard_host, dashboard_port)
        if isinstance(services, int):
            return services
    print(f"up: every stockpipe command with {home} as its STOCKPIPE_HOME uses them, until `stockpipe down`:")
    print("\n".join(services.listing()))
    return 0


def down(home: Path) -> int:
    if _read(home) is not None:
        with _locked(home):
            services = _read(home)
            stopped = _stop(home, services) if services is not None else None
        if stopped is not None:
            what = "the Prefect server and the Ray cluster that `stockpipe up` started"
            print(f"stopped {what} ({stopped} processes)")
            return 0
    print("nothing to stop: `stockpipe up` has not started anything")
    return 0


def _start(home: Path, dashboard_host: str, dashboard_port: int) -> Services | int:
    from compute import cluster

    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    if cluster.token() is None:  # a stock `ray start` with authentication on refuses to start without one
        generate = [str(bin_dir / "ray"), "get-auth-token", "--generate"]
        made = subprocess.run(generate, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            said = (made.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"stockpipe: error: `ray get-auth-token --generate` failed ({said})", file=sys.stderr)
            return 1
    cluster.lean_processes()  # what a command's own local cluster gets
    marker = secrets.token_hex(8)
    env = {
        **os.environ,
        MARKER: marker,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
    }
    env.pop("PREFECT_API_URL", None)  # the server's own settings, not a client's
    prefect_port, ray_port = _port(4200), _port(6379)
    dashboard_port = _port(dashboard_port, dashboard_host)
    prefect = _spawn([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                      "--port", str(prefect_port)], logs / "prefect.log", env)  # fmt: skip
    ray = _spawn([str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                  "--port", str(ray_port), "--dashboard-host", dashboard_host,
                  "--dashboard-port", str(dashboard_port),
                  "--ray-client-server-port", str(_port(10001)),
                  "--dashboard-agent-listen-port", str(_port(52365))], logs / "ray.log", env)  # fmt: skip
    services = Services(
        prefect_api=f"http://127.0.0.1:{prefect_port}/api",
        ray_address=f"127.0.0.1:{ray_port}",
        dashboard=f"http://{dashboard_host}:{dashboard_port}",
        marker=marker,
        pids={"prefect": prefect.pid, "ray": ray.pid},
        logs=str(logs),
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    # Written before they answer: whatever happens next, `stockpipe down` finds what was started.
    (home / STATE).write_text(json.dumps(asdict(services), indent=2) + "\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(services):
        for name, process, log in (("Prefect server", prefect, "prefect.log"), ("Ray", ray, "ray.log")):
            if process.poll() is not None:
                _stop(home, services)
                tail = (logs / log).read_text(errors="replace").strip().splitlines()[-5:]
                print(f"stockpipe: error: the {name} exited with {process.returncode} as it started; "
                      f"the end of {logs / log}:", *tail, sep="\n  ", file=sys.stderr)  # fmt: skip
                return 1
        if (stopped := stop.requested()) is not None or time.monotonic() > deadline:
            _stop(home, services)
            why = stopped.reason if stopped else f"not answering after {START_TIMEOUT:g} s"
            print(f"stockpipe: {why}: stopped what `stockpipe up` had started", file=sys.stderr)
            return stopped.code if stopped else 1
        time.sleep(0.2)
    return services


def _answers(services: Services) -> bool:
    """Prefect's API is healthy, and Ray's GCS and dashboard take connections."""
    try:
        with urllib.request.urlopen(f"{services.prefect_api}/health", timeout=2) as answer:
            if answer.status != 200:
                return False
    except OSError:
        return False
    dashboard_host, _, dashboard_port = services.dashboard.removeprefix("http://").rpartition(":")
    host, _, port = services.ray_address.rpartition(":")
    for address in ((host, int(port)), (dashboard_host, int(dashboard_port))):
        try:
            socket.create_connection(address, timeout=2).close()
        except OSError:
            return False
    return True


def _stop(home: Path, services: Services) -> int:
    """Stop the two stock commands (SIGTERM: each stops what it started, in order; Ray's takes
    about 4 s), then SIGKILL whatever of theirs is left after 15 s, and forget them. Returns how
    many processes there were.

    Theirs: the two, every descendant of theirs, and every process that carries the marker in its
    environment (one reparented elsewhere). Ray's workers and agents rewrite their environment's
    memory for their titles, so the marker alone would miss them."""
    import psutil

    roots, found = [], {}
    for process in psutil.process_iter():
        with suppress(psutil.Error):
            if process.environ().get(MARKER) == services.marker:
                found[process.pid] = process
                if process.pid in services.pids.values():
                    roots.append(process)
    for root in roots:
        with suppress(psutil.Error):
            found.update((child.pid, child) for child in root.children(recursive=True))
    for root in roots:
        with suppress(psutil.Error):
            root.terminate()
    _, alive = psutil.wait_procs(list(found.values()), timeout=15)
    for process in alive:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    for pid in services.pids.values():  # reaped here if this process started them
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    with suppress(FileNotFoundError):
        (home / STATE).unlink()
    return len(found)


def _read(home: Path) -> Services | None:
    try:
        return Services(**json.loads((home / STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One `stockpipe up` or `down` at a time."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "services.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` when it is free, else a free one."""
    with socket.socket() as probe:
        # As the servers bind: a port that only lingers after a closed connection is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, preferred))
        except OSError:
            probe.bind((host, 0))
        return probe.getsockname()[1]


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """In a session of its own: a terminal's Ctrl-C and the command's end do not reach it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
