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
    assert 0 < timing["ray_train_start_seconds"] < timing["ray_train_fit_seconds"]
    assert 0 <= timing["ray_train_stop_seconds"] < timing["ray_train_fit_seconds"]
    assert metrics["engine"] == {
        "trainer": "ray.train.xgboost.XGBoostTrainer",
        "workers": 2,
        "device": "cpu",
        "xgboost_device": "cpu",
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
