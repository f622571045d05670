"""Starting and stopping local servers for tests and benchmarks: loopback only, stopped by process
group id (each server gets its own session), never by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, path: str = "/readyz", timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the server's process group, then SIGKILL if it has not gone in `grace` seconds.
    Descendants that left the group (BentoML starts its workers in their own sessions) are stopped
    by process id."""
    if process.poll() is not None:
        return
    try:
        strays = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        strays = []
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(strays, timeout=min(grace, 10))
    for stray in alive:
        stray.terminate()
    _, alive = psutil.wait_procs(alive, timeout=min(grace, 10))
    for stray in alive:
        stray.kill()


def spawn(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Run `command` in a session of its own (so that stop() can end its whole process group),
    its output and errors into `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_server(
    command: list[str], port: int, log: Path, ready_path: str = "/readyz", env: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen]:
    """Run `command` (which must bind 127.0.0.1:port) in a new session; return its URL when ready."""
    url = f"http://127.0.0.1:{port}"
    process = spawn(command, log, env)
    try:
        wait_ready(url, process, ready_path)
    except Exception:
        stop(process)
        raise RuntimeError(f"server did not start; its log:\n{log.read_text()[-3000:]}") from None
    return url, process
