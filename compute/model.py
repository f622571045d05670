"""The model's contract, shared by training, evaluation and serving so they cannot drift:
which features in which order, and how the booster's output becomes a trading volume.

The booster predicts the ratio Volume / vol_moving_avg; the volume is that ratio times
vol_moving_avg, clipped at zero. A tree predicts a piecewise-constant value, and Volume spans nine
orders of magnitude, so a tree on raw Volume is poor (R² 0.10 on the 2021 vintage) while a ratio
around 1 is easy to model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from compute import publish
from compute.layout import METADATA_FILE, MODEL_FILE
from compute.schema import FEATURE_COLUMNS
from compute.storage import join, read_bytes, write_bytes, write_json

MODEL_NAME = "stock-volume"  # in the BentoML model store
TARGET_TRANSFORM = "ratio_to_vol_moving_avg"
RATIO_FLOOR = 1.0  # vol_moving_avg below one share a day is treated as one


class ModelNotWhole(ValueError):
    """model.bin and model.json do not belong together (or one is missing)."""


def to_target(volume: np.ndarray, vol_moving_avg: np.ndarray) -> np.ndarray:
    return np.asarray(volume, dtype=np.float64) / np.maximum(vol_moving_avg, RATIO_FLOOR)


def to_volume(raw: np.ndarray, vol_moving_avg: np.ndarray, transform: str = TARGET_TRANSFORM) -> np.ndarray:
    """Booster output -> predicted volume (float, never negative)."""
    if transform != TARGET_TRANSFORM:
        raise ValueError(f"unknown target transform {transform!r}")
    return np.maximum(raw, 0.0) * np.maximum(vol_moving_avg, RATIO_FLOOR)


def feature_matrix(
    vol_moving_avg: np.ndarray | float, adj_close_rolling_med: np.ndarray | float
) -> np.ndarray:
    """The model's input: one row per pair, in FEATURE_COLUMNS' order (two numbers: one row)."""
    return np.column_stack([vol_moving_avg, adj_close_rolling_med]).astype(np.float64)


def predict_volume(booster: xgb.Booster, metadata: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Predicted volumes for an (n, 2) array of [vol_moving_avg, adj_close_rolling_med]."""
    if metadata["features"] != list(FEATURE_COLUMNS):
        raise ValueError(f"model expects features {metadata['features']}, not {list(FEATURE_COLUMNS)}")
    raw = booster.inplace_predict(features, validate_features=False)
    return to_volume(raw, features[:, 0], metadata["target_transform"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(folder: str | Path, model: bytes, metadata: dict[str, Any]) -> None:
    """model.bin, and model.json with model.bin's SHA-256 in it."""
    write_bytes(model, join(str(folder), MODEL_FILE))
    write_json({**metadata, "model_sha256": sha256(model)}, join(str(folder), METADATA_FILE))


def read(folder: str | Path) -> tuple[bytes, dict[str, Any]]:
    """model.bin and model.json from a folder (local or a pyarrow URI), checked to belong together."""
    try:
        metadata = json.loads(read_bytes(join(str(folder), METADATA_FILE)))
        model = read_bytes(join(str(folder), MODEL_FILE))
    except FileNotFoundError as exc:
        raise ModelNotWhole(f"no {MODEL_FILE} and {METADATA_FILE} in {folder}: {exc}") from None
    recorded = metadata.get("model_sha256")  # absent only in models trained before it was recorded
    if recorded is not None and recorded != sha256(model):
        raise ModelNotWhole(f"{folder}/{MODEL_FILE} does not match the SHA-256 in {METADATA_FILE}")
    return model, metadata


def read_published(model_dir: str, attempts: int = 5) -> tuple[bytes, dict[str, Any]]:
    """The published model (compute/publish.py). A new model published while this reads shows as a
    mismatch or a missing file; reading again then finds the new model whole."""
    for attempt in range(attempts):
        try:
            return read(publish.data_dir(model_dir))
        except ModelNotWhole:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def booster(model: bytes) -> xgb.Booster:
    loaded = xgb.Booster()
    loaded.load_model(bytearray(model))
    return loaded


def load(folder: str | Path) -> tuple[xgb.Booster, dict[str, Any]]:
    """The booster and its metadata from a folder (local or a pyarrow URI), checked whole."""
    model, metadata = read(folder)
    return booster(model), metadata
