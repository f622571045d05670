"""Session-wide real services: one local Ray and one Prefect test harness, started once (~10 s each)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# A private BentoML model and Bento store for the test session, never the user's ~/bentoml.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="stockpipe-bentoml-")

from compute.settings import SAMPLE_SOURCE, Settings

SAMPLE = Path(SAMPLE_SOURCE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str | None]:
    """A real local Ray (2 CPUs, dashboard on a free loopback port), shared by every test."""
    import ray

    from compute import cluster

    url = cluster.connect(Settings(ray_address=None, dashboard_port=free_port()))
    yield url
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's own test harness: a temporary database and API server for this session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_run(
    ray_session: str | None, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The `stock-pipeline` flow run once on the embedded sample; tests read its outputs."""
    from flows.pipeline import stock_pipeline

    out = tmp_path_factory.mktemp("sample-run")
    state = stock_pipeline(source=str(SAMPLE), out=str(out), return_state=True)
    return {"out": out, "state": state, "result": state.result()}


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started in its own process group, by that group's id (never by name)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_server(command: list[str], port: int, log: Path) -> tuple[str, subprocess.Popen]:
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, process)
    except Exception:
        stop(process)
        raise RuntimeError(f"server did not start; its log:\n{log.read_text()[-3000:]}") from None
    return url, process


@pytest.fixture(scope="session")
def served(sample_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`stockpipe serve` on a free loopback port, for the model the sample run trained."""
    import sys

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "serve",
        "--out",
        str(sample_run["out"]),
        "--port",
        str(port),
    ]
    url, process = start_server(command, port, log)
    yield url
    stop(process)
