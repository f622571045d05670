"""Regression metrics that can be computed on shards and merged exactly (sums, plus Chan's
parallel variance for R²), so no worker ever needs every test row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict


class Metrics(BaseModel):
    """MAE, RMSE, R² and MAPE of one model on one set of rows (in the model card, metrics.json and
    GET /model)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")  # an empty split's NaN stays NaN
    mae: float
    rmse: float
    r2: float
    mape_pct: float


@dataclass
class ErrorSums:
    n: int = 0
    abs_err: float = 0.0
    sq_err: float = 0.0
    # Running mean and sum of squared deviations of the actual values, for R².
    y_mean: float = 0.0
    y_m2: float = 0.0
    # MAPE is only defined where the actual value is not zero.
    ape: float = 0.0
    n_nonzero: int = 0

    @classmethod
    def of(cls, actual: np.ndarray, predicted: np.ndarray) -> ErrorSums:
        y = np.asarray(actual, dtype=np.float64)
        err = y - np.asarray(predicted, dtype=np.float64)
        nonzero = y != 0
        n = len(y)
        mean = float(y.mean()) if n else 0.0
        return cls(
            n=n,
            abs_err=float(np.abs(err).sum()),
            sq_err=float((err**2).sum()),
            y_mean=mean,
            y_m2=float(((y - mean) ** 2).sum()),
            ape=float((np.abs(err[nonzero]) / np.abs(y[nonzero])).sum()),
            n_nonzero=int(nonzero.sum()),
        )

    def merge(self, other: ErrorSums) -> ErrorSums:
        n = self.n + other.n
        if n == 0:
            return ErrorSums()
        delta = other.y_mean - self.y_mean
        return ErrorSums(
            n=n,
            abs_err=self.abs_err + other.abs_err,
            sq_err=self.sq_err + other.sq_err,
            y_mean=self.y_mean + delta * other.n / n,
            y_m2=self.y_m2 + other.y_m2 + delta**2 * self.n * other.n / n,
            ape=self.ape + other.ape,
            n_nonzero=self.n_nonzero + other.n_nonzero,
        )

    def metrics(self) -> dict[str, float]:
        """MAE, RMSE, R² and MAPE (in %, over rows whose actual value is not zero)."""
        if self.n == 0:
            return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "mape_pct": float("nan")}
        return {
            "mae": self.abs_err / self.n,
            "rmse": float(np.sqrt(self.sq_err / self.n)),
            "r2": 1.0 - self.sq_err / self.y_m2 if self.y_m2 > 0 else float("nan"),
            "mape_pct": 100.0 * self.ape / self.n_nonzero if self.n_nonzero else float("nan"),
        }

    def summary(self) -> Metrics:
        return Metrics(**self.metrics())


def merge_all(parts: list[ErrorSums]) -> ErrorSums:
    total = ErrorSums()
    for part in parts:
        total = total.merge(part)
    return total
