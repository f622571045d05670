"""The model's contract, shared by training, evaluation and serving so they cannot drift:
which features in which order, and how the booster's output becomes a trading volume.

The booster predicts the ratio Volume / vol_moving_avg; the volume is that ratio times
vol_moving_avg, clipped at zero. A tree predicts a piecewise-constant value, and Volume spans nine
orders of magnitude, so a tree on raw Volume is poor (R² 0.10 on the 2021 vintage) while a ratio
around 1 is easy to model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from compute.layout import MODEL_FILE
from compute.schema import FEATURE_COLUMNS
from compute.storage import join, read_bytes, write_bytes, write_json

TARGET_TRANSFORM = "ratio_to_vol_moving_avg"
METADATA_FILE = "model.json"
RATIO_FLOOR = 1.0  # vol_moving_avg below one share a day is treated as one


def to_target(volume: np.ndarray, vol_moving_avg: np.ndarray) -> np.ndarray:
    return np.asarray(volume, dtype=np.float64) / np.maximum(vol_moving_avg, RATIO_FLOOR)


def to_volume(raw: np.ndarray, vol_moving_avg: np.ndarray, transform: str = TARGET_TRANSFORM) -> np.ndarray:
    """Booster output -> predicted volume (float, never negative)."""
    if transform != TARGET_TRANSFORM:
        raise ValueError(f"unknown target transform {transform!r}")
    return np.maximum(raw, 0.0) * np.maximum(vol_moving_avg, RATIO_FLOOR)


def feature_matrix(vol_moving_avg: np.ndarray, adj_close_rolling_med: np.ndarray) -> np.ndarray:
    return np.column_stack([vol_moving_avg, adj_close_rolling_med]).astype(np.float64)


def predict_volume(booster: xgb.Booster, metadata: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Predicted volumes for an (n, 2) array of [vol_moving_avg, adj_close_rolling_med]."""
    if metadata["features"] != list(FEATURE_COLUMNS):
        raise ValueError(f"model expects features {metadata['features']}, not {list(FEATURE_COLUMNS)}")
    raw = booster.inplace_predict(features, validate_features=False)
    return to_volume(raw, features[:, 0], metadata["target_transform"])


def save(booster: xgb.Booster, metadata: dict[str, Any], folder: str | Path) -> None:
    write_bytes(bytes(booster.save_raw(raw_format="ubj")), join(str(folder), MODEL_FILE))
    write_json(metadata, join(str(folder), METADATA_FILE))


def load(folder: str | Path) -> tuple[xgb.Booster, dict[str, Any]]:
    """From a local folder or a pyarrow filesystem URI."""
    booster = xgb.Booster()
    booster.load_model(bytearray(read_bytes(join(str(folder), MODEL_FILE))))
    metadata = json.loads(read_bytes(join(str(folder), METADATA_FILE)))
    return booster, metadata
