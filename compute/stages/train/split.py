"""The time split: the latest `holdout_fraction` of rows, by date, are the test set.

The Ray Train workers find the cutoff themselves, each from the rows it loaded: rows per day,
summed across workers with XGBoost's collective, so that no pass over stage 2 comes before the
training (on 87M rows that pass took 12 s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# XGBoost's collective.allreduce(array, Op.<name>) on a worker; nothing to combine in one process.
Reduce = Callable[[np.ndarray, str], np.ndarray]


def alone(array: np.ndarray, _op: str) -> np.ndarray:
    return array


def cutoff_index(rows_per_date: np.ndarray, holdout_fraction: float) -> int:
    """Index of the first test date, given rows per date in date order: rows dated on or after it
    are about the last `holdout_fraction` of rows. A date without rows is never the answer."""
    cumulative = np.cumsum(rows_per_date)
    train_rows = (1.0 - holdout_fraction) * cumulative[-1]
    return min(int(np.searchsorted(cumulative, train_rows, side="right")), len(cumulative) - 1)


def holdout_cutoff(dates: dict[str, int], holdout_fraction: float) -> str:
    """The first test date, given rows per date ("YYYY-MM-DD": rows)."""
    ordered = sorted(dates)
    return ordered[cutoff_index(np.array([dates[d] for d in ordered]), holdout_fraction)]


def shared_cutoff(dates: np.ndarray, holdout_fraction: float, reduce: Reduce = alone) -> str:
    """The first test date over every worker's rows (`dates`: this worker's, one datetime64[D]
    per row), by the rule of `cutoff_index`: the day range first, then rows per day."""
    days = dates.astype("datetime64[D]").astype(np.int64)
    none = np.iinfo(np.int64).max  # a worker without rows leaves the range alone
    ends = np.array([days.min(), -days.max()] if days.size else [none, none], dtype=np.int64)
    first, minus_last = (int(v) for v in reduce(ends, "MIN"))
    if first == none:
        raise ValueError("no worker has a row with both features")
    per_day = np.bincount(days - first, minlength=-minus_last - first + 1).astype(np.int64)
    index = cutoff_index(reduce(per_day, "SUM"), holdout_fraction)
    return str(np.datetime64(first + index, "D"))
