"""A model a day, for real: `stockpipe train` on a copy of the sample run's output, gated against
its champion; `promote` and `rollback`; a promote that waits for a training holding the lock; a
tampered version refused; and `stockpipe serve` following the champion through a promote and a
rollback while wrk keeps it busy, with no failed request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute import model as contract
from compute import publish, registry
from compute.layout import Layout
from harness.procs import free_port, spawn, start_server, stop
from tests.conftest import ERROR_LOOKING, leftovers


def stockpipe(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def session_env() -> dict[str, str]:
    """This session's Prefect harness and Ray cluster, as a deployment run would find them."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1"}


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def out(sample_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sample run's output: stage 2, its one version, and that version as champion."""
    copy = tmp_path_factory.mktemp("registry") / "out"
    for folder in ("stage2", "model", "models"):
        shutil.copytree(sample_run["out"] / folder, copy / folder)
    return copy


def champion(out: Path) -> str:
    _, card = contract.read_published(str(out / "model"))
    assert card.version
    return card.version


def train(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = stockpipe("train", "--force", "--out", str(out), "--ray-address", ray_address(), *args,
                       env=session_env())  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def gate_line(result: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("train: challenger"))


def test_a_worse_challenger_is_kept_out_and_says_why(
    ray_session: str | None, prefect_harness: None, out: Path
) -> None:
    """The issue's bad day: one boosting round. The run completes, the champion and model/ stay as
    they were, and the line, the history and the Prefect artifact say why."""
    first = champion(out)
    files = {p.name: p.read_bytes() for p in (out / "model").iterdir()}
    result = train(out, "--rounds", "1")
    line = gate_line(result)
    new = registry.versions(Layout(str(out)))[-1]
    assert f"challenger stock-volume:{new} MAE" in line and f"vs champion stock-volume:{first} MAE" in line
    assert "on the same" in line and line.endswith("champion kept: it does not beat the baseline " +
                                                   line.rsplit("baseline ", 1)[1])  # fmt: skip
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == files, "model/ changed"
    assert not ERROR_LOOKING.search(result.stdout + result.stderr)
    last = registry.history(Layout(str(out)))[-1]
    assert (last.why, last.version, last.before, last.after) == ("gate", new, first, first)
    metrics = json.loads((out / "models" / new / "metrics.json").read_text())
    assert metrics["gate"]["promote"] is False and metrics["gate"]["champion"] == first
    assert metrics["gate"]["champion_metrics"]["mae"] < metrics["time_split"]["model"]["mae"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest_gate_artifact() -> Any:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-gate"])),
                sort="CREATED_DESC",
            )
            return found[0]

    import asyncio

    artifact = asyncio.run(latest_gate_artifact())
    assert artifact.description == line
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [row["model"] for row in table] == ["challenger", "champion", "baseline"]
    assert table[0]["decision"] == "kept out" and table[0]["version"] == f"stock-volume:{new}"


def test_promote_rollback_and_a_better_challenger(
    ray_session: str | None, prefect_harness: None, out: Path
) -> None:
    """Promote the bad model by hand; a retrained good model then beats it and is promoted by the
    gate; rollback goes back through both, recorded in the history."""
    layout = Layout(str(out))
    good, bad = registry.versions(layout)[:2]
    assert champion(out) == good
    promoted = stockpipe("promote", f"stock-volume:{bad}", "--out", str(out))
    assert promoted.returncode == 0 and champion(out) == bad, promoted.stderr
    assert f"champion of {out}: stock-volume:{bad} (was stock-volume:{good})" in promoted.stdout

    # The champion's settings, and two backtest folds (test_the_backtest_... reads them): a model
    # far better than the 1-round champion.
    result = train(out, "--backtest-folds", "2")
    better = registry.versions(layout)[-1]
    assert "promoted: it is not worse than the champion by more than 0%" in gate_line(result)
    assert champion(out) == better

    for expected in (bad, good):
        back = stockpipe("rollback", "--out", str(out))
        assert back.returncode == 0 and champion(out) == expected, back.stderr
    refused = stockpipe("rollback", "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "nothing to roll back to" in refused.stderr and "Traceback" not in refused.stderr
    assert [c.why for c in registry.history(layout)][-5:] == [
        "gate",
        "promote",
        "gate",
        "rollback",
        "rollback",
    ]
    listed = stockpipe("models", "--out", str(out))
    assert listed.returncode == 0
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line[:8].isdigit()}
    assert set(rows) == set(registry.versions(layout)) and rows[good].endswith("champion")
    assert not leftovers(out)


def test_the_backtest_scores_walk_forward_folds(out: Path) -> None:
    """The version test_promote_rollback_... trained with two folds: the latest two full years,
    each trained on every earlier row; its rows and its baseline's MAE match stage 2's, computed
    here with pandas."""
    import pyarrow.parquet as pq

    version = registry.versions(Layout(str(out)))[2]
    metrics = json.loads((out / "models" / version / "metrics.json").read_text())
    folds = metrics["backtest"]
    assert [f["year"] for f in folds] == [2019, 2020]  # the sample ends in January 2021: no fold
    assert metrics["timing"]["backtest_seconds"] > 0
    rows = (
        pq.read_table(out / "stage2").to_pandas().dropna(subset=["vol_moving_avg", "adj_close_rolling_med"])
    )
    year = rows["Date"].str[:4].astype(int)
    for fold in folds:
        test = rows[year == fold["year"]]
        assert fold["train_rows"] == int((year < fold["year"]).sum()) and fold["test_rows"] == len(test)
        baseline = (test["Volume"] - test["vol_moving_avg"]).abs().mean()
        assert fold["baseline"]["mae"] == pytest.approx(baseline, rel=1e-9)
        assert fold["model"]["mae"] > 0
    _, card = contract.read_published(str(out / "models" / version))
    assert [f.year for f in card.backtest or []] == [2019, 2020]
    assert (out / "reports" / "backtest.png").read_bytes()[:4] == b"\x89PNG"


def test_a_tampered_version_is_refused_by_its_sha256(out: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    layout = Layout(str(copy))
    before = champion(copy)
    other = next(v for v in registry.versions(layout) if v != before)
    (copy / "models" / other / "model.bin").write_bytes(b"{}")  # not the model its card describes
    result = stockpipe("promote", other, "--out", str(copy))
    assert result.returncode == 2 and "does not match the SHA-256" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and champion(copy) == before


def test_a_promote_waits_for_the_training_that_holds_the_lock(
    ray_session: str | None, prefect_harness: None, out: Path, tmp_path: Path
) -> None:
    layout = Layout(str(out))
    target = registry.versions(layout)[1]
    command = [sys.executable, "-m", "flows.cli", "train", "--force", "--rounds", "2", "--out", str(out),
               "--ray-address", ray_address()]  # fmt: skip
    training = spawn(command, tmp_path / "train.log", session_env())
    try:
        deadline = time.monotonic() + 60
        lock = out / ".stockpipe.lock"
        while not (lock.exists() and lock.read_text(errors="replace").strip()):  # the training holds it
            assert time.monotonic() < deadline and training.poll() is None, (
                tmp_path / "train.log"
            ).read_text()
            time.sleep(0.1)
        promoted = stockpipe("promote", target, "--out", str(out))
        assert training.wait(timeout=10) == 0, "the promote finished before the training it waited for"
    finally:
        stop(training)
    assert promoted.returncode == 0, promoted.stderr
    assert (
        f"waiting for process {training.pid} on" in promoted.stderr and "is free: going on" in promoted.stderr
    )
    assert champion(out) == target and registry.history(layout)[-1].why == "promote"


WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "non_2xx": %d, "socket_errors": %d, "p99_ms": %f}\\n',
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(99) / 1000))
end
"""


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_serving_follows_a_promote_and_a_rollback_with_no_failed_request(out: Path, tmp_path: Path) -> None:
    layout = Layout(str(out))
    first = champion(out)
    other = next(v for v in registry.versions(layout) if v != first)
    port = free_port()
    env = {**os.environ, "STOCKPIPE_SERVE_FOLLOW_SECONDS": "1"}
    command = [sys.executable, "-m", "flows.cli", "serve", "--out", str(out), "--port", str(port)]
    url, server = start_server(command, port, tmp_path / "serve.log", env=env)
    script = tmp_path / "report.lua"
    script.write_text(WRK_REPORT)
    try:
        assert httpx.get(f"{url}/model").json()["version"] == first
        load = subprocess.Popen(
            [
                "wrk",
                "-t2",
                "-c8",
                "-d16s",
                "-s",
                str(script),
                f"{url}/predict?vol_moving_avg=51318&adj_close_rolling_med=216",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        swaps = {}
        for change, expected in ((("promote", other), other), (("rollback",), first)):
            started = time.monotonic()
            assert stockpipe(*change, "--out", str(out)).returncode == 0
            while httpx.get(f"{url}/model").json()["version"] != expected:
                assert time.monotonic() - started < 10, f"still serving the old model after {change}"
                time.sleep(0.1)
            swaps[change[0]] = time.monotonic() - started
            time.sleep(3)
        report = json.loads(load.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        stop(server)
    assert report["requests"] > 1000 and report["non_2xx"] == 0 and report["socket_errors"] == 0, report
    assert all(seconds < 5 for seconds in swaps.values()), swaps
    log = (tmp_path / "serve.log").read_text()
    assert f"now serving stock-volume:{other}, the champion of {out}" in log
    print(f"wrk through a promote and a rollback: {report}; swapped after {swaps}")


def test_a_built_bento_follows_the_champion_only_when_told(
    sample_run: dict[str, Any], out: Path, tmp_path: Path
) -> None:
    """The sample run's Bento serves the model it was built with; given STOCKPIPE_SERVE_FOLLOW, it
    follows an output's champion instead, and a promotion there reaches it."""
    built = sample_run["result"].package
    layout = Layout(str(out))
    port = free_port()
    env = {**os.environ, "STOCKPIPE_SERVE_FOLLOW": str(out), "STOCKPIPE_SERVE_FOLLOW_SECONDS": "1"}
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        built.bento,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url, server = start_server(command, port, tmp_path / "bento.log", env=env)
    try:
        for target in (champion(out), next(v for v in registry.versions(layout) if v != champion(out))):
            if target != champion(out):
                assert stockpipe("promote", target, "--out", str(out)).returncode == 0
            deadline = time.monotonic() + 15
            while (info := httpx.get(f"{url}/model").json())["version"] != target:
                assert time.monotonic() < deadline, (target, info["version"])
                time.sleep(0.2)
            assert info["follows"] == str(out) and info["tag"] == f"stock-volume:{target}"
    finally:
        stop(server)


