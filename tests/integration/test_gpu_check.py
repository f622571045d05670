"""bench/gpu.py, the CUDA path's check for a GPU host, with no Prefect. On this machine (no GPU)
its CPU half must pass with the same model as the pipeline's and as the plain script's, and CUDA
must be refused in one line rather than waited for: the check fails (exit 1). It runs here in
process on the session's Ray; on a host each run is a process of its own (bench/train.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def test_the_gpu_check_trains_on_the_cpu_as_asked_and_refuses_cuda_without_a_gpu(
    ray_session: str | None, sample_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from bench import gpu

    found = tmp_path / "gpu.json"
    assert gpu.main(["--devices", "cuda,cpu", "--in-process", "--json", str(found)]) == 1
    said = capsys.readouterr()
    assert ray.is_initialized(), "the check stopped a Ray it did not start"
    assert "cuda: refused: train device cuda, but the Ray cluster has no GPU" in said.out
    assert "gpu check: FAILED" in said.err and "Traceback" not in said.err
    runs = json.loads(found.read_text())
    (cpu,) = [r for r in runs if r["what"].startswith("stage cpu")]
    (plain,) = [r for r in runs if r["what"] == "plain cpu"]
    assert cpu["asked"] == cpu["xgboost_device"] == "cpu" and cpu["workers"] == 1
    assert cpu["layout"] == "single" and cpu["data_on"] == "host"
    assert " cpu: XGBoost used cpu (as asked)" in said.out
    assert 0 < cpu["boosting_s"] <= cpu["fit_s"] <= cpu["total_s"]
    assert set(cpu["phases"]) >= {"start", "read", "dmatrix", "boosting", "predict", "champion", "stop"}
    # The same rows, parameters and seed as the pipeline's own training: the same holdout; and the
    # plain script, written apart, trains the same model.
    pipeline = json.loads((sample_run["out"] / "model" / "metrics.json").read_text())["time_split"]
    assert (cpu["train_rows"], cpu["test_rows"]) == (pipeline["train_rows"], pipeline["test_rows"])
    assert cpu["mae"] == pytest.approx(pipeline["model"]["mae"], rel=1e-6)
    assert plain["mae"] == pytest.approx(cpu["mae"], rel=1e-3)
