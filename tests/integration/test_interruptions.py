"""Interruptions as people cause them, each for real: Ctrl-C typed into a terminal, SIGTERM and a
second signal, a full disk (a small tmpfs the test mounts), and a Prefect server that goes away.
Each checks the exit status, the one line, that no traceback or ERROR line was printed, what is
published, that no process of the run is left, and that the next run finishes with exact output.
A deployment run cancelled through a real worker is in test_operations.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.procs import free_port, start_server, stop
from harness.proctree import marked
from harness.terminal import DRAWING, Terminal, last_said, left_as_found, plain, said
from tests.conftest import ERROR_LOOKING, SAMPLE, leftovers
from tests.integration.test_faults import stage_files

MARK = "STOCKPIPE_TEST_RUN"
STOCKPIPE = [sys.executable, "-m", "flows.cli"]
# The sample trains in about a second; with these rounds its fit lasts several (about 6 s of
# boosting on 2 cores), so that a signal sent once training began lands in the fit.
LONG_FIT = ["--rounds", "2000"]


def clean_env(**extra: str) -> dict[str, str]:
    """A user's shell: no Prefect server configured (the command starts its temporary one), no
    Ray cluster (it starts a local one, its dashboard on a free port), a mark on every process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS", "RAY_API"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               STOCKPIPE_DASHBOARD_PORT=str(free_port()), TERM=DRAWING)  # fmt: skip
    env.update({MARK: uuid.uuid4().hex}, **extra)
    return env


def session_env(**extra: str) -> dict[str, str]:
    """This session's Prefect harness and Ray cluster, as a deployment run finds them."""
    import ray
    from prefect.settings import PREFECT_API_URL

    address = ray.get_runtime_context().gcs_address
    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1",
            "RAY_ADDRESS": address, "TERM": DRAWING, MARK: uuid.uuid4().hex, **extra}  # fmt: skip


def nothing_left(env: dict[str, str], timeout: float = 20) -> None:
    """No process the run started is alive (Ray's take a few seconds to follow their driver)."""
    deadline = time.monotonic() + timeout
    while left := marked(MARK, env[MARK]):
        assert time.monotonic() < deadline, [" ".join(p.cmdline())[:100] for p in left]
        time.sleep(0.5)


def no_error_lines(text: str) -> None:
    assert not [line for line in text.splitlines() if ERROR_LOOKING.search(line)], text[-3000:]


def signalled_while_training(
    command: list[str], env: dict[str, str], send: Callable[[Terminal], None], settle: float
) -> tuple[Terminal, int, float]:
    """`command` on a terminal, sent a signal by `send` `settle` seconds after training began:
    the terminal, the exit status, and the seconds from the signal to the exit."""
    terminal = Terminal(command, env)
    try:
        terminal.wait_for("train: one Ray task", timeout=180)
        time.sleep(settle)
        sent = time.monotonic()
        send(terminal)
        code = terminal.wait(timeout=60)
        return terminal, code, time.monotonic() - sent
    finally:
        terminal.kill()


def test_ctrl_c_in_a_terminal_stops_the_run_in_order_and_the_next_one_finishes(
    sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """As a person runs it: a terminal, Prefect's temporary server and a local Ray started by the
    command, Ctrl-C typed while it trains (the kernel sends SIGINT to the whole process group)."""
    out, env = tmp_path / "out", clean_env()
    command = [*STOCKPIPE, "run", "--out", str(out), *LONG_FIT]
    terminal, code, seconds = signalled_while_training(command, env, Terminal.interrupt, settle=2)
    text = terminal.text
    assert code == 130 and seconds < 10, (code, seconds, text[-2000:])
    assert said(text) == [
        "stockpipe: interrupted (Ctrl-C) during train: stage 1 is published, stage 2 is published, "
        "the forecast is published, no model version is published and there is no champion model yet; "
        "run again to go on"
    ]
    assert last_said(text) == said(text)[0]
    left_as_found(text)
    no_error_lines(text)
    assert not leftovers(out) and not (out / "model").exists()
    nothing_left(env)

    # The next run (on this session's Prefect and Ray, which saves starting them again) goes on.
    env = session_env()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused: ingest, features, forecast" in again.stdout
    for stage in ("stage1", "stage2", "quarantine", "forecast_inputs"):
        assert stage_files(out, stage) == stage_files(sample_run["out"], stage), stage
    nothing_left(env)


@pytest.mark.parametrize("daemon", ["gcs_server", "dashboard.py"])
def test_ctrl_c_while_prefect_and_ray_start_ends_at_once_in_one_line(daemon: str, tmp_path: Path) -> None:
    """Ctrl-C typed as soon as the command's Ray has started `daemon` (its first, and the
    dashboard, whose death by the terminal's SIGINT made ray.init fail with its log or wait a
    minute): exit status 130 at once, one line, the terminal as found, nothing left running."""
    out, env = tmp_path / "out", clean_env()
    terminal = Terminal([*STOCKPIPE, "run", "--out", str(out)], env)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in marked(MARK, env[MARK]) if daemon in " ".join(p.cmdline())]:
            assert time.monotonic() < deadline and not terminal.exited(), terminal.text[-2000:]
            time.sleep(0.05)
        terminal.interrupt()
        code = terminal.wait(timeout=30)
    finally:
        terminal.kill()
    text = terminal.text
    assert code == 130, (code, text[-3000:])
    assert said(text) == ["stockpipe: interrupted (Ctrl-C) before any stage began; run again to go on"], text
    assert last_said(text) == said(text)[0]
    left_as_found(text)
    no_error_lines(text)
    assert "ingest" not in plain(text)
    assert not leftovers(out)
    nothing_left(env)


