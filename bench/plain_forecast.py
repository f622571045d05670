"""A plain script that forecasts each symbol's next-session volume from a stage-1 folder, the way
one would write it without the pipeline: pandas per symbol, one process, no Ray. It is the
forecast stage's yardstick on the same rows and the same walk-forward folds (bench/forecast.py).

    python -m bench.plain_forecast STAGE1_DIR                 # the stage's model, the plain way
    python -m bench.plain_forecast STAGE1_DIR --as-issued     # the script issue 37 measured

The default fits the stage's model (the same features, quantile objective, window and rounds), so
that the two times compare like with like. --as-issued is the script the forecast was first
measured with: log1p(volume) as the target with reg:absoluteerror, 300 trees of depth 8 on every
row since 2018, and two more models with reg:quantileerror for the 10-90% range. Prints JSON: the
phases' seconds, and per fold and pooled the MAE, mean |log error| and coverage, beside the three
naive forecasts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import exchange_calendars as xc
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xgboost as xgb


def features(stage1: Path) -> pd.DataFrame:
    df = pq.read_table(stage1, columns=["Symbol", "Date", "High", "Low", "Adj Close", "Volume"]).to_pandas()
    df["Date"] = pd.to_datetime(df["Date"])
    df = df.sort_values(["Symbol", "Date"]).reset_index(drop=True)
    g = df.groupby("Symbol", sort=False)
    lv = np.log1p(df["Volume"].astype(float))
    by = lv.groupby(df["Symbol"], sort=False)
    for k in (1, 2, 3, 5, 10):
        df[f"lag{k}"] = by.shift(k - 1)
    for k in (5, 10, 30, 60):
        df[f"mean{k}"] = by.transform(lambda s, k=k: s.rolling(k).mean())
    df["std30"] = by.transform(lambda s: s.rolling(30).std(ddof=0))
    df["zeros30"] = (
        (df["Volume"] == 0)
        .astype(float)
        .groupby(df["Symbol"], sort=False)
        .transform(lambda s: s.rolling(30).mean())
    )
    df["ret"] = np.log(df["Adj Close"] / g["Adj Close"].shift(1)).replace([np.inf, -np.inf], np.nan)
    df["abs_ret"] = df["ret"].abs()
    df["range"] = np.log(df["High"] / df["Low"]).replace([np.inf, -np.inf], np.nan)
    vol = df["Volume"].astype(float).groupby(df["Symbol"], sort=False)
    df["naive_last"] = df["Volume"].astype(float)
    df["naive_mean5"] = vol.transform(lambda s: s.rolling(5).mean())
    df["naive_mean30"] = vol.transform(lambda s: s.rolling(30).mean())
    day = lv.groupby(df["Date"]).mean().sort_index()
    market = day - day.rolling(30).mean()
    df["market"] = df["Date"].map(market)
    df["actual"] = g["Volume"].shift(-1).astype(float)
    df["next_date"] = g["Date"].shift(-1)
    df = df[g.cumcount() >= 59].copy()

    sessions = xc.get_calendar("XNYS", start=df["Date"].min() - pd.Timedelta(days=40),
                               end=df["Date"].max() + pd.Timedelta(days=40)).sessions  # fmt: skip
    early = set(xc.get_calendar("XNYS").early_closes)
    position = sessions.searchsorted(df["Date"], side="right")
    df["target"] = sessions[position]
    df.loc[df["next_date"] != df["target"], "actual"] = np.nan  # the symbol did not trade that session
    target = df["target"]
    first = target.dt.to_period("M").dt.to_timestamp()
    third_friday = first + pd.to_timedelta((4 - first.dt.day_of_week) % 7 + 14, unit="D")
    expiry_session = sessions[sessions.searchsorted(third_friday, side="right") - 1]
    df["half_day"] = target.isin(early).astype(float)
    df["gap_days"] = (target - df["Date"]).dt.days
    df["weekday"] = target.dt.day_of_week
    df["expiry"] = (target == expiry_session).astype(float)
    df["quarterly_expiry"] = df["expiry"] * target.dt.month.isin([3, 6, 9, 12])
    following = sessions[np.minimum(position + 1, len(sessions) - 1)]
    df["month_end"] = (following.month != target.dt.month.to_numpy()).astype(float)
    df["quarter_end"] = df["month_end"] * target.dt.month.isin([3, 6, 9, 12])
    df["month_start"] = (df["Date"].dt.month != target.dt.month).astype(float)
    # The facts of the session forecast from: the previous row's of the same symbol's target.
    for name in ("half_day", "expiry", "quarterly_expiry", "month_end"):
        df[f"prev_{name}"] = df.groupby("Symbol", sort=False)[name].shift(1)
    return df


LEVELS = ["lag1", "lag2", "lag3", "lag5", "lag10", "mean5", "mean30", "mean60"]  # log volumes
FACTS = ["half_day", "gap_days", "weekday", "expiry", "quarterly_expiry", "month_end", "quarter_end",
         "month_start"]  # of the session forecast  # fmt: skip
COLUMNS = [*LEVELS, "mean10", "std30", "ret", "abs_ret", "range", "market", *FACTS]
PREVIOUS = ["prev_half_day", "prev_expiry", "prev_quarterly_expiry", "prev_month_end"]


def relative(df: pd.DataFrame) -> pd.DataFrame:
    """The stage's features: the log volumes less the 10-session mean, beside the rest."""
    x = df[[*COLUMNS, "zeros30", *PREVIOUS]].copy()
    x[LEVELS] = x[LEVELS].sub(x["mean10"], axis=0)
    return x


