"""Running the pipeline the way it runs in production: a Prefect deployment picked up by a worker
from a real Prefect server, and the flow on an existing two-node Ray cluster. Each test starts its
own servers on free loopback ports and stops every process it started by process group id."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compute.settings import PROJECT_ROOT
from harness.procs import free_port, stop

BIN = Path(sys.executable).parent


def run(command: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: process exited {process.returncode}\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except (httpx.TransportError, subprocess.SubprocessError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s\n{log.read_text()[-3000:]}")


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_USAGE_STATS_ENABLED="0",
        STOCKPIPE_DASHBOARD_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real `prefect server` with its own SQLite database in tmp_path."""
    port = free_port()
    env = base_env(tmp_path)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
    )
    log = tmp_path / "server.log"
    server = spawn(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log
    )
    try:
        health = f"http://127.0.0.1:{port}/api/health"
        wait_for(lambda: httpx.get(health, timeout=2).status_code == 200, "prefect server", server, log)
        yield env
    finally:
        stop(server)


def stop_worker(worker: subprocess.Popen) -> None:
    """A Prefect worker shuts down on the second SIGINT; then make sure of it."""
    for _ in range(2):
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGINT)
            time.sleep(1)
    stop(worker)


def test_deployment_runs_on_a_worker_from_a_real_server(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    env = {**prefect_server, "PWD": str(PROJECT_ROOT)}
    prefect = str(BIN / "prefect")
    run([prefect, "work-pool", "create", "stockpipe", "--type", "process"], env)
    run([prefect, "--no-prompt", "deploy", "--all"], env)
    listed = run([prefect, "deployment", "ls"], env).stdout
    for name in ["stock-pipeline/sample", "stock-pipeline/daily", "ingest-stage/ingest", "train-stage/train"]:
        assert name.split("/")[1] in listed, listed

    log = tmp_path / "worker.log"
    worker = spawn([prefect, "worker", "start", "--pool", "stockpipe"], env, log)
    try:
        out = tmp_path / "out"
        started = time.monotonic()
        result = run(
            [prefect, "deployment", "run", "stock-pipeline/sample", "--param", f"out={out}",
             "--watch", "--watch-timeout", "240"],
            env,
            timeout=300,
        )  # fmt: skip
        assert "Completed" in result.stdout, result.stdout[-2000:]
        print(f"deployment run took {time.monotonic() - started:.1f} s")
    finally:
        stop_worker(worker)
    for path in [
        "stage1",
        "stage2",
        "quarantine",
        "reports/ingest.json",
        "model/model.bin",
        "model/metrics.json",
    ]:
        assert (out / path).exists(), path
    assert "Completed" in log.read_text()


def ray_node(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Ray binds every other port itself when it starts (0 = any free one); only the dashboard
    # agent's port is fixed by default (52365), and two nodes on one host cannot share it.
    agent = ["--dashboard-agent-listen-port", str(free_port())]
    return spawn([str(BIN / "ray"), "start", *command, "--num-cpus", "1", *agent, "--block"], env, log)


def test_flow_runs_on_an_existing_two_node_ray_cluster(tmp_path: Path) -> None:
    # Token authentication on, with a token of this test's own shared by every node and the driver.
    env = {**base_env(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    address = f"127.0.0.1:{port}"
    count_nodes = [sys.executable, "-c", f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
                   "print(sum(n['Alive'] for n in ray.nodes()))"]  # fmt: skip
    head = ray_node(
        ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
         "--ray-client-server-port", str(free_port())],
        env, tmp_path / "head.log",
    )  # fmt: skip
    nodes = [head]
    try:
        nodes.append(
            ray_node(["--address", address, "--node-ip-address", "127.0.0.1"], env, tmp_path / "w.log")
        )

        def two_nodes() -> bool:
            result = subprocess.run(
                count_nodes, env=env, capture_output=True, text=True, timeout=60, check=False
            )
            return result.stdout.strip().endswith("2")

        wait_for(two_nodes, "two-node Ray cluster", nodes[1], tmp_path / "w.log", timeout=120)
        time.sleep(3)  # a node that fails just after joining is only declared dead a moment later
        assert two_nodes(), f"a Ray node died after joining:\n{(tmp_path / 'w.log').read_text()[-3000:]}"

        out = tmp_path / "out"
        stockpipe = [sys.executable, "-m", "flows.cli", "run", "--out", str(out), "--ray-address", address]
        run(stockpipe, env, timeout=300)
    finally:
        for node in reversed(nodes):
            stop(node)

    ingest = json.loads((out / "reports" / "ingest.json").read_text())
    features = json.loads((out / "reports" / "features.json").read_text())
    assert len(ingest["ray_nodes"]) == 2, ingest["ray_nodes"]
    assert sum(ingest["ray_nodes"].values()) == 6 and len(features["ray_nodes"]) == 2
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["engine"]["workers"] == 2  # one Ray Train worker per 1-CPU node
    assert ingest["rows"]["kept"] == features["rows"]