def latest_flow_run() -> tuple[str, dict[str, str]]:
    """The newest flow run in this session's Prefect server: its state, and its task runs' states."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> tuple[str, dict[str, str]]:
        async with get_client() as client:
            run = (await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1))[0]
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            return run.state.type.value, {t.name.rsplit("-", 1)[0]: t.state.type.value for t in tasks}

    return asyncio.run(read())


def test_sigterm_stops_in_order_and_a_second_signal_at_once(
    ray_session: str | None, prefect_harness: None, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for folder in ("stage2",):  # training alone: what a cancelled daily run was doing
        shutil.copytree(sample_run["out"] / folder, out / folder)
    env = session_env()
    command = [*STOCKPIPE, "train", "--out", str(out), *LONG_FIT]
    # To the process alone, as `kill` sends it.
    terminal, code, seconds = signalled_while_training(
        command, env, lambda t: os.kill(t.pid, signal.SIGTERM), settle=1
    )
    assert code == 143 and seconds < 10, (code, seconds, terminal.text[-2000:])
    stopped = (
        "stockpipe: interrupted (SIGTERM) during train: stage 2 is published, no model version is published "
        "and there is no champion model yet; run again to go on"
    )
    assert said(terminal.text) == [stopped] and last_said(terminal.text) == stopped
    left_as_found(terminal.text)
    no_error_lines(terminal.text)
    state, tasks = latest_flow_run()
    assert state == "CANCELLED" and tasks == {"train": "CANCELLED"}, (state, tasks)
    assert not leftovers(out)
    nothing_left(env)

    # Two Ctrl-Cs while the bar draws: the first asks for a stop, which takes a poll of the fit
    # (a quarter of a second) and the task's end, so the second, a twentieth of a second later,
    # finds the bar on the screen (tests/unit/test_terminal.py has it there by construction).
    terminal = Terminal(command, env)
    try:
        terminal.wait_for("train: one Ray task", timeout=120)
        os.kill(terminal.pid, signal.SIGINT)
        time.sleep(0.05)
        sent = time.monotonic()
        os.kill(terminal.pid, signal.SIGINT)
        code = terminal.wait(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        terminal.kill()
    assert code == 130 and seconds < 3, (code, seconds, terminal.text[-2000:])  # exited, not killed by SIGINT
    assert said(terminal.text) == ["stockpipe: Ctrl-C again: stopping at once"], terminal.text[-2000:]
    assert last_said(terminal.text) == "stockpipe: Ctrl-C again: stopping at once"
    left_as_found(terminal.text)
    nothing_left(env)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MB tmpfs mounted for the test (root only); skipped, with the reason, where it cannot."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int = 0) -> Path:
    """Fill the disk but `leave` bytes."""
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = free - leave
        while left > 0:
            try:
                left -= fh.write(chunk[: min(left, len(chunk))])
                fh.flush()
            except OSError:
                break
    return filler


def test_a_full_disk_is_refused_before_writing_and_enospc_ends_in_one_line(
    ray_session: str | None, prefect_harness: None, small_disk: Path, tmp_path: Path
) -> None:
    out, env = small_disk / "out", session_env()
    ingest = [*STOCKPIPE, "ingest", "--source", str(SAMPLE), "--out", str(out)]

    # Too little room for stage 1 (about 3 MB for the sample): refused, with both numbers, before writing.
    filler = fill(small_disk, leave=2 << 20)
    refused = subprocess.run(ingest, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert refused.returncode == 1, refused.stderr[-2000:]
    line = said(refused.stderr)
    assert len(line) == 1 and "not enough space for ingest in" in line[0] and "MB are free" in line[0], (
        refused.stdout + refused.stderr
    )[-3000:]
    assert "it writes about 3 MB" in line[0] and "free some space and run again" in line[0]
    no_error_lines(refused.stdout + refused.stderr)
    assert not (out / "stage1").exists() and not leftovers(out)
    filler.unlink()

    # Room for it: published. Then someone else fills the disk while a forced re-run writes.
    first = subprocess.run(ingest, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    published = stage_files(out, "stage1")
    staged = threading.Event()

    def fill_when_staging_appears() -> None:
        deadline = time.monotonic() + 120
        while not any(out.glob(".stage1.*.staging")) and time.monotonic() < deadline:
            time.sleep(0.01)
        fill(small_disk)
        staged.set()

    filling = threading.Thread(target=fill_when_staging_appears)
    filling.start()
    full = subprocess.run(
        [*ingest, "--force"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    filling.join()
    assert staged.is_set() and full.returncode == 1, full.stderr[-3000:]
    line = said(full.stderr)
    assert (
        len(line) == 1
        and f"the disk holding {out} is full (no space left on device): ingest stopped" in line[0]
    )
    assert "ingest stopped, its staging folder removed: stage 1 is unchanged; free some" in line[0], line
    no_error_lines(full.stdout + full.stderr)
    assert stage_files(out, "stage1") == published and not leftovers(out)

    (small_disk / "filler").unlink()
    again = subprocess.run(
        [*ingest, "--force"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0 and stage_files(out, "stage1") == published
    nothing_left(env)


def automation(within: int) -> str:
    """The project's automation (automations.yaml), waiting `within` seconds for a heartbeat."""
    import json

    import yaml

    from compute.settings import PROJECT_ROOT

    declared = yaml.safe_load((PROJECT_ROOT / "automations.yaml").read_text())
    declared["automations"][0]["trigger"]["within"] = within
    return json.dumps(declared)


