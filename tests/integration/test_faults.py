"""Faults injected for real: a Ray worker process dies mid-stage, a Prefect task fails once, the
whole run is killed; and re-runs give byte-identical outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from compute import model as contract
from compute import registry
from compute.layout import Layout
from compute.publish import parquet_parts
from compute.settings import Settings
from compute.stage import run
from compute.stages import Features, Ingest, Train
from compute.stages.ingest import parse
from harness.procs import spawn, stop
from tests.conftest import SAMPLE, leftovers


def ingest_batch_dying_once(*args: Any) -> Any:
    """ingest_batch, except that the worker running part 1 dies (os._exit) the first time."""
    part, stage1_dir = args[3], Path(args[4])
    marker = stage1_dir.parent.parent / "worker-killed"
    if part == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # no exception, no cleanup: the process is gone, as with the OOM killer
    return parse.ingest_batch(*args)


def stage_files(out: Path, stage: str) -> dict[str, bytes]:
    return {Path(p).name: Path(p).read_bytes() for p in parquet_parts(out / stage)}


def test_killed_ray_worker_is_retried_and_outputs_are_identical(
    ray_session: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calm = run(Ingest(Settings(out=tmp_path / "calm" / "out", source=str(SAMPLE))))
    monkeypatch.setattr("compute.stages.ingest.stage.ingest_batch", ingest_batch_dying_once)
    faulty = run(Ingest(Settings(out=tmp_path / "faulty" / "out", source=str(SAMPLE))))

    assert (tmp_path / "faulty" / "worker-killed").exists(), "the fault was not injected"
    assert stage_files(tmp_path / "faulty" / "out", "stage1") == stage_files(
        tmp_path / "calm" / "out", "stage1"
    )
    assert faulty.rows == calm.rows and faulty.quarantined_by_reason == calm.quarantined_by_reason


def test_reruns_give_byte_identical_stage_files(ray_session: str | None, tmp_path: Path) -> None:
    for attempt in ("first", "second"):
        settings = Settings(out=tmp_path / attempt, source=str(SAMPLE))
        run(Ingest(settings))
        run(Features(settings))
    for stage in ("stage1", "stage2", "quarantine"):
        first, second = stage_files(tmp_path / "first", stage), stage_files(tmp_path / "second", stage)
        assert first and first == second, stage
    assert pq.read_table(tmp_path / "first" / "stage2").num_rows > 0


def test_a_task_that_fails_once_is_retried_by_prefect(
    ray_session: str | None, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import features_flow

    run(Ingest(Settings(out=tmp_path, source=str(SAMPLE))))
    real, calls = run, []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("transient: the object store hiccupped")
        return real(*args, **kwargs)

    monkeypatch.setattr("compute.stage.run", flaky)
    summary = features_flow(out=str(tmp_path))
    assert len(calls) == 2
    assert summary.rows == pq.read_table(tmp_path / "stage1").num_rows


def test_a_bug_or_bad_input_is_not_retried(
    ray_session: str | None, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that would fail the same way again (here, a stage's own error) fails the task once."""
    from flows.pipeline import features_flow

    calls = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise ValueError("row counts do not add up")  # a bug: retrying cannot help

    monkeypatch.setattr("compute.stage.run", broken)
    state = features_flow(out=str(tmp_path), return_state=True)
    assert state.is_failed() and len(calls) == 1
    # A missing stage 1 is bad input: one attempt, and the error says what to do.
    monkeypatch.undo()
    state = features_flow(out=str(tmp_path / "empty"), return_state=True)
    assert state.is_failed() and "run `stockpipe ingest` first" in str(state.message)


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    files = [p for stage in ("stage1", "stage2", "quarantine") for p in sorted((out / stage).glob("*"))]
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_unchanged_rerun_reuses_stages_and_a_changed_file_rebuilds(
    ray_session: str | None, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(SAMPLE, source)
    settings = Settings(out=tmp_path / "out", source=str(source))
    first = run(Ingest(settings))
    run(Features(settings))
    before = snapshot(tmp_path / "out")

    again = run(Ingest(settings))
    assert again.reused and again.rows == first.rows
    assert run(Features(settings)).reused
    assert snapshot(tmp_path / "out") == before  # not one file rewritten

    # One changed, one removed and one new file: only the parts holding them are rebuilt, the other
    # parts are carried over untouched, and the result is row-identical to a full rebuild.
    parts_before = {p.name: p.stat().st_ino for p in (tmp_path / "out" / "stage2").glob("part-*")}
    atac = source / "stocks" / "ATAC.csv"
    atac.write_text(atac.read_text() + "2021-01-28,1,1,1,1,1,100\n")
    (source / "etfs" / "ARKQ.csv").unlink()
    shutil.copy(source / "stocks" / "ACC.csv", source / "stocks" / "ACCX.csv")
    changed = run(Ingest(settings))
    features = run(Features(settings))
    assert not changed.reused and not features.reused
    inc = changed.incremental
    assert inc.parts_carried_over >= 4 and inc.files_ingested <= 20, inc  # of 39 files
    assert features.incremental.parts_carried_over == inc.parts_carried_over
    parts_after = {p.name: p.stat().st_ino for p in (tmp_path / "out" / "stage2").glob("part-*")}
    same = {name for name in parts_before if parts_after.get(name) == parts_before[name]}
    assert len(same) == inc.parts_carried_over, "carried-over parts must be the same files, not rewritten"

    full = Settings(out=tmp_path / "full", source=str(source), force=True)
    rebuilt = run(Ingest(full))
    run(Features(full))
    assert rebuilt.rows == changed.rows and rebuilt.files == changed.files
    assert "ARKQ" not in changed.symbols_without_metadata + [r.symbol for r in changed.per_file]
    for stage, keys in [("stage1", ("Symbol", "Date")), ("stage2", ("Symbol", "Date")),
                        ("quarantine", ("source_file", "line"))]:  # fmt: skip
        order = [(k, "ascending") for k in keys]
        ours = pq.read_table(tmp_path / "out" / stage).sort_by(order)
        theirs = pq.read_table(tmp_path / "full" / stage).sort_by(order)
        assert ours.num_rows > 0 and ours.equals(theirs), stage
    symbols = set(pq.read_table(tmp_path / "out" / "stage2").column("Symbol").to_pylist())
    assert "ACCX" in symbols and "ARKQ" not in symbols

    forced = run(Ingest(Settings(out=tmp_path / "out", source=str(source), force=True)))
    assert not forced.reused and forced.incremental.parts_carried_over == 0


def test_unchanged_training_reuses_the_model(sample_run: dict[str, Any], tmp_path: Path) -> None:
    for folder in ("stage2", "model", "models"):
        shutil.copytree(sample_run["out"] / folder, tmp_path / folder)
    metrics = run(Train(Settings(out=tmp_path)))
    assert metrics.reused
    assert metrics.time_split == sample_run["result"].train.time_split
    changed = Settings(out=tmp_path, train_rounds=5, train_compare_random_split=True)
    retrained = run(Train(changed))
    assert not retrained.reused and retrained.rounds == 5
    # The random-split comparison, asked for: a second model on the same workers, for the report.
    comparison = retrained.random_split
    assert comparison is not None and comparison.train_rows + comparison.test_rows == retrained.rows.used
    assert all(np.isfinite(list(comparison.model.model_dump().values())))


def _run_until(command: list[str], env: dict[str, str], ready: Callable[[], bool], log: Path) -> bool:
    """Start `command` in its own process group; SIGKILL the whole group as soon as ready() holds.
    Returns False if the command finished before that."""
    process = spawn(command, log, env)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return True
        time.sleep(0.02)
    stop(process)
    return False


def test_a_killed_run_restarts_cleanly_and_reuses_finished_stages(
    ray_session: str | None, prefect_harness: None, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """The whole `stockpipe run` is SIGKILLed (no cleanup runs) mid-ingest, then mid-training; the
    third run finishes, reuses what the second finished, and removes what the kills left."""
    import ray
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    # The runs join this session's Ray cluster and Prefect server, as a deployment run would.
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [sys.executable, "-m", "flows.cli", "run", "--source", str(SAMPLE), "--out", str(out),
               "--ray-address", ray.get_runtime_context().gcs_address]  # fmt: skip

    def staging() -> bool:
        return any(out.glob(".stage1.*.staging/part-*.parquet"))

    def training() -> bool:  # the workers' scratch folder exists from the fit's start to its end
        return any(out.glob("models/.*.staging/_work"))

    assert _run_until(command, env, staging, tmp_path / "1.log"), "killed too late: ingest had finished"
    assert not (out / "stage1").exists() and any(out.glob(".stage1.*.staging"))
    assert _run_until(command, env, training, tmp_path / "2.log"), "killed too late: training had finished"
    assert (out / "stage2" / "_manifest.json").exists() and not (out / "model").exists()

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    assert "reused: ingest, features" in finished.stdout
    assert not leftovers(out), "a killed run's staging or scratch folders were left behind"
    for stage in ("stage1", "stage2", "quarantine"):
        assert stage_files(out, stage) == stage_files(sample_run["out"], stage), stage
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["rows"] == sample_run["result"].train.rows.model_dump()


def test_a_training_killed_at_any_moment_leaves_the_old_model_or_the_new(
    ray_session: str | None, prefect_harness: None, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """`stockpipe train` SIGKILLed while its workers fit and just after the new version is
    published: each time the champion (model/) is whole (model.json's SHA-256 matches model.bin;
    metrics.json and champion.json name the same version) and every published version is whole,
    never a mix. A reader that keeps loading the champion while a training publishes a
    new version and promotes it never sees a mix either."""
    import ray
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    for folder in ("stage2", "model", "models"):
        shutil.copytree(sample_run["out"] / folder, out / folder)
    layout = Layout(str(out))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [sys.executable, "-m", "flows.cli", "train", "--force", "--out", str(out),
               "--ray-address", ray.get_runtime_context().gcs_address]  # fmt: skip

    def published() -> tuple[bytes, contract.ModelCard, dict[str, Any]]:
        """The champion as a reader finds it, checked whole."""
        model, card = contract.read(out / "model")
        metrics = json.loads((out / "model" / "metrics.json").read_text())
        champion = json.loads((out / "model" / "champion.json").read_text())
        assert card.version == metrics["version"] == champion["version"]
        return model, card, metrics

    def versions_whole() -> list[str]:
        for version in registry.versions(layout):
            _, card = contract.read_published(layout.version(version))
            assert card.version == version
        return registry.versions(layout)

    # (The moment between staging and publishing lasts milliseconds; test_publish.py kills a
    # publisher at random moments in it.)
    moments = {
        "the workers are fitting": lambda: any(out.glob("models/.*.staging/_work")),
        "the new model is published": lambda: len(registry.versions(layout)) > len(before),
    }
    killed = []
    for rounds, (moment, ready) in enumerate(moments.items(), start=5):
        model_before, _, metrics_before = published()
        before = versions_whole()
        if _run_until([*command, "--rounds", str(rounds)], env, ready, tmp_path / f"{rounds}.log"):
            killed.append(moment)
        model, _, metrics = published()
        # A 5-7 round model does not beat the baseline: the champion stays, whole, whatever the moment.
        assert model == model_before and metrics == metrics_before, moment
        after = versions_whole()
        assert after == before or (len(after) == len(before) + 1 and after[:-1] == before), moment
    assert set(killed) == set(moments), killed

    stop_reading = threading.Event()
    seen: list[int] = []

    def read_while_training() -> None:
        while not stop_reading.is_set():
            _, card = contract.read_published(str(out / "model"))
            seen.append(card.metrics.time_split.mae > 0)

    reader = threading.Thread(target=read_while_training)
    reader.start()
    try:
        # The champion's own settings again: the same model, which ties the champion and is promoted.
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        stop_reading.set()
        reader.join()
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    _, card, metrics = published()
    assert (
        metrics["rounds"] == 40
        and card.version == registry.versions(layout)[-1]
        and "promoted" in finished.stdout
    )
    assert all(seen) and len(seen) > 10
    assert not leftovers(out), "leftovers remain"
