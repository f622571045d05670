"""Runs as people start them on a shared machine: two `stockpipe run` at once on one output or on
two, and a Ray cluster started with the stock `ray start --head`. Every process is stopped by its
process group id."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from harness.procs import free_port, spawn, stop
from harness.proctree import marked
from tests.conftest import ERROR_LOOKING, SAMPLE

BIN = Path(sys.executable).parent
KEPT = 115_820  # rows the sample keeps


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`stockpipe ARGS` in a session of its own, its output into `log`."""
    return spawn([sys.executable, "-m", "flows.cli", *args], log, env)


def finish(
    process: subprocess.Popen, log: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> str:
    """Wait for `process`; with the `env` it was started with, also check that it left no process
    running (its own process group is stopped only afterwards, so nothing is hidden)."""
    try:
        process.wait(timeout=timeout)
        if env and process.returncode == 0:
            # Ray's dashboard leaves a multiprocessing fork server and resource tracker, which see
            # it gone and exit by themselves within a second; nothing may outlive that.
            deadline = time.monotonic() + 5
            while (left := marked(MARK, env[MARK])) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not left, f"still running after it exited: {[' '.join(p.cmdline())[:120] for p in left]}"
    finally:
        stop(process)
    text = log.read_text()
    assert process.returncode == 0, text[-3000:]
    return text


def wait_for_line(log: Path, pattern: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise TimeoutError(f"{pattern!r} not in {log} after {timeout} s")


def clean(text: str) -> None:
    """A successful run prints no line that looks like an error or a traceback."""
    assert not [line for line in text.splitlines() if ERROR_LOOKING.search(line)], text[-3000:]


def test_two_runs_on_one_output_the_second_waits_and_reuses(
    ray_session: str | None, prefect_harness: None, tmp_path: Path
) -> None:
    import ray
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1"}
    out = str(tmp_path / "out")
    address = ray.get_runtime_context().gcs_address
    common = ["--source", str(SAMPLE), "--out", out, "--ray-address", address]
    first = start(["run", "--stop-after", "train", *common], env, tmp_path / "first.log")
    try:
        wait_for_line(tmp_path / "first.log", r"Ray dashboard|ingest:", first)
        # Without waiting: refused at once, in one line that says who holds the output.
        refused = subprocess.run(
            [sys.executable, "-m", "flows.cli", "ingest", "--no-wait", *common],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"is in use by process {first.pid} on " in refused.stderr
        second = start(["run", "--stop-after", "features", *common], env, tmp_path / "second.log")
        second_log = finish(second, tmp_path / "second.log")
    finally:
        first_log = finish(first, tmp_path / "first.log")
    assert f"waiting for process {first.pid} on " in second_log, second_log[-3000:]
    assert "unchanged since the last run, reused: ingest, features" in second_log
    assert "train: time holdout" in first_log
    clean(first_log)
    clean(second_log)
    assert pq.read_table(tmp_path / "out" / "stage1").num_rows == KEPT


MARK = "STOCKPIPE_TEST_RUN"  # every process a run starts inherits it


def local_env(tmp_path: Path, dashboard_port: int) -> dict[str, Any]:
    """Each run starts its own Ray and Prefect's temporary server, as on a laptop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_ADDRESS", "RAY_API"))}
    return {**env, "STOCKPIPE_DASHBOARD_PORT": str(dashboard_port), "PYTHONUNBUFFERED": "1",
            "PREFECT_HOME": str(tmp_path / "prefect-home")}  # fmt: skip


def test_two_runs_on_two_outputs_each_start_their_own_ray_and_stop_all_of_it(tmp_path: Path) -> None:
    port = free_port()  # both are told to put the dashboard there; the second finds it taken
    env_a, env_b = ({**local_env(tmp_path, port), MARK: uuid.uuid4().hex} for _ in "ab")
    first = start(["run", "--stop-after", "train", "--out", str(tmp_path / "a")], env_a, tmp_path / "a.log")
    try:
        wait_for_line(tmp_path / "a.log", rf"Ray dashboard: http://127.0.0.1:{port}", first)
        second = start(
            ["run", "--stop-after", "features", "--out", str(tmp_path / "b")], env_b, tmp_path / "b.log"
        )
        second_log = finish(second, tmp_path / "b.log", env=env_b)
    finally:
        first_log = finish(first, tmp_path / "a.log", env=env_a)
    assert f"(port {port} is taken, by another run's Ray?)" in second_log, second_log[-3000:]
    clean(first_log)
    clean(second_log)
    for out in ("a", "b"):
        assert pq.read_table(tmp_path / out / "stage1").num_rows == KEPT


@pytest.fixture
def stock_ray_head(tmp_path: Path) -> Any:
    """`ray start --head` as its docs show it, no extra variables, in a home where a token exists
    (as after any local run): Ray then turns token authentication on."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_API"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True
    )
    port = free_port()
    command = [str(BIN / "ray"), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
               "--include-dashboard", "false", "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--block"]  # fmt: skip
    head = spawn(command, tmp_path / "head.log", env)
    try:
        wait_for_line(tmp_path / "head.log", r"block forever", head)
        yield {
            "address": f"127.0.0.1:{port}",
            "env": env,
            "token": (home / ".ray" / "auth_token").read_text(),
        }
    finally:
        stop(head, grace=3)


def test_a_stock_ray_head_is_joined_with_the_token_at_hand(
    stock_ray_head: dict[str, Any], prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**stock_ray_head["env"], "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    args = ["run", "--stop-after", "features", "--out", str(tmp_path / "out"), "--ray-address"]
    log = finish(start([*args, stock_ray_head["address"]], env, tmp_path / "run.log"), tmp_path / "run.log")
    clean(log)
    assert pq.read_table(tmp_path / "out" / "stage1").num_rows == KEPT

    # Another token: one line that says it is the token, and what to set, in seconds (not 20 s).
    wrong = {**env, "RAY_AUTH_TOKEN": "0" * 32}
    started = time.monotonic()
    refused = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, stock_ray_head["address"], "--force"],
        env=wrong, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "refused this driver's token: set RAY_AUTH_TOKEN" in refused.stderr
    assert time.monotonic() - started < 15
