"""The forecast's inputs per symbol, one stage-1 part at a time (a Ray task each): for every row,
what is known at that session's close (lagged and rolling log volumes, the day's return and range)
and what the forecaster learns from it (the log volume of the symbol's next row). Also the part's
share of the market's volume: per date, the sum and count of log volumes, which add up across
parts (calendar.py and market.py finish them once, on the driver).

Vectorised over the whole part, as rolling.py is: symbols are contiguous and date-ordered, and a
row whose look-back would reach past its symbol's first row gets NaN, never another symbol's value.
Only rows with the full look-back, among each symbol's last `keep` rows, are written: the training
window is far shorter than the history.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compute.storage import basename, join, read_parquet, write_parquet

LAGS = (1, 2, 3, 5, 10)  # log volume this many sessions before the forecast's session
MEANS = (5, 10, 30, 60)  # rolling means of log volume over this many sessions
SPREAD = 30  # the rolling standard deviation's sessions
LOOK_BACK = max(*LAGS, *MEANS, SPREAD)  # rows a symbol needs before its first forecast

# What every row of the inputs holds: what is known at the close of its session `Date`, about the
# forecast of the next (lag1 is log1p(Volume) of `Date` itself).
INPUTS = pa.schema(
    [
        ("Symbol", pa.string()),
        ("Date", pa.date32()),
        ("next_date", pa.date32()),  # the symbol's next row's date (null on its last row)
        *[(f"lag{k}", pa.float32()) for k in LAGS],
        *[(f"mean{k}", pa.float32()) for k in MEANS],
        (f"std{SPREAD}", pa.float32()),
        (f"zeros{SPREAD}", pa.float32()),  # the share of those sessions that traded nothing
        ("ret", pa.float32()),  # log(Adj Close / previous Adj Close)
        ("range", pa.float32()),  # log(High / Low), NaN where Low is 0
        # The naive forecasts, in shares: the last session's volume (`volume`), the mean volume of
        # the last 5 and 30 sessions; and what the next session traded (null on the last row).
        ("volume", pa.int64()),
        ("naive5", pa.float64()),
        ("naive30", pa.float64()),
        ("next_volume", pa.int64()),
    ]
)
# The market's share of one part: per date, the sum of log1p(Volume) and how many symbols traded.
MARKET = pa.schema([("Date", pa.date32()), ("sum", pa.float64()), ("count", pa.int64())])


def positions(symbols: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each row's position in its symbol (0, 1, 2, ...), and the number of rows after it in its
    symbol (input grouped by symbol)."""
    codes = pc.dictionary_encode(symbols)
    if isinstance(codes, pa.ChunkedArray):
        codes = codes.combine_chunks()
    indices = codes.indices.to_numpy(zero_copy_only=False)
    n = len(indices)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], indices[1:] != indices[:-1]]))
    lengths = np.diff(np.append(starts, n))
    position = np.arange(n) - np.repeat(starts, lengths)
    return position, np.repeat(lengths, lengths) - 1 - position


def _shifted(values: np.ndarray, by: int, position: np.ndarray) -> np.ndarray:
    """values[i - by] within the symbol, NaN before its first row."""
    out = np.full(len(values), np.nan)
    if by < len(values):
        out[by:] = values[:-by] if by else values
    out[position < by] = np.nan
    return out


def _rolling_mean(values: np.ndarray, window: int, position: np.ndarray) -> np.ndarray:
    """The mean of the last `window` values ending at each row, NaN without a full window."""
    running = np.concatenate([[0.0], np.cumsum(values)])
    out = np.full(len(values), np.nan)
    ready = np.flatnonzero(position >= window - 1)
    out[ready] = (running[ready + 1] - running[ready + 1 - window]) / window
    return out


