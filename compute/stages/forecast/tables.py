"""The forecast folder's tables: the forecast per symbol (what `serve` answers), the symbols without
one and why, and every walk-forward forecast beside its actual and the naive forecasts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compute.stages.forecast.model import NAIVE, Fold

if TYPE_CHECKING:
    from compute.stages.forecast.gate import Decision
    from compute.stages.forecast.results import ForecastReport
    from compute.stages.forecast.worker import Outcome

REASONS = ("too little history", "stopped")  # how a reason starts, for the counts

FORECAST = pa.schema(
    [
        ("symbol", pa.string()),
        ("date", pa.string()),  # the session forecast
        ("volume", pa.int64()),  # shares: the median
        ("low", pa.int64()),  # the 10th and 90th percentiles
        ("high", pa.int64()),
        ("as_of", pa.string()),  # the session it was forecast from
        ("model", pa.string()),
        ("mean30", pa.int64()),  # the 30-session mean volume, for comparison
        # The forecaster's own answer, whether or not it is the one that answers.
        ("forecaster_volume", pa.int64()),
        ("forecaster_low", pa.int64()),
        ("forecaster_high", pa.int64()),
    ]
)
NOT_FORECAST = pa.schema(
    [("symbol", pa.string()), ("reason", pa.string()), ("last", pa.string()), ("rows", pa.int64())]
)


def _shares(values: np.ndarray) -> pa.Array:
    return pa.array(np.rint(np.maximum(values, 0)).astype(np.int64))


def forecast(outcome: Outcome, decision: Decision) -> pa.Table:
    latest = outcome.latest
    if decision.published_model:
        low, point, high = outcome.forecast.T
    else:
        point = latest.naive[decision.naive]
        low, high = (np.expm1(np.log1p(point) + q) for q in decision.naive_range)
    n = len(latest)
    table = pa.table(
        [
            latest.symbol.cast(pa.string()),
            pa.array(latest.target_date.astype(str)),
            _shares(point),
            _shares(low),
            _shares(high),
            pa.array(latest.date.astype(str)),
            pa.array([decision.answers] * n, pa.string()),
            _shares(latest.naive["mean30"]),
            *[_shares(outcome.forecast[:, i]) for i in (1, 0, 2)],
        ],
        schema=FORECAST,
    )
    return table.sort_by("symbol")


def not_forecast(histories: pa.Table, last_session: str, look_back: int) -> pa.Table:
    """Symbols with fewer than `look_back` rows, or whose rows stop before the data's last session."""
    rows = histories.column("rows").to_numpy()
    last = histories.column("last").cast(pa.string()).to_pylist()
    reasons, keep = [], []
    for i, (count, day) in enumerate(zip(rows, last, strict=True)):
        if count < look_back:
            reasons.append(f"too little history: {count} sessions up to {day}, {look_back} needed")
        elif day < last_session:
            reasons.append(f"stopped: its rows end on {day}, before the data's last session {last_session}")
        else:
            continue
        keep.append(i)
    picked = histories.take(pa.array(keep, pa.int64()))
    return pa.table(
        [picked.column("Symbol"), pa.array(reasons, pa.string()), picked.column("last").cast(pa.string()),
         picked.column("rows")],
        schema=NOT_FORECAST,
    ).sort_by("symbol")  # fmt: skip


def walk_forward(folds: list[Fold]) -> pa.Table:
    """Every walk-forward forecast: fold, symbol, as_of, date, actual, volume, low, high, and the
    three naive forecasts."""
    tables = []
    for number, fold in enumerate(folds):
        rows, forecast = fold.tested, fold.forecast
        assert rows is not None and forecast is not None
        tables.append(
            pa.table({
                "fold": pa.array(np.full(len(rows), number, np.int32)),
                "symbol": rows.symbol.cast(pa.string()),
                "as_of": pa.array(rows.date.astype(str)),
                "date": pa.array(rows.target_date.astype(str)),
                "actual": _shares(rows.actual),
                "volume": _shares(forecast[:, 1]),
                "low": _shares(forecast[:, 0]),
                "high": _shares(forecast[:, 2]),
                **{name: _shares(rows.naive[name]) for name in NAIVE},
            })
        )  # fmt: skip
    return pa.concat_tables(tables) if tables else pa.table({"fold": pa.array([], pa.int32())})


def furthest_above_markdown(table: pa.Table, result: ForecastReport, count: int = 15) -> str:
    """The symbols whose forecast stands furthest above their 30-session mean."""
    if table.num_rows == 0:
        return "No symbol has a forecast."
    ratio = pc.divide(pc.cast(table.column("volume"), pa.float64()),
                      pc.max_element_wise(pc.cast(table.column("mean30"), pa.float64()), 1.0))  # fmt: skip
    order = np.argsort(-ratio.to_numpy(), kind="stable")[:count]
    lines = [
        f"Forecast for {result.date} (as of {result.as_of}) by {result.answers}: {result.why}.",
        "",
        "| symbol | forecast | 10-90% range | 30-session mean | forecast / mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for i in order:
        row = {
            name: table.column(name)[int(i)].as_py() for name in ("symbol", "volume", "low", "high", "mean30")
        }
        lines.append(
            f"| {row['symbol']} | {row['volume']:,} | {row['low']:,}-{row['high']:,} | {row['mean30']:,} | "
            f"{ratio[int(i)].as_py():.2f} |"
        )
    return "\n".join(lines) + "\n"