def test_a_prefect_server_that_comes_back_is_waited_for_and_one_that_stays_down_ends_the_run(
    ray_session: str | None, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """A real `prefect server`, killed by process id while the run trains: back 3 s later, the
    run completes; gone for good, the run ends in one line with exit status 75 once the wait is
    over, and when the server is back the project's automation marks that flow run Crashed, as its
    heartbeats stopped."""
    import httpx
    import ray

    port = free_port()
    base = clean_env(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                     PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                     PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", STOCKPIPE_PREFECT_API_WAIT_SECONDS="10",
                     RAY_ADDRESS=ray.get_runtime_context().gcs_address)  # fmt: skip
    server_command = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                      "--port", str(port)]  # fmt: skip

    def start() -> subprocess.Popen:
        return start_server(server_command, port, tmp_path / "server.log", "/api/health", base)[1]

    server = start()
    try:
        create = [server_command[0], "automation", "create", "--from-json", automation(within=40)]
        created = subprocess.run(create, env=base, capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stdout + created.stderr
        out = tmp_path / "out"
        for folder in ("stage2", "model", "models"):  # a day's training, with a champion to keep
            shutil.copytree(sample_run["out"] / folder, out / folder)
        command = [*STOCKPIPE, "train", "--out", str(out), *LONG_FIT]

        # Back 3 s later: the run goes on and completes.
        terminal = Terminal(command, base)
        try:
            terminal.wait_for("train: one Ray task", timeout=120)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            time.sleep(3)
            server = start()
            assert terminal.wait(timeout=180) == 0, terminal.text[-3000:]
        finally:
            terminal.kill()
        no_error_lines(terminal.text)

        # Gone for good: one line, exit status 75, once the wait (10 s here) is over.
        terminal = Terminal([*command, "--force"], base)
        try:
            terminal.wait_for("train: one Ray task", timeout=120)
            run_id = httpx.post(f"{base['PREFECT_API_URL']}/flow_runs/filter", json={"limit": 1,
                                "sort": "START_TIME_DESC"}).json()[0]["id"]  # fmt: skip
            # The run's first heartbeat (sent as it starts) is in the server before it goes, or
            # the automation has nothing to wait after.
            heartbeat = {"event": {"name": ["prefect.flow-run.heartbeat"]},
                         "resource": {"id": [f"prefect.flow-run.{run_id}"]}}  # fmt: skip
            events = f"{base['PREFECT_API_URL']}/events/filter"
            deadline = time.monotonic() + 60
            while not httpx.post(events, json={"filter": heartbeat, "limit": 1}).json()["events"]:
                assert time.monotonic() < deadline, "no heartbeat from the run"
                time.sleep(0.5)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            killed = time.monotonic()
            code = terminal.wait(timeout=120)
            seconds = time.monotonic() - killed
        finally:
            terminal.kill()
        assert code == 75 and seconds < 30, (code, seconds, terminal.text[-3000:])
        line = said(terminal.text)
        assert line == [last_said(terminal.text)], terminal.text[-2000:]
        left_as_found(terminal.text)
        assert (
            len(line) == 1
            and f"the Prefect server at http://127.0.0.1:{port} has not answered since" in line[0]
        )
        assert (
            "(10 s): stopped during train: stage 2 is published, no new model version is published, the "
            "champion model is unchanged; run again once the server answers" in line[0]
        )
        no_error_lines(terminal.text)
        assert not leftovers(out)
        nothing_left(base)

        # Back: the run it lost would stay Running for ever; its heartbeats stopped, so the
        # automation marks it Crashed.
        server = start()
        deadline = time.monotonic() + 180
        while (state := httpx.get(f"{base['PREFECT_API_URL']}/flow_runs/{run_id}").json()["state"])[
            "type"
        ] != "CRASHED":
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
    finally:
        stop(server)
