"""Rolling features on the whole sample against an independent pandas reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from compute.schema import STAGE2, WINDOW


def reference(stage1: pd.DataFrame) -> pd.DataFrame:
    """Plain pandas, the obvious way: per symbol, ordered by date, rolling(30) mean and median."""
    df = stage1.sort_values(["Symbol", "Date"]).reset_index(drop=True)
    grouped = df.groupby("Symbol", sort=False)
    df["ref_mean"] = grouped["Volume"].rolling(WINDOW).mean().reset_index(level=0, drop=True)
    df["ref_median"] = grouped["Adj Close"].rolling(WINDOW).median().reset_index(level=0, drop=True)
    return df


def test_features_match_pandas_reference_on_the_whole_sample(sample_run: dict[str, Any]) -> None:
    out: Path = sample_run["out"]
    stage1 = pq.read_table(out / "stage1").to_pandas()
    stage2 = pq.read_table(out / "stage2").to_pandas().sort_values(["Symbol", "Date"]).reset_index(drop=True)
    ref = reference(stage1)
    assert len(stage2) == len(ref) == len(stage1)
    assert (stage2["Symbol"] == ref["Symbol"]).all() and (stage2["Date"] == ref["Date"]).all()
    for ours, theirs in [("vol_moving_avg", "ref_mean"), ("adj_close_rolling_med", "ref_median")]:
        got, want = stage2[ours].to_numpy(dtype=float, na_value=np.nan), ref[theirs].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{ours}: null pattern")
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0, equal_nan=True, err_msg=ours)
    # Every symbol's first 29 rows are null, and a symbol with fewer than 30 rows has no features.
    position = stage2.groupby("Symbol").cumcount()
    assert stage2.loc[position < WINDOW - 1, "vol_moving_avg"].isna().all()
    assert stage2.loc[position >= WINDOW - 1, "vol_moving_avg"].notna().all()
    short = stage2.groupby("Symbol").size().loc[lambda s: s < WINDOW].index
    assert len(short) >= 3 and stage2[stage2["Symbol"].isin(short)]["adj_close_rolling_med"].isna().all()


def test_stage2_schema_is_stage1_plus_features(sample_run: dict[str, Any]) -> None:
    assert (
        pq.read_schema(next((sample_run["out"] / "stage2").glob("part-*.parquet"))).remove_metadata()
        == STAGE2
    )
