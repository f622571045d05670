"""Running the pipeline the way it runs in production: a Prefect deployment picked up by a worker
from a real Prefect server, and the flow on an existing two-node Ray cluster. Each test starts its
own servers on free loopback ports and stops every process it started by process group id."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from compute.settings import PROJECT_ROOT
from harness.procs import free_port, spawn, start_server, stop
from harness.proctree import marked
from tests.conftest import ERROR_LOOKING, scaled_sample
from tests.integration.test_faults import stage_files

BIN = Path(sys.executable).parent
MARK = "STOCKPIPE_TEST_RUN"


def run(command: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


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
    # Not this session's Ray either: RAY_ADDRESS, RAY_API_SERVER_ADDRESS.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS", "RAY_API"))}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_USAGE_STATS_ENABLED="0",
        STOCKPIPE_DASHBOARD_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_prefect_server(work: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """A real `prefect server` with its own SQLite database in `work`; returns it and the
    environment that points clients (and its own UI) at it."""
    port = free_port()
    env = base_env(work)
    env.update(
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{work / 'prefect.db'}",
    )
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    _, server = start_server(command, port, work / "server.log", ready_path="/api/health", env=env)
    return server, env


def stop_worker(worker: subprocess.Popen) -> None:
    """A Prefect worker shuts down on the second SIGINT; then make sure of it."""
    for _ in range(2):
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGINT)
            time.sleep(1)
    stop(worker)


def api(env: dict[str, str], method: str, path: str, **body: Any) -> Any:
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body or None, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_run_id(output: str) -> str:
    found = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert found, output[-2000:]
    return found.group(1)


def wait_until_final(env: dict[str, str], run_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = api(env, "GET", f"/flow_runs/{run_id}")
        if found["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return found
        time.sleep(0.5)
    raise TimeoutError(f"flow run {run_id} not finished after {timeout} s")


def run_logs(env: dict[str, str], run_id: str) -> list[str]:
    logs = api(env, "POST", "/logs/filter", logs={"flow_run_id": {"any_": [run_id]}}, limit=200)
    return [entry["message"] for entry in logs]


@pytest.fixture(scope="module")
def deployment_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`prefect deploy --all` on a real server, one worker, and two runs of stock-pipeline/sample
    submitted at once on one output: the whole pipeline, and `stop_after=features`."""
    work = tmp_path_factory.mktemp("deployments")
    server, env = start_prefect_server(work)
    env["PWD"] = str(PROJECT_ROOT)
    env[MARK] = uuid.uuid4().hex  # inherited by the worker, its flow-run processes and their Ray
    prefect = str(BIN / "prefect")
    worker = None
    try:
        run([prefect, "work-pool", "create", "stockpipe", "--type", "process"], env)
        run([prefect, "--no-prompt", "deploy", "--all"], env)
        listed = run([prefect, "deployment", "ls"], env).stdout
        # Polling for runs every 2 s instead of 10, so that each submission starts sooner.
        worker = spawn([prefect, "worker", "start", "--pool", "stockpipe"], work / "worker.log",
                       {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, PROJECT_ROOT)  # fmt: skip
        out = work / "out"
        submit = [prefect, "deployment", "run", "stock-pipeline/sample", "--param", f"out={out}"]
        started = time.monotonic()
        whole = flow_run_id(run(submit, env).stdout)
        features = flow_run_id(run([*submit, "--param", "stop_after=features"], env).stdout)
        finished = {run_id: wait_until_final(env, run_id) for run_id in (whole, features)}
        print(f"two deployment runs took {time.monotonic() - started:.1f} s")
        yield {"env": env, "out": out, "listed": listed, "whole": whole, "features": features,
               "finished": finished, "worker_log": work / "worker.log"}  # fmt: skip
    finally:
        if worker:
            stop_worker(worker)
        stop(server)


def test_deployments_from_prefect_yaml_are_registered(deployment_runs: dict[str, Any]) -> None:
    for name in ["stock-pipeline/sample", "stock-pipeline/daily", "ingest-stage/ingest", "train-stage/train"]:
        assert name.split("/")[1] in deployment_runs["listed"], deployment_runs["listed"]
    # Their runs send heartbeats, which automations.yaml watches (test_interruptions.py).
    daily = api(deployment_runs["env"], "GET", "/deployments/name/stock-pipeline/daily")
    assert daily["job_variables"]["env"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "180"}, daily


def test_two_deployment_runs_at_once_on_one_output_both_complete(deployment_runs: dict[str, Any]) -> None:
    env, out = deployment_runs["env"], deployment_runs["out"]
    for run_id, found in deployment_runs["finished"].items():
        assert found["state"]["type"] == "COMPLETED", (run_id, found["state"], run_logs(env, run_id)[-20:])
    for path in [
        "stage1",
        "stage2",
        "quarantine",
        "reports/ingest.json",
        "model/model.bin",
        "model/metrics.json",
    ]:
        assert (out / path).exists(), path
    # Whichever the worker started second waited for the other, saying which flow run held the output.
    logs = {run_id: run_logs(env, run_id) for run_id in deployment_runs["finished"]}
    waited = [
        run_id for run_id, lines in logs.items() if any(line.startswith("waiting for") for line in lines)
    ]
    assert len(waited) == 1, logs
    other = next(run_id for run_id in logs if run_id not in waited)
    assert any(f"Prefect flow run {other}" in line for line in logs[waited[0]]), logs[waited[0]]
    for lines in logs.values():
        assert not [line for line in lines if ERROR_LOOKING.search(line)], lines
    assert "Completed" in deployment_runs["worker_log"].read_text()


def ray_node(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Ray binds every other port itself when it starts (0 = any free one); only the dashboard
    # agent's port is fixed by default (52365), and two nodes on one host cannot share it.
    agent = ["--dashboard-agent-listen-port", str(free_port())]
    return spawn(
        [str(BIN / "ray"), "start", *command, "--num-cpus", "1", *agent, "--block"], log, env, PROJECT_ROOT
    )


def test_flow_runs_on_an_existing_two_node_ray_cluster(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    # Token authentication on, with a token of this test's own shared by every node and the driver;
    # the session's Prefect server, as a deployment run on a cluster finds one.
    env = {**base_env(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # fmt: skip
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
        stockpipe = [sys.executable, "-m", "flows.cli", "run", "--stop-after", "train", "--out", str(out),
                     "--ray-address", address]  # fmt: skip
        run(stockpipe, env, timeout=300)

        # A node lost mid-stage: its tasks run again on the node that is left, and the output is
        # exactly what both nodes make (both runs plan their batches with both nodes alive).
        source = scaled_sample(tmp_path / "scaled", 8)
        etl = [sys.executable, "-m", "flows.cli", "run", "--stop-after", "features", "--source", str(source),
               "--ray-address", address, "--out"]  # fmt: skip
        run([*etl, str(tmp_path / "both")], env, timeout=300)
        log = tmp_path / "lost.log"
        running = spawn([*etl, str(tmp_path / "one")], log, env)
        wait_for(lambda: "ingest: " in log.read_text() and " tasks done" in log.read_text(),
                 "the ingest fan-out", running, log)  # fmt: skip
        os.killpg(nodes[1].pid, signal.SIGKILL)  # the worker node: its raylet, its workers, their tasks
        nodes[1].wait()
        assert running.wait(timeout=300) == 0, log.read_text()[-3000:]
        lost = log.read_text()
        assert "ingest: " in lost and not [line for line in lost.splitlines() if ERROR_LOOKING.search(line)]
        for stage in ("stage1", "stage2", "quarantine"):
            assert stage_files(tmp_path / "one", stage) == stage_files(tmp_path / "both", stage), stage
    finally:
        for node in reversed(nodes):
            stop(node, grace=3)

    ingest = json.loads((out / "reports" / "ingest.json").read_text())
    features = json.loads((out / "reports" / "features.json").read_text())
    assert len(ingest["ray_nodes"]) == 2, ingest["ray_nodes"]
    assert sum(ingest["ray_nodes"].values()) == 6 and len(features["ray_nodes"]) == 2
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["engine"]["workers"] == 2  # one Ray Train worker per 1-CPU node
    assert ingest["rows"]["kept"] == features["rows"]


# --- what a person sees in the Prefect UI ---------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's, driven by Playwright), as a person's browser opens the UI."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


# Without the background-networking flags Chromium keeps trying to reach Google's hosts.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]  # fmt: skip


def artifact(env: dict[str, str], run_id: str | list[str], key: str) -> dict[str, Any]:
    """The one artifact with this key among the flow run's (or the flow runs')."""
    found = api(
        env,
        "POST",
        "/artifacts/filter",
        artifacts={
            "flow_run_id": {"any_": [run_id] if isinstance(run_id, str) else run_id},
            "key": {"any_": [key]},
        },
    )
    assert len(found) == 1, (key, found)
    return found[0]


def open_artifact(browser: Any, env: dict[str, str], artifact_id: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{env['PREFECT_API_URL'].removesuffix('/api')}/artifacts/artifact/{artifact_id}")
    return page


def test_training_plots_show_inline_in_the_prefect_ui(
    deployment_runs: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    env, out = deployment_runs["env"], deployment_runs["out"]
    found = artifact(env, deployment_runs["whole"], "training-metrics")
    page = open_artifact(browser, env, found["id"])
    try:
        page.wait_for_selector("img[src^='data:image/png;base64,']", timeout=30_000)
        # Rendered and decoded by the browser, not just present in the markdown.
        page.wait_for_function(
            "[...document.images].filter(i => i.src.startsWith('data:image/png'))"
            ".every(i => i.complete && i.naturalWidth > 100)",
            timeout=30_000,
        )
        images = page.evaluate(
            "[...document.images].filter(i => i.src.startsWith('data:image/png'))"
            ".map(i => ({alt: i.alt, src: i.src, width: i.naturalWidth}))"
        )
        page.screenshot(path=str(tmp_path / "training-metrics.png"))
        text = page.inner_text("body")
    finally:
        page.close()
    shown = {image["alt"]: base64.b64decode(image["src"].split(",", 1)[1]) for image in images}
    assert shown == {
        "Learning curve": (out / "reports" / "learning_curve.png").read_bytes(),
        "Predicted vs actual volume": (out / "reports" / "predicted_vs_actual.png").read_bytes(),
    }
    assert "model, time holdout" in text and "file://" not in found["data"]
    assert (tmp_path / "training-metrics.png").stat().st_size > 50_000


def test_ingest_problems_table_and_stage_progress_show_in_the_prefect_ui(
    deployment_runs: dict[str, Any], browser: Any
) -> None:
    env, run_id = deployment_runs["env"], deployment_runs["whole"]
    table = artifact(env, run_id, "ingest-problems")
    assert table["type"] == "table"
    page = open_artifact(browser, env, table["id"])
    try:
        page.wait_for_selector("table td", timeout=30_000)
        cells = page.eval_on_selector_all("table td", "cells => cells.map(c => c.innerText.trim())")
    finally:
        page.close()
    assert "quarantined rows" in cells and "empty_row" in cells and "5" in cells, cells
    # The two runs share one output and run one after the other: ingest and features are built by
    # whichever ran first (the other reuses them, with nothing to draw), training by the whole run.
    both = [run_id, deployment_runs["features"]]
    for stage, runs in (("ingest", both), ("features", both), ("train", run_id)):
        progress = artifact(env, runs, f"{stage}-progress")
        assert progress["type"] == "progress" and float(progress["data"]) == 100.0, progress


def task_runs(env: dict[str, str], run_id: str) -> dict[str, str]:
    """The flow run's task runs: name (without its suffix) -> state type."""
    found = api(env, "POST", "/task_runs/filter", task_runs={"flow_run_id": {"any_": [run_id]}})
    return {t["name"].rsplit("-", 1)[0]: (t["state"] or {}).get("type") for t in found}  # None: just made


def test_cancelling_a_deployment_run_ends_its_stage_cancelled_and_the_next_run_resumes(
    deployment_runs: dict[str, Any], tmp_path: Path
) -> None:
    """`prefect flow-run cancel` through the real worker while the run trains: the flow run and its
    train task end Cancelled, the process exits by itself (no abort, no traceback in the worker's
    log), Ray's processes go, and the next run resumes from what is published."""
    env, log = deployment_runs["env"], deployment_runs["worker_log"]
    prefect = str(BIN / "prefect")
    out = tmp_path / "out"
    # 2000 rounds: a fit of several seconds on the sample, so that the cancel lands in it.
    submit = [prefect, "deployment", "run", "stock-pipeline/sample", "--param", f"out={out}",
              "--param", "train_rounds=2000"]  # fmt: skip
    before = log.read_text()
    cancelled = flow_run_id(run(submit, env).stdout)
    deadline = time.monotonic() + 180
    while task_runs(env, cancelled).get("train") != "RUNNING":
        assert time.monotonic() < deadline, task_runs(env, cancelled)
        time.sleep(0.5)
    time.sleep(2)  # well into the fit
    run([prefect, "flow-run", "cancel", cancelled], env)
    final = wait_until_final(env, cancelled, timeout=120)
    assert final["state"]["type"] == "CANCELLED", final["state"]
    states = task_runs(env, cancelled)
    assert states["train"] == "CANCELLED" and states["ingest"] == states["features"] == "COMPLETED", states
    said = [m for m in run_logs(env, cancelled) if "interrupted (SIGTERM) during train" in m]
    assert said and "stage 2 is published" in said[0], run_logs(env, cancelled)[-10:]

    time.sleep(5)
    worker_said = log.read_text()[len(before) :]
    assert "Traceback" not in worker_said and "status code: -6" not in worker_said, worker_said[-3000:]
    assert not [line for line in run_logs(env, cancelled) if ERROR_LOOKING.search(line)]
    # Every process the worker's runs start carries the worker's mark; none of Ray's is left once
    # ray.shutdown's children have had their moment to exit.
    rays = [
        p for p in marked(MARK, env[MARK]) if any(n in " ".join(p.cmdline()) for n in ("ray", "gcs_server"))
    ]
    _, left = psutil.wait_procs(rays, timeout=20)
    assert not left, [" ".join(p.cmdline())[:160] for p in left]
    assert not (out / "model").exists() and not [p for p in out.glob(".*") if p.name != ".stockpipe.lock"]

    # The next run goes on from the published stage 2: the train deployment, which is what is left.
    train = [prefect, "deployment", "run", "train-stage/train", "--param", f"out={out}"]
    resumed = flow_run_id(run(train, env).stdout)
    assert wait_until_final(env, resumed)["state"]["type"] == "COMPLETED"
    assert (out / "model" / "model.bin").exists() and "promoted" in " ".join(run_logs(env, resumed))
