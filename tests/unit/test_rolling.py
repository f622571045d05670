"""Rolling features on hand-made tables: windows never cross symbols, huge volumes stay exact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from compute.schema import STAGE1
from compute.stages.features.rolling import add_features


def table(symbols: list[str], volumes: list[int], adj: list[float]) -> pa.Table:
    n = len(symbols)
    return pa.table(
        {
            "Symbol": symbols,
            "Security Name": [None] * n,
            "Date": [f"2020-{1 + i // 28:02d}-{1 + i % 28:02d}" for i in range(n)],
            **{c: pa.array(adj, pa.float32()) for c in ["Open", "High", "Low", "Close", "Adj Close"]},
            "Volume": pa.array(volumes, pa.int64()),
        },
        schema=STAGE1,
    )


def test_windows_never_cross_symbols() -> None:
    # B's first rows would get A's values if windows crossed the boundary.
    n = 40
    t = table(
        ["A"] * n + ["B"] * n, [10**9] * n + list(range(n)), [1000.0] * n + [float(i) for i in range(n)]
    )
    out = add_features(t, window=30).to_pandas()
    b = out[out["Symbol"] == "B"].reset_index(drop=True)
    assert b["vol_moving_avg"][:29].isna().all()
    assert b["vol_moving_avg"][29] == np.mean(range(30))
    assert b["adj_close_rolling_med"][29] == 14.5  # mean of the two middle values of 0..29
    assert b["adj_close_rolling_med"][39] == 24.5


def test_huge_volumes_average_exactly() -> None:
    v = [7_421_640_800 + i for i in range(30)]
    out = add_features(table(["A"] * 30, v, [1.0] * 30), window=30)
    assert out.column("vol_moving_avg")[29].as_py() == sum(v) / 30


def test_unsorted_stage1_is_sorted_before_rolling() -> None:
    t = table(["A"] * 30, list(range(30)), [float(i) for i in range(30)])
    shuffled = t.take(np.random.default_rng(0).permutation(30))
    assert add_features(shuffled, window=30).equals(add_features(t, window=30))
