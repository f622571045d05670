"""The workers' results merged into the typed metrics, the training log and the model's metadata."""

from __future__ import annotations

import hashlib
import platform
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import xgboost as xgb

from compute import model as contract
from compute import storage
from compute.metrics import ErrorSums, Metrics, merge_all
from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN
from compute.settings import Settings
from compute.stages.train.results import Engine, RandomSplit, TimeSplit, Timing, TrainMetrics, TrainRows


def summarise(
    results: list[dict[str, Any]],
    *,
    engine: Engine,
    params: dict[str, Any],
    settings: Settings,
    timing: Timing,
    fingerprint: str,
) -> TrainMetrics:
    """One TrainMetrics from every worker's rank-N.json (each read its own stage-2 parts)."""

    def merged(split: str, which: str) -> Metrics:
        return Metrics(**merge_all([ErrorSums(**r[split][which]) for r in results if r[split]]).metrics())

    def span(key: str) -> list[str] | None:
        dates = [r[key] for r in results if r[key]]
        return [min(d[0] for d in dates), max(d[1] for d in dates)] if dates else None

    model, baseline = merged("time", "model"), merged("time", "baseline")
    random_split = None
    if all(r["random"] for r in results):
        random_split = RandomSplit(
            test_fraction=settings.holdout_fraction,
            train_rows=sum(r["random"]["train_rows"] for r in results),
            test_rows=sum(r["random"]["test_rows"] for r in results),
            model=merged("random", "model"),
            baseline=merged("random", "baseline"),
        )
    return TrainMetrics(
        time_split=TimeSplit(
            cutoff=results[0]["cutoff"],  # the same on every worker
            train_dates=span("train_dates"),
            test_dates=span("test_dates"),
            train_rows=sum(r["time"]["train_rows"] for r in results),
            test_rows=sum(r["time"]["test_rows"] for r in results),
            model=model,
            baseline=baseline,
            mae_improvement_pct=100.0 * (1 - model.mae / baseline.mae) if baseline.mae else None,
        ),
        rows=TrainRows(
            stage2=sum(r["read"] for r in results),
            dropped_null_features=sum(r["read"] - r["rows"] for r in results),
            used=sum(r["rows"] for r in results),
        ),
        engine=engine,
        params=params,
        rounds=settings.train_rounds,
        random_split=random_split,
        timing=timing,
        fingerprint=fingerprint,
    )


def training_log(history: dict[str, dict[str, list[float]]]) -> str:
    """One line per boosting round: the train and validation loss."""
    lines = []
    for metric in history["train"]:
        rounds = zip(history["train"][metric], history["validation"][metric], strict=True)
        for i, (train, validation) in enumerate(rounds):
            lines.append(f"round={i} train-{metric}={train:.8g} validation-{metric}={validation:.8g}")
    return "\n".join(lines) + "\n"


def model_metadata(metrics: TrainMetrics, stage2_parts: list[str]) -> dict[str, Any]:
    """model.json: what a reader of the model needs to use it and to know where it came from
    (compute.model.write adds model.bin's SHA-256)."""
    return {
        "features": list(FEATURE_COLUMNS),
        "target": TARGET_COLUMN,
        "target_transform": contract.TARGET_TRANSFORM,
        "objective": metrics.params["objective"],
        "training_window": metrics.time_split.train_dates,
        "holdout_cutoff": metrics.time_split.cutoff,
        "data_hash": data_hash(stage2_parts),
        "metrics": {
            "time_split": metrics.time_split.model.model_dump(),
            "baseline": metrics.time_split.baseline.model_dump(),
        },
        "versions": {
            "xgboost": xgb.__version__,
            "ray": ray.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def data_hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(storage.basename(part).encode())
        fs, path = storage.resolve(part)
        with fs.open_input_stream(path) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
