"""The yardstick for the train stage: a plain XGBoost script on the same stage 2, written as a
person would write it: no Ray, no Prefect, none of stockpipe's code. It trains the same model (the
same rows, time split, target, weights, parameters and rounds), logs the same losses (train and
validation, every round) and scores the same holdout, in one process using every core; on CUDA
its arrays go to the GPU with CuPy, as XGBoost's documentation advises.

    python -m bench.plain_train STAGE2_DIR [--device cpu|cuda] [--rounds 40] [--folds 0]

Prints one JSON line: the seconds of each phase, the rows and the holdout MAE. `--folds N` also
trains N walk-forward folds (each year's rows tested on a model of every earlier row), as the
stage's backtest does.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xgboost as xgb

PARAMS = {
    "objective": "reg:pseudohubererror",
    "huber_slope": 0.4,
    "tree_method": "hist",
    "max_depth": 6,
    "eta": 0.3,
    "max_bin": 256,
    "max_delta_step": 1.0,
    "seed": 42,
}


def fit(
    xp: Any, x: Any, y: Any, train: Any, test: Any, params: dict[str, Any], rounds: int
) -> dict[str, Any]:
    m = x[:, 0]
    target = y / xp.maximum(m, 1.0)
    weight = m**2 / float((m[train] ** 2).mean())
    started = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(x[train], target[train], weight=weight[train])
    dtest = xgb.DMatrix(x[test], target[test], weight=weight[test])
    built = time.perf_counter()
    losses: dict[str, Any] = {}
    booster = xgb.train(
        params,
        dtrain,
        rounds,
        evals=[(dtrain, "train"), (dtest, "validation")],
        evals_result=losses,
        verbose_eval=False,
    )
    boosted = time.perf_counter()
    predicted = xp.maximum(booster.inplace_predict(x[test]), 0.0) * xp.maximum(m[test], 1.0)
    mae = float(xp.abs(predicted - y[test]).mean())
    return {
        "dmatrix_s": built - started,
        "boosting_s": boosted - built,
        "predict_s": time.perf_counter() - boosted,
        "mae": mae,
        "rounds_logged": len(losses["validation"]["mphe"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage2")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--folds", type=int, default=0)
    args = parser.parse_args()
    xp: Any = np
    if args.device == "cuda":
        import cupy

        xp = cupy
    began = time.perf_counter()
    table = pq.read_table(args.stage2, columns=["Date", "Volume", "vol_moving_avg", "adj_close_rolling_med"])
    table = table.filter(
        pc.and_(pc.is_valid(table["vol_moving_avg"]), pc.is_valid(table["adj_close_rolling_med"]))
    )
    days = table["Date"].cast(pa.date32()).to_numpy().astype(np.int64)
    x = np.column_stack([table["vol_moving_avg"].to_numpy(), table["adj_close_rolling_med"].to_numpy()])
    y = table["Volume"].to_numpy().astype(np.float64)
    x, y = xp.asarray(x), xp.asarray(y)
    read = time.perf_counter() - began
    # The time split: the latest 20% of rows by date are the test set.
    cumulative = np.cumsum(np.bincount(days - days.min()))
    cutoff = days.min() + int(np.searchsorted(cumulative, 0.8 * cumulative[-1], side="right"))
    test = xp.asarray(days >= cutoff)
    params = {**PARAMS, "device": args.device}
    result = {
        "device": args.device,
        "rows": len(days),
        "read_s": read,
        **fit(xp, x, y, ~test, test, params, args.rounds),
    }
    folds_began = time.perf_counter()
    years = days.astype("datetime64[D]").astype("datetime64[Y]").astype(int) + 1970
    last = int(years.max())
    complete = last if (years == last).sum() >= 0.5 * (years == last - 1).sum() else last - 1
    for year in range(complete - args.folds + 1, complete + 1):
        fold_test, fold_train = xp.asarray(years == year), xp.asarray(years < year)
        fit(xp, x, y, fold_train, fold_test, params, args.rounds)
    result["folds_s"] = time.perf_counter() - folds_began
    result["total_s"] = time.perf_counter() - began
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
