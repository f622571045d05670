"""The training stage on the embedded sample, through the flow, on a real local Ray."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from compute import model as contract
from compute.metrics import ErrorSums
from compute.schema import FEATURE_COLUMNS
from compute.settings import Settings
from tests.conftest import leftovers


def test_training_writes_model_metadata_metrics_log_and_plots(sample_run: dict[str, Any]) -> None:
    out: Path = sample_run["out"]
    for path in ["model/model.bin", "model/model.json", "model/metrics.json", "logs/training.log",
                 "reports/learning_curve.png", "reports/predicted_vs_actual.png"]:  # fmt: skip
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
    assert (out / "model" / "model.bin").read_bytes()[:1] == b"{"  # UBJSON object, not a pickle
    assert not list((out / "model").glob("*.pkl")) and not leftovers(out)  # no scratch space left


def test_every_boosting_round_is_logged(sample_run: dict[str, Any]) -> None:
    lines = (sample_run["out"] / "logs" / "training.log").read_text().splitlines()
    rounds = Settings().train_rounds
    assert len(lines) == rounds
    assert [line.split()[0] for line in lines] == [f"round={i}" for i in range(rounds)]
    assert all("train-mphe=" in line and "validation-mphe=" in line for line in lines)


def test_metrics_are_complete_and_consistent(sample_run: dict[str, Any]) -> None:
    metrics = json.loads((sample_run["out"] / "model" / "metrics.json").read_text())
    split = metrics["time_split"]
    assert split["train_dates"][1] < split["cutoff"] <= split["test_dates"][0]
    rows = metrics["rows"]
    assert rows["used"] + rows["dropped_null_features"] == rows["stage2"]
    assert split["train_rows"] + split["test_rows"] == rows["used"]
    assert 0.15 < split["test_rows"] / rows["used"] < 0.25
    for block in (split["model"], split["baseline"]):
        assert set(block) == {"mae", "rmse", "r2", "mape_pct"} and all(np.isfinite(list(block.values())))
    assert "random_split" not in metrics  # one fit unless the comparison is asked for
    timing = metrics["timing"]
    assert 0 < timing["start_seconds"] < timing["fit_seconds"]
    assert 0 <= timing["stop_seconds"] < timing["fit_seconds"]
    assert set(timing["phases"]) == {"read", "dmatrix", "boosting", "predict", "champion", "folds", "write"}
    assert sum(timing["phases"].values()) < timing["fit_seconds"]
    # One node, no GPU: one Ray task holding the node's two CPUs, not Ray Train's distributed start.
    assert metrics["engine"] == {
        "trainer": "ray task",
        "layout": "single",
        "why": "one node: a distributed start would cost more than it saves",
        "workers": 1,
        "resources_per_worker": {"CPU": 2.0},
        "device": "cpu",
        "xgboost_device": "cpu",
        "data_on": "host",
    }
    assert sample_run["result"].train.to_json() == metrics  # metrics.json is the typed result


def test_saved_model_reproduces_the_evaluated_predictions(sample_run: dict[str, Any]) -> None:
    """Reloading model.bin and scoring the holdout again gives exactly the metrics of training."""
    out: Path = sample_run["out"]
    booster, card = contract.load(out / "model")
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert card.features == list(FEATURE_COLUMNS)
    assert card.target_transform == contract.TARGET_TRANSFORM
    assert card.holdout_cutoff == metrics["time_split"]["cutoff"]
    # model.json records model.bin's SHA-256, so anyone can check the two belong together.
    assert card.model_sha256 == hashlib.sha256((out / "model" / "model.bin").read_bytes()).hexdigest()

    table = pq.read_table(out / "stage2").to_pandas().dropna(subset=list(FEATURE_COLUMNS))
    test = table[table["Date"] >= metrics["time_split"]["cutoff"]]
    features = contract.feature_matrix(
        test["vol_moving_avg"].to_numpy(), test["adj_close_rolling_med"].to_numpy()
    )
    predicted = contract.predict_volume(booster, card, features)
    again = ErrorSums.of(test["Volume"].to_numpy(), predicted).metrics()
    assert again == pytest.approx(metrics["time_split"]["model"], rel=1e-9)
    assert (predicted >= 0).all()


def test_ray_train_workers_make_the_same_model_on_the_same_rows(
    sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """The distributed layout, forced on the sample's stage 2: two Ray Train workers, each with its
    share of the parts, agree on the cutoff and train one model with XGBoost's collective. The
    merged holdout is the same rows, and the model's MAE is within 1% of the single task's."""
    from compute.stage import run
    from compute.stages import Train

    (tmp_path / "stage2").symlink_to(sample_run["out"] / "stage2")
    single = json.loads((sample_run["out"] / "model" / "metrics.json").read_text())
    settings = Settings(out=str(tmp_path), train_layout="distributed", force=True)
    distributed = run(Train(settings, progress=lambda _line: None))
    engine = distributed.engine
    assert (engine.trainer, engine.layout, engine.workers) == (
        "ray.train.xgboost.XGBoostTrainer",
        "distributed",
        2,
    )
    assert (engine.why, engine.resources_per_worker) == ("train_layout is distributed", {"CPU": 1.0})
    split = distributed.time_split
    assert (split.cutoff, split.train_rows, split.test_rows) == tuple(
        single["time_split"][k] for k in ("cutoff", "train_rows", "test_rows")
    )
    assert split.baseline.mae == pytest.approx(single["time_split"]["baseline"]["mae"], rel=1e-12)
    assert split.model.mae == pytest.approx(single["time_split"]["model"]["mae"], rel=0.01)
    assert distributed.timing.start_seconds > 0 and not leftovers(tmp_path)
