"""The forecaster: one XGBoost model across all symbols that answers the 10th, 50th and 90th
percentiles of the next session's log volume (XGBoost's quantile objective, one output per
percentile), from what is known at the close (inputs.py), the market's volume that day
(market.py) and the facts of the session it forecasts (calendar.py).

Everything is relative to the symbol's own level, the mean log volume of its last 10 sessions:
the model learns by how much the next session departs from it, and the features say by how much
the recent sessions did. Trees then share what they learn between a 100-share stock and AAPL,
instead of spending splits on the level.

The walk-forward: fold k tests the forecasts for a block of sessions after its cutoff, made by a
model trained only on rows whose next session is on or before the cutoff (and within the training
window before it). A forecast for session T therefore depends on nothing dated T or later; the
final model is the same fit with the data's last session as its cutoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from compute.stages.forecast.calendar import FACTS, Calendar
from compute.stages.forecast.inputs import LAGS, MEANS, SPREAD

if TYPE_CHECKING:
    import xgboost as xgb

QUANTILES = (0.1, 0.5, 0.9)
BASE = "mean10"
PREVIOUS_FACTS = ("half_day", "expiry", "quarterly_expiry", "month_end")  # of the session it forecasts from
FEATURES: tuple[str, ...] = (
    BASE,
    *[f"d_lag{k}" for k in LAGS],
    *[f"d_mean{k}" for k in MEANS if f"mean{k}" != BASE],
    f"std{SPREAD}",
    f"zeros{SPREAD}",
    "ret",
    "abs_ret",
    "range",
    "market",
    *FACTS,
    *[f"prev_{name}" for name in PREVIOUS_FACTS],
)
NAIVE = {"last": "the last session's volume", "mean5": "the 5-session mean", "mean30": "the 30-session mean"}


@dataclass
class Rows:
    """Rows of the inputs, with their features; all numpy, aligned."""

    symbol: pa.Array  # string
    date: np.ndarray  # datetime64[D]: the session forecast from (as of)
    target_date: np.ndarray  # datetime64[D]: the session forecast (the calendar's next session)
    x: np.ndarray  # (n, len(FEATURES)) float32
    base: np.ndarray  # float64, log1p volume
    actual: np.ndarray  # float64 shares (NaN where unknown: the last row of a symbol)
    naive: dict[str, np.ndarray]  # float64 shares

    def take(self, mask: np.ndarray) -> Rows:
        naive = {k: v[mask] for k, v in self.naive.items()}
        symbol = self.symbol.filter(pa.array(mask))
        return Rows(symbol, self.date[mask], self.target_date[mask], self.x[mask], self.base[mask],
                    self.actual[mask], naive)  # fmt: skip

    def __len__(self) -> int:
        return len(self.date)


def rows_of(
    columns: dict[str, np.ndarray], market: tuple[np.ndarray, np.ndarray], calendar: Calendar
) -> Rows:
    """The inputs' columns (numpy, by name) -> Rows. A row whose next row is not the calendar's
    next session (a symbol that did not trade that day) is kept for the final forecast, where the
    next session is what counts, but has no actual."""
    date = columns["Date"]
    target_date = calendar.next_session(date)
    base = columns[BASE].astype(np.float64)
    x = np.empty((len(date), len(FEATURES)), np.float32)
    put = {name: i for i, name in enumerate(FEATURES)}
    x[:, put[BASE]] = base
    for k in LAGS:
        x[:, put[f"d_lag{k}"]] = columns[f"lag{k}"] - base
    for k in MEANS:
        if f"mean{k}" != BASE:
            x[:, put[f"d_mean{k}"]] = columns[f"mean{k}"] - base
    x[:, put[f"std{SPREAD}"]] = columns[f"std{SPREAD}"]
    x[:, put[f"zeros{SPREAD}"]] = columns[f"zeros{SPREAD}"]
    x[:, put["ret"]] = columns["ret"]
    x[:, put["abs_ret"]] = np.abs(columns["ret"])
    x[:, put["range"]] = columns["range"]
    market_dates, market_relative = market
    at = np.searchsorted(market_dates, date)
    x[:, put["market"]] = market_relative[np.minimum(at, len(market_dates) - 1)]
    for name, values in calendar.facts_of(target_date).items():
        x[:, put[name]] = values
    previous = calendar.facts_of(date)
    for name in PREVIOUS_FACTS:
        x[:, put[f"prev_{name}"]] = previous[name]
    next_volume = columns["next_volume"]
    known = ~np.isnan(next_volume) & (columns["next_date"] == target_date)
    actual = np.where(known, next_volume, np.nan)
    naive = {
        "last": columns["volume"].astype(np.float64),
        "mean5": columns["naive5"],
        "mean30": columns["naive30"],
    }
    return Rows(columns["Symbol"], date, target_date, x, base, actual, naive)


def params(settings: Any, device: str, threads: int) -> dict[str, Any]:
    return {
        "objective": "reg:quantileerror",
        "quantile_alpha": np.array(QUANTILES),
        "tree_method": "hist",
        "device": device,
        "max_depth": settings.forecast_max_depth,
        "eta": settings.forecast_eta,
        "min_child_weight": 50,
        "subsample": 0.5,
        "max_bin": 128,
        "nthread": threads,
        "seed": settings.seed,
    }


@dataclass
class Fitted:
    booster: xgb.Booster
    seconds: float
    train_rows: int


def fit(rows: Rows, xgb_params: dict[str, Any], rounds: int) -> Fitted:
    import xgboost as xgb  # here: the driver imports this module for its types, not to fit

    started = time.perf_counter()
    known = ~np.isnan(rows.actual)
    target = np.log1p(rows.actual[known]) - rows.base[known]
    matrix = xgb.QuantileDMatrix(
        rows.x[known], target, feature_names=list(FEATURES), max_bin=xgb_params["max_bin"]
    )
    booster = xgb.train(xgb_params, matrix, rounds)
    return Fitted(booster, time.perf_counter() - started, int(known.sum()))


def predict(booster: xgb.Booster, rows: Rows) -> np.ndarray:
    """(n, 3) shares: the 10th, 50th and 90th percentiles, ordered (quantile fits may cross)."""
    if not len(rows):
        return np.zeros((0, len(QUANTILES)))
    logs = np.asarray(booster.inplace_predict(rows.x)).reshape(len(rows), len(QUANTILES))
    logs = np.sort(logs, axis=1) + rows.base[:, None]
    return np.maximum(np.expm1(logs), 0.0)


@dataclass
class Scores:
    """Error sums over forecasts with a known actual, which add up across folds."""

    n: int = 0
    abs_error: float = 0.0  # shares
    abs_log_error: float = 0.0
    inside: int = 0  # actual within [low, high]

    @classmethod
    def of(cls, actual: np.ndarray, point: np.ndarray, low: np.ndarray | None = None,
           high: np.ndarray | None = None) -> Scores:  # fmt: skip
        inside = 0 if low is None or high is None else int(((actual >= low) & (actual <= high)).sum())
        return cls(
            n=len(actual),
            abs_error=float(np.abs(point - actual).sum()),
            abs_log_error=float(np.abs(np.log1p(point) - np.log1p(actual)).sum()),
            inside=inside,
        )

    def __add__(self, other: Scores) -> Scores:
        return Scores(self.n + other.n, self.abs_error + other.abs_error,
                      self.abs_log_error + other.abs_log_error, self.inside + other.inside)  # fmt: skip

    def summary(self, with_range: bool) -> dict[str, float | int | None]:
        n = max(self.n, 1)
        return {
            "forecasts": self.n,
            "mae": self.abs_error / n,
            "mean_abs_log_error": self.abs_log_error / n,
            "coverage": self.inside / n if with_range else None,
        }


@dataclass
class Fold:
    first: np.datetime64  # the first and last sessions it tests
    last: np.datetime64
    cutoff: np.datetime64  # trained on rows whose next session is on or before it
    model: Scores
    naive: dict[str, Scores]
    train_rows: int
    seconds: float
    # The range of the best naive forecast (log ratio of actual to forecast, percentiles) is
    # measured over the folds, for the table published when the model loses.
    naive_log_ratios: dict[str, np.ndarray] = field(default_factory=dict)
    forecast: np.ndarray | None = None  # (n, 3) on the fold's test rows, for the plot
    tested: Rows | None = None


def window(rows: Rows, cutoff: np.datetime64, sessions: np.ndarray, train_sessions: int) -> np.ndarray:
    """Training rows for `cutoff`: a known next session on or before it, within the last
    `train_sessions` sessions up to it."""
    at = np.searchsorted(sessions, cutoff, side="right")
    start = sessions[max(at - train_sessions, 0)]
    known = ~np.isnan(rows.actual)
    return known & (rows.target_date <= cutoff) & (rows.target_date >= start)


def fold_blocks(sessions: np.ndarray, last: np.datetime64, folds: int, per_fold: int) -> list[np.ndarray]:
    """The last `folds` blocks of `per_fold` sessions up to `last`, oldest first."""
    upto = sessions[sessions <= last]
    tested = upto[-folds * per_fold :]
    return [tested[i * per_fold : (i + 1) * per_fold] for i in range(len(tested) // per_fold)]


def walk_forward(
    rows: Rows, sessions: np.ndarray, blocks: list[np.ndarray], xgb_params: dict[str, Any], rounds: int,
    train_sessions: int, keep_forecasts: bool = False,
) -> list[Fold]:  # fmt: skip
    folds = []
    for block in blocks:
        cutoff = sessions[np.searchsorted(sessions, block[0]) - 1]
        fitted = fit(rows.take(window(rows, cutoff, sessions, train_sessions)), xgb_params, rounds)
        tested = rows.take(np.isin(rows.target_date, block) & ~np.isnan(rows.actual))
        forecast = predict(fitted.booster, tested)
        folds.append(
            Fold(
                first=block[0], last=block[-1], cutoff=cutoff,
                model=Scores.of(tested.actual, forecast[:, 1], forecast[:, 0], forecast[:, 2]),
                naive={k: Scores.of(tested.actual, v) for k, v in tested.naive.items()},
                train_rows=fitted.train_rows, seconds=fitted.seconds,
                naive_log_ratios={k: np.log1p(tested.actual) - np.log1p(v) for k, v in tested.naive.items()},
                forecast=forecast if keep_forecasts else None, tested=tested if keep_forecasts else None,
            )
        )  # fmt: skip
    return folds
