"""The market's volume on each date, a fact across every symbol: the reduce of the per-part shares
that inputs.py computes (per date, the sum and count of log volumes), combined once on the driver.
A forecast reads how that day's mean log volume stood against its norm: its mean over the 30
sessions up to that day."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

NORM_SESSIONS = 30


def combine(shares: list[pa.Table]) -> pa.Table:
    """Per date: the summed log volumes and symbols of every part; then the day's mean and how far
    it stood above its 30-session norm (NaN until 30 dates are known)."""
    if not shares:
        return pa.table({"Date": pa.array([], pa.date32()), "mean": pa.array([], pa.float64()),
                         "relative": pa.array([], pa.float64()),
                         "symbols": pa.array([], pa.int64())})  # fmt: skip
    grouped = pa.concat_tables(shares).group_by("Date").aggregate([("sum", "sum"), ("count", "sum")])
    grouped = grouped.sort_by("Date")
    count = grouped.column("count_sum").to_numpy()
    mean = grouped.column("sum_sum").to_numpy() / np.maximum(count, 1)
    running = np.concatenate([[0.0], np.cumsum(mean)])
    norm = np.full(len(mean), np.nan)
    norm[NORM_SESSIONS - 1 :] = (running[NORM_SESSIONS:] - running[:-NORM_SESSIONS]) / NORM_SESSIONS
    return pa.table(
        {
            "Date": grouped.column("Date"),
            "mean": mean,
            "relative": mean - norm,
            "symbols": count.astype(np.int64),
        }
    )