@pytest.fixture
def own_copy(sample_run: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the sample run's output for one test to damage."""
    for folder in ("stage2", "model", "models"):
        shutil.copytree(sample_run["out"] / folder, tmp_path / "out" / folder)
    return tmp_path / "out"


def test_a_champion_that_cannot_be_scored_is_kept(
    ray_session: str | None, prefect_harness: None, own_copy: Path
) -> None:
    """The champion's model.bin damaged: the challenger, which beats the baseline, is not promoted
    over a champion the gate could not score; the line and the history say why, and a person
    can still promote it."""
    layout, first = Layout(str(own_copy)), champion(own_copy)
    data = Path(publish.data_dir(layout.model))
    (data / "model.bin").write_bytes((data / "model.bin").read_bytes()[:-10] + b"0123456789")
    result = train(own_copy)
    line, new = gate_line(result), registry.versions(layout)[-1]
    assert f"vs champion stock-volume:{first} not scored" in line, line
    assert "champion kept: the champion could not be scored (its files are damaged:" in line, line
    last = registry.history(layout)[-1]
    assert (last.why, last.version, last.before, last.after) == ("gate", new, first, first)
    assert registry.champion(layout).version == first  # type: ignore[union-attr]
    promoted = stockpipe("promote", new, "--out", str(own_copy))
    assert promoted.returncode == 0, promoted.stderr
    assert champion(own_copy) == new


@pytest.mark.parametrize("damaged", ["models/history.json", "champion"])
def test_a_damaged_registry_record_is_refused_in_one_line_and_left_as_it_is(
    ray_session: str | None, prefect_harness: None, own_copy: Path, damaged: str
) -> None:
    """history.json (every change of champion) or champion.json cut short: training, promote,
    rollback and models each refuse in one line with exit status 1, nothing is trained or
    published, and the file is byte for byte what it was."""
    layout = Layout(str(own_copy))
    target = (
        own_copy / damaged
        if damaged != "champion"
        else Path(publish.data_dir(layout.model)) / "champion.json"
    )
    target.write_bytes(target.read_bytes()[:25])
    before, versions = target.read_bytes(), registry.versions(layout)
    commands = [
        ["train", "--force", "--out", str(own_copy), "--ray-address", ray_address()],
        ["promote", versions[0], "--out", str(own_copy)],
        ["rollback", "--out", str(own_copy)],
        ["models", "--out", str(own_copy)],
    ]
    for command in commands:
        result = stockpipe(*command, env=session_env())
        lines = [line for line in result.stderr.splitlines() if line.startswith("stockpipe:")]
        assert result.returncode == 1, (command, result.stdout[-2000:], result.stderr[-2000:])
        assert len(lines) == 1 and f"{target} cannot be read (" in lines[0], (command, result.stderr[-2000:])
        assert (
            "it is left as it is" in lines[0]
            and "repair it, or move it aside to start a new record" in lines[0]
        )
        assert "Traceback" not in result.stderr and target.read_bytes() == before, command
        assert registry.versions(layout) == versions and not leftovers(own_copy), command
