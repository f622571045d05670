"""The time split: the latest `holdout_fraction` of rows, by date, are the test set; and the
backtest's walk-forward folds: for each of the latest years, train on every row before it and test
on its rows.

The Ray Train workers find both themselves, each from the rows it loaded: rows per day, summed
across workers with XGBoost's collective, so that no pass over stage 2 comes before the training
(on 87M rows that pass took 12 s).
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


def rows_per_day(dates: np.ndarray, reduce: Reduce = alone) -> tuple[int, np.ndarray]:
    """Every worker's rows per day (`dates`: this worker's, one datetime64[D] per row): the first
    day (days since 1970) and the count for each day from it on. The day range first, then the
    counts, each combined across workers."""
    days = dates.astype("datetime64[D]").astype(np.int64)
    none = np.iinfo(np.int64).max  # a worker without rows leaves the range alone
    ends = np.array([days.min(), -days.max()] if days.size else [none, none], dtype=np.int64)
    first, minus_last = (int(v) for v in reduce(ends, "MIN"))
    if first == none:
        raise ValueError("no worker has a row with both features")
    per_day = np.bincount(days - first, minlength=-minus_last - first + 1).astype(np.int64)
    return first, reduce(per_day, "SUM")


def cutoff_date(first: int, per_day: np.ndarray, holdout_fraction: float) -> str:
    """The first test date ("YYYY-MM-DD"), from every worker's rows per day (`rows_per_day`)."""
    return str(np.datetime64(first + cutoff_index(per_day, holdout_fraction), "D"))


def fold_years(first: int, per_day: np.ndarray, folds: int) -> list[int]:
    """The backtest's years, oldest first: the latest `folds` calendar years, each with an earlier
    year to train on, leaving out a partial year: one with fewer than half the rows of the year
    before it (the four weeks of 2021 in the 2021 vintage; the data grows year on year, so the
    median year of a history that starts in 1962 would not tell a partial year apart)."""
    if folds <= 0:
        return []
    years = (first + np.arange(len(per_day))).astype("datetime64[D]").astype("datetime64[Y]").astype(int)
    counts = np.bincount(years - years[0], weights=per_day)
    full = [y for y in range(1, len(counts)) if counts[y] > 0 and counts[y] >= 0.5 * counts[y - 1]]
    return [1970 + int(years[0]) + y for y in full[-folds:]]
