"""The one place that defines every dataset's columns and types."""

from __future__ import annotations

import pyarrow as pa

# Header every source CSV must have, in this order.
CSV_COLUMNS: tuple[str, ...] = ("Date", "Open", "High", "Low", "Close", "Adj Close", "Volume")
PRICE_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close", "Adj Close")

# Stage 1: the spec's contract.
STAGE1 = pa.schema(
    [
        ("Symbol", pa.string()),
        ("Security Name", pa.string()),
        ("Date", pa.string()),
        *[(name, pa.float32()) for name in PRICE_COLUMNS],
        ("Volume", pa.int64()),
    ]
)

FEATURE_COLUMNS: tuple[str, ...] = ("vol_moving_avg", "adj_close_rolling_med")
TARGET_COLUMN = "Volume"
WINDOW = 30  # rows, not calendar days

# Stage 2: stage 1 plus the rolling features (null for the first WINDOW - 1 rows of a symbol).
STAGE2 = pa.schema([*STAGE1, *[(name, pa.float64()) for name in FEATURE_COLUMNS]])

# Rows that could not be kept, with where they came from and why.
QUARANTINE = pa.schema(
    [
        ("source_file", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)

# String columns whose values repeat within a Parquet file, so dictionary encoding pays.
DICTIONARY_COLUMNS: tuple[str, ...] = ("Symbol", "Security Name", "source_file", "reason")

# Source metadata: file names match "NASDAQ Symbol", not "Symbol" (e.g. AGM-A vs AGM.A).
META_FILE = "symbols_valid_meta.csv"
META_SYMBOL_COLUMN = "NASDAQ Symbol"
META_NAME_COLUMN = "Security Name"
