"""bench/gpu.py, the CUDA path's check for a GPU host, run here as there: its own local Ray, no
Prefect. On this machine (no GPU) its CPU half must pass with the same model as the pipeline's,
and CUDA must be refused in one line rather than waited for: the check fails (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compute.settings import PROJECT_ROOT
from harness.procs import free_port


def test_the_gpu_check_trains_on_the_cpu_as_asked_and_refuses_cuda_without_a_gpu(
    sample_run: dict[str, Any], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_ADDRESS"))}
    env.update(STOCKPIPE_DASHBOARD_PORT=str(free_port()), RAY_USAGE_STATS_ENABLED="0")
    found = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--devices", "cuda,cpu", "--json", str(found)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cuda: refused: train device cuda, but the Ray cluster has no GPU" in done.stdout
    assert "gpu check: FAILED" in done.stderr and "Traceback" not in done.stderr
    (cpu,) = json.loads(found.read_text())
    assert cpu["asked"] == cpu["xgboost_device"] == "cpu" and cpu["workers"] >= 1
    assert " cpu: XGBoost used cpu (as asked)" in done.stdout
    assert cpu["boosting_s"] > 0 and cpu["fit_s"] >= cpu["boosting_s"]
    # The same rows, parameters and seed as the pipeline's own training: the same holdout.
    pipeline = json.loads((sample_run["out"] / "model" / "metrics.json").read_text())["time_split"]
    assert (cpu["train_rows"], cpu["test_rows"]) == (pipeline["train_rows"], pipeline["test_rows"])
    assert cpu["mae"] == pytest.approx(pipeline["model"]["mae"], rel=1e-6)