def fit_predict(train: pd.DataFrame, test: pd.DataFrame, as_issued: bool) -> np.ndarray:
    """(n, 3) shares: 10th, 50th, 90th percentiles."""
    y = np.log1p(train["actual"])
    if as_issued:
        base = {"tree_method": "hist", "max_depth": 8, "eta": 0.05, "nthread": 0, "seed": 0}
        matrix = xgb.QuantileDMatrix(train[COLUMNS], y)
        point = xgb.train({**base, "objective": "reg:absoluteerror"}, matrix, 300)
        ranges = xgb.train({**base, "objective": "reg:quantileerror", "quantile_alpha": np.array([0.1, 0.9])},
                           matrix, 300)  # fmt: skip
        low, high = ranges.inplace_predict(test[COLUMNS]).T
        return np.expm1(np.column_stack([low, point.inplace_predict(test[COLUMNS]), high]))
    params = {"objective": "reg:quantileerror", "quantile_alpha": np.array([0.1, 0.5, 0.9]),
              "tree_method": "hist", "max_depth": 8, "eta": 0.15, "min_child_weight": 50, "subsample": 0.5,
              "max_bin": 128, "nthread": 0, "seed": 42}  # fmt: skip
    booster = xgb.train(params, xgb.QuantileDMatrix(relative(train), y - train["mean10"], max_bin=128), 60)
    logs = booster.inplace_predict(relative(test)).reshape(len(test), 3)
    return np.expm1(np.sort(logs, axis=1) + test["mean10"].to_numpy()[:, None])


def scores(actual: np.ndarray, point: np.ndarray, low: np.ndarray | None = None,
           high: np.ndarray | None = None) -> dict[str, float]:  # fmt: skip
    out = {"forecasts": len(actual), "mae": float(np.abs(point - actual).mean()),
           "mean_abs_log_error": float(np.abs(np.log1p(point) - np.log1p(actual)).mean())}  # fmt: skip
    if low is not None and high is not None:
        out["coverage"] = float(((actual >= low) & (actual <= high)).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage1", type=Path)
    parser.add_argument("--as-issued", action="store_true")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold-sessions", type=int, default=10)
    parser.add_argument("--train-sessions", type=int, default=250)
    args = parser.parse_args()
    phases: dict[str, float] = {}
    started = time.perf_counter()
    df = features(args.stage1)
    phases["features"] = time.perf_counter() - started
    sessions = np.sort(df["target"].unique())
    last = df["Date"].max().to_datetime64()
    tested = sessions[sessions <= last][-args.folds * args.fold_sessions :]
    known = df[df["actual"].notna()]
    folds, pooled = [], []
    for i in range(args.folds):
        block = tested[i * args.fold_sessions : (i + 1) * args.fold_sessions]
        cutoff = sessions[np.searchsorted(sessions, block[0]) - 1]
        if args.as_issued:
            train = known[(known["target"] <= cutoff) & (known["Date"] >= "2018-01-01")]
        else:
            start = sessions[max(np.searchsorted(sessions, cutoff, side="right") - args.train_sessions, 0)]
            train = known[(known["target"] <= cutoff) & (known["target"] >= start)]
        test = known[known["target"].isin(block)]
        began = time.perf_counter()
        low, point, high = fit_predict(train, test, args.as_issued).T
        seconds = time.perf_counter() - began
        actual = test["actual"].to_numpy()
        pooled.append(
            (
                actual,
                point,
                low,
                high,
                {n: test[f"naive_{n}"].to_numpy() for n in ("last", "mean5", "mean30")},
            )
        )
        folds.append({"first": str(block[0])[:10], "last": str(block[-1])[:10], "train_rows": len(train),
                      "seconds": round(seconds, 2), "model": scores(actual, point, low, high),
                      "naive": {n: scores(actual, v) for n, v in pooled[-1][4].items()}})  # fmt: skip
    phases["walk-forward"] = sum(f["seconds"] for f in folds)
    began = time.perf_counter()
    if not args.as_issued:  # the final fit and the table, as the stage makes them
        start = sessions[max(np.searchsorted(sessions, last, side="right") - args.train_sessions, 0)]
        fit_predict(known[known["target"] >= start], df[df["Date"] == last], False)
    phases["final fit"] = time.perf_counter() - began
    actual, point, low, high = (np.concatenate([p[i] for p in pooled]) for i in range(4))
    naive = {
        n: scores(actual, np.concatenate([p[4][n] for p in pooled])) for n in ("last", "mean5", "mean30")
    }
    report = {"phases": {k: round(v, 2) for k, v in phases.items()},
              "seconds": round(time.perf_counter() - started, 2), "folds": folds,
              "model": scores(actual, point, low, high), "naive": naive}  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
