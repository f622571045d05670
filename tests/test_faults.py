"""Faults injected for real: a Ray worker process dies mid-stage, a Prefect task fails once; and
re-runs give byte-identical outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from compute import ingest, stages
from compute.settings import Settings
from compute.storage import parquet_parts
from tests.conftest import SAMPLE


def ingest_batch_dying_once(*args: Any) -> Any:
    """ingest_batch, except that the worker running part 1 dies (os._exit) the first time."""
    part, stage1_dir = args[3], Path(args[4])
    marker = stage1_dir.parent.parent / "worker-killed"
    if part == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # no exception, no cleanup: the process is gone, as with the OOM killer
    return ingest.ingest_batch(*args)


def stage_files(out: Path, stage: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in parquet_parts(out / stage)}


def test_killed_ray_worker_is_retried_and_outputs_are_identical(
    ray_session: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calm = stages.run_ingest(str(SAMPLE), Settings(out=tmp_path / "calm" / "out"))
    monkeypatch.setattr(stages, "ingest_batch", ingest_batch_dying_once)
    faulty = stages.run_ingest(str(SAMPLE), Settings(out=tmp_path / "faulty" / "out"))

    assert (tmp_path / "faulty" / "worker-killed").exists(), "the fault was not injected"
    assert stage_files(tmp_path / "faulty" / "out", "stage1") == stage_files(
        tmp_path / "calm" / "out", "stage1"
    )
    assert faulty["rows"] == calm["rows"] and faulty["quarantined_by_reason"] == calm["quarantined_by_reason"]


def test_reruns_give_byte_identical_stage_files(ray_session: str | None, tmp_path: Path) -> None:
    for run in ("first", "second"):
        settings = Settings(out=tmp_path / run)
        stages.run_ingest(str(SAMPLE), settings)
        stages.run_features(settings)
    for stage in ("stage1", "stage2", "quarantine"):
        first, second = stage_files(tmp_path / "first", stage), stage_files(tmp_path / "second", stage)
        assert first and first == second, stage
    assert pq.read_table(tmp_path / "first" / "stage2").num_rows > 0


def test_a_task_that_fails_once_is_retried_by_prefect(
    ray_session: str | None, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import features_flow

    stages.run_ingest(str(SAMPLE), Settings(out=tmp_path))
    real, calls = stages.run_features, []

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("transient: the object store hiccupped")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "run_features", flaky)
    summary = features_flow(out=str(tmp_path))
    assert len(calls) == 2
    assert summary["rows"] == pq.read_table(tmp_path / "stage1").num_rows