def compute(table: pa.Table, keep: int) -> tuple[pa.Table, pa.Table]:
    """Stage-1 rows of one part (sorted by Symbol, then Date) -> (inputs, market share)."""
    n = table.num_rows
    position, after = positions(table.column("Symbol"))
    dates = table.column("Date").cast(pa.date32())
    lv = np.log1p(table.column("Volume").to_numpy().astype(np.float64))

    # The market's share: every row counts, whatever its history.
    by_date = pa.table({"Date": dates, "lv": lv}).group_by("Date").aggregate([("lv", "sum"), ("lv", "count")])
    market = pa.table(
        [by_date.column("Date"), by_date.column("lv_sum"), by_date.column("lv_count")], schema=MARKET
    ).sort_by("Date")

    columns: dict[str, np.ndarray] = {f"lag{k}": _shifted(lv, k - 1, position) for k in LAGS}
    columns |= {f"mean{k}": _rolling_mean(lv, k, position) for k in MEANS}
    mean_square = _rolling_mean(lv**2, SPREAD, position)
    columns[f"std{SPREAD}"] = np.sqrt(np.maximum(mean_square - columns[f"mean{SPREAD}"] ** 2, 0.0))
    columns[f"zeros{SPREAD}"] = _rolling_mean((lv == 0).astype(np.float64), SPREAD, position)
    adj = table.column("Adj Close").to_numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns["ret"] = np.log(adj / _shifted(adj, 1, position))
        high = table.column("High").to_numpy().astype(np.float64)
        low = table.column("Low").to_numpy().astype(np.float64)
        columns["range"] = np.log(high / low)
    for name in ("ret", "range"):
        columns[name][~np.isfinite(columns[name])] = np.nan  # a zero price: unknown, not infinite
    volume = table.column("Volume").to_numpy()
    volumes = volume.astype(np.float64)
    columns["naive5"] = _rolling_mean(volumes, 5, position)
    columns["naive30"] = _rolling_mean(volumes, 30, position)

    rows = np.flatnonzero((position >= LOOK_BACK - 1) & (after < keep))
    next_index = np.minimum(rows + 1, max(n - 1, 0))
    next_date = pa.array(dates.combine_chunks().take(pa.array(next_index)), pa.date32())
    next_date = pc.if_else(pa.array(after[rows] == 0), pa.scalar(None, pa.date32()), next_date)
    take = pa.array(rows)
    next_volume = np.zeros(n, np.int64)
    next_volume[:-1] = volume[1:]
    floats = [f.name for f in INPUTS if pa.types.is_floating(f.type)]
    inputs = (
        pa.table(
            [
                table.column("Symbol").take(take),
                dates.take(take),
                next_date,
                *[pa.array(columns[name][rows], INPUTS.field(name).type) for name in floats],
                pa.array(volume[rows], pa.int64()),
                pa.array(next_volume[rows], pa.int64(), mask=after[rows] == 0),
            ],
            names=["Symbol", "Date", "next_date", *floats, "volume", "next_volume"],
        )
        .select(INPUTS.names)
        .cast(INPUTS)
    )
    return inputs, market


def history(table: pa.Table) -> pa.Table:
    """Each symbol's row count and last date in one part, for the symbols that get no forecast."""
    grouped = table.group_by("Symbol").aggregate([("Date", "count"), ("Date", "max")])  # YYYY-MM-DD
    return pa.table(
        {
            "Symbol": grouped.column("Symbol"),
            "rows": grouped.column("Date_count").cast(pa.int64()),
            "last": grouped.column("Date_max").cast(pa.date32()),
        }
    )


def market_name(part: str) -> str:
    """The market share's file beside inputs part `part`: part-00003.parquet -> market-00003.parquet."""
    return basename(part).replace("part-", "market-", 1)


def history_name(part: str) -> str:
    return basename(part).replace("part-", "history-", 1)


def inputs_part(stage1_part: str, out_dir: str, keep: int) -> dict[str, int]:
    """One stage-1 part -> its inputs part, market share and history in `out_dir`; the counts."""
    table = read_parquet(stage1_part, columns=["Symbol", "Date", "High", "Low", "Adj Close", "Volume"])
    inputs, market = compute(table, keep)
    write_parquet(inputs, join(out_dir, basename(stage1_part)))
    write_parquet(market, join(out_dir, market_name(stage1_part)))
    write_parquet(history(table), join(out_dir, history_name(stage1_part)))
    return {"rows": table.num_rows, "inputs": inputs.num_rows}
