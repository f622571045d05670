"""The time split: the latest `holdout_fraction` of rows, by date, are the test set."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from compute import storage
from compute.schema import FEATURE_COLUMNS


def date_counts(part: str) -> dict[str, Any]:
    """Rows per date among rows with both features, plus how many rows lack them (a Ray task)."""
    table = storage.read_parquet(part, columns=["Date", *FEATURE_COLUMNS])
    usable = pc.and_(*[pc.is_valid(table.column(c)) for c in FEATURE_COLUMNS])
    counts = pc.value_counts(table.column("Date").filter(usable))
    return {
        "dates": dict(
            zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        ),
        "null_feature_rows": table.num_rows - pc.sum(usable).as_py() if table.num_rows else 0,
        "rows": table.num_rows,
    }


def merge_dates(counted: list[dict[str, Any]]) -> dict[str, int]:
    dates: dict[str, int] = {}
    for c in counted:
        for d, n in c["dates"].items():
            dates[d] = dates.get(d, 0) + n
    return dates


def holdout_cutoff(dates: dict[str, int], holdout_fraction: float) -> str:
    """The first test date: rows dated on or after it are about the last `holdout_fraction` of rows."""
    ordered = sorted(dates)
    cumulative = np.cumsum([dates[d] for d in ordered])
    train_rows = (1.0 - holdout_fraction) * cumulative[-1]
    return ordered[min(int(np.searchsorted(cumulative, train_rows, side="right")), len(ordered) - 1)]
