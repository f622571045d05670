"""The model's contract, shared by training, evaluation and serving so they cannot drift:
which features in which order, how the booster's output becomes a trading volume, and the model
card (model.json) that travels with every model.bin.

The booster predicts the ratio Volume / vol_moving_avg; the volume is that ratio times
vol_moving_avg, clipped at zero. A tree predicts a piecewise-constant value, and Volume spans nine
orders of magnitude, so a tree on raw Volume is poor (R² 0.10 on the 2021 vintage) while a ratio
around 1 is easy to model.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from compute import arrays, publish
from compute.drift import Bins
from compute.layout import METADATA_FILE, MODEL_FILE
from compute.metrics import Metrics
from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN
from compute.storage import join, read_bytes, write_bytes

if TYPE_CHECKING:
    import xgboost as xgb

MODEL_NAME = "stock-volume"  # in the BentoML model store
TARGET_TRANSFORM = "ratio_to_vol_moving_avg"
RATIO_FLOOR = 1.0  # vol_moving_avg below one share a day is treated as one


class ModelNotWhole(ValueError):
    """model.bin and model.json do not belong together (or one is missing)."""


class HoldoutMetrics(BaseModel):
    time_split: Metrics  # the model on the time holdout
    baseline: Metrics  # the naive Volume = vol_moving_avg on the same rows


class Fold(BaseModel):
    """One walk-forward fold of the backtest: trained on every row before `year`, tested on the
    rows within it."""

    model_config = ConfigDict(ser_json_inf_nan="constants")
    year: int
    train_rows: int
    test_rows: int
    model: Metrics
    baseline: Metrics
    mae_improvement_pct: float | None


class ModelCard(BaseModel):
    """model.json: what a reader needs to use the model and to know where it came from. Written by
    training, read by the service, the CLI and the tests."""

    features: list[str] = list(FEATURE_COLUMNS)  # the booster's inputs, in order
    target: str = TARGET_COLUMN
    target_transform: str = TARGET_TRANSFORM  # how the booster's output becomes a volume
    objective: str
    training_window: list[str] | None  # first and last date of the training rows
    holdout_cutoff: str  # the first date of the time holdout
    data_hash: str  # SHA-256 of the stage-2 part files it was trained on
    metrics: HoldoutMetrics
    versions: dict[str, str]  # of the libraries that trained it
    created: str  # UTC, ISO 8601
    model_sha256: str | None = None  # of model.bin; absent only in models from before it was recorded
    # Where it came from, for the registry (compute/registry.py); absent in older models.
    version: str | None = None  # its name in <out>/models/
    stage2_fingerprint: str | None = None  # the stage 2 it was trained on
    code_version: str | None = None  # a digest of the code that shapes a model
    params: dict[str, Any] = {}  # XGBoost's
    rounds: int | None = None
    train_rows: int | None = None
    test_rows: int | None = None
    backtest: list[Fold] | None = None  # the walk-forward folds, when they were run
    # Its data (compute/drift.py): quantile bins of each input and of Volume in the stage 2 it was
    # trained on, for the drift report and the service's metrics; the symbols in it; and how far
    # that data was from the previous champion's.
    feature_bins: dict[str, Bins] | None = None
    symbols: list[str] | None = None
    drift_psi: dict[str, float] | None = None  # per column, against `drift_reference`'s data
    drift_reference: str | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")


def to_target(volume: np.ndarray, vol_moving_avg: np.ndarray) -> np.ndarray:
    """What the booster learns (numpy or CuPy arrays)."""
    xp = arrays.module_of(volume)
    return xp.asarray(volume, dtype=xp.float64) / xp.maximum(vol_moving_avg, RATIO_FLOOR)


def to_volume(raw: np.ndarray, vol_moving_avg: np.ndarray, transform: str = TARGET_TRANSFORM) -> np.ndarray:
    """Booster output -> predicted volume (float, never negative; numpy or CuPy arrays)."""
    if transform != TARGET_TRANSFORM:
        raise ValueError(f"unknown target transform {transform!r}")
    return np.maximum(raw, 0.0) * np.maximum(vol_moving_avg, RATIO_FLOOR)


def feature_matrix(
    vol_moving_avg: np.ndarray | float, adj_close_rolling_med: np.ndarray | float
) -> np.ndarray:
    """The model's input: one row per pair, in FEATURE_COLUMNS' order (two numbers: one row)."""
    return np.column_stack([vol_moving_avg, adj_close_rolling_med]).astype(np.float64)


def predict_volume(booster: xgb.Booster, card: ModelCard, features: np.ndarray) -> np.ndarray:
    """Predicted volumes for an (n, 2) array of [vol_moving_avg, adj_close_rolling_med]."""
    if card.features != list(FEATURE_COLUMNS):
        raise ValueError(f"model expects features {card.features}, not {list(FEATURE_COLUMNS)}")
    raw = booster.inplace_predict(features, validate_features=False)
    return to_volume(raw, features[:, 0], card.target_transform)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(folder: str | Path, model: bytes, card: ModelCard) -> ModelCard:
    """model.bin, and model.json with model.bin's SHA-256 in it; returns the card as written."""
    card = card.model_copy(update={"model_sha256": sha256(model)})
    write_bytes(model, join(str(folder), MODEL_FILE))
    text = card.model_dump_json(indent=2) + "\n"
    write_bytes(text.encode(), join(str(folder), METADATA_FILE))
    return card


def read(folder: str | Path) -> tuple[bytes, ModelCard]:
    """model.bin and model.json from a folder (local or a pyarrow URI), checked to belong together."""
    try:
        text = read_bytes(join(str(folder), METADATA_FILE))
        model = read_bytes(join(str(folder), MODEL_FILE))
    except FileNotFoundError as exc:
        raise ModelNotWhole(f"no {MODEL_FILE} and {METADATA_FILE} in {folder}: {exc}") from None
    try:
        card = ModelCard.model_validate_json(text)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise ModelNotWhole(f"{folder}/{METADATA_FILE} is not a model card: {problem}") from None
    if card.model_sha256 is not None and card.model_sha256 != sha256(model):
        raise ModelNotWhole(f"{folder}/{MODEL_FILE} does not match the SHA-256 in {METADATA_FILE}")
    return model, card


def read_card(folder: str | Path) -> ModelCard:
    """model.json alone (a following service checks it for a new version without model.bin)."""
    try:
        return ModelCard.model_validate_json(read_bytes(join(str(folder), METADATA_FILE)))
    except (FileNotFoundError, ValidationError) as exc:
        raise ModelNotWhole(f"no model card in {folder}: {exc}") from None


def read_published(model_dir: str, attempts: int = 5) -> tuple[bytes, ModelCard]:
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
    import xgboost as xgb  # here: a flow's driver imports this module long before it needs XGBoost

    loaded = xgb.Booster()
    loaded.load_model(bytearray(model))
    return loaded


def load(folder: str | Path) -> tuple[xgb.Booster, ModelCard]:
    """The booster and its card from a folder (local or a pyarrow URI), checked whole."""
    model, card = read(folder)
    return booster(model), card
