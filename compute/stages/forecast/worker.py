"""What the forecaster's Ray task runs, holding a node (and a GPU for CUDA) as the volume model's
single layout does: read the inputs parts, join the market and the calendar, walk forward over
the folds, fit the final model on the window up to the data's last session, and forecast each
symbol's next session. It returns numbers, not files: the driver gates and publishes them."""

from __future__ import annotations

import os
import resource
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from compute import storage
from compute.cpus import all_cpus
from compute.phases import Phases
from compute.stages.forecast import model
from compute.stages.forecast.calendar import Calendar
from compute.stages.forecast.inputs import INPUTS
from compute.stages.train.worker import booster_device


@dataclass
class Outcome:
    folds: list[model.Fold]  # each with its forecasts and tested rows
    final: bytes  # the final model, XGBoost's UBJSON
    latest: model.Rows  # each symbol's row on the data's last session
    forecast: np.ndarray  # (n, 3) shares for `latest`
    final_train_rows: int
    device: str  # where XGBoost trained, from its config
    phases: dict[str, float]
    peak_mib: int


def read(parts: list[str], threads: int) -> dict[str, np.ndarray]:
    """The inputs' columns, as numpy (Symbol stays an Arrow array)."""
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        tables = list(pool.map(lambda p: storage.read_parquet(p, schema=INPUTS), parts))
    table = pa.concat_tables(tables) if tables else INPUTS.empty_table()
    columns: dict[str, Any] = {"Symbol": table.column("Symbol").combine_chunks()}
    for name in ("Date", "next_date"):
        columns[name] = table.column(name).cast(pa.timestamp("s")).to_numpy().astype("datetime64[D]")
    for field in INPUTS:
        if field.name not in columns:
            column = table.column(field.name)
            if pa.types.is_integer(field.type):
                column = column.cast(pa.float64())
            columns[field.name] = column.to_numpy()  # nulls (the last row's next) become NaN
    return columns


def forecast_alone(config: dict[str, Any]) -> Outcome:
    """The whole forecaster, in one Ray task (or in the caller's process, for tests)."""
    threads = int(config["params"].get("nthread") or os.cpu_count() or 1)
    with all_cpus(threads):
        return _forecast(config, threads)


def _forecast(config: dict[str, Any], threads: int) -> Outcome:
    params = dict(config["params"])
    phases = Phases()
    last = np.datetime64(config["last_session"], "D")
    with phases.timed("read"):
        columns = read(config["parts"], threads)
        calendar = Calendar.between(columns["Date"].min() if len(columns["Date"]) else last, last)
        market = (np.asarray(config["market_dates"], "datetime64[D]"), np.asarray(config["market_relative"]))
        rows = model.rows_of(columns, market, calendar)
    blocks = model.fold_blocks(calendar.sessions, last, config["folds"], config["fold_sessions"])
    with phases.timed("walk-forward"):
        folds = model.walk_forward(rows, calendar.sessions, blocks, params, config["rounds"],
                                   config["train_sessions"], keep_forecasts=True)  # fmt: skip
    with phases.timed("final fit"):
        window = model.window(rows, last, calendar.sessions, config["train_sessions"])
        fitted = model.fit(rows.take(window), params, config["rounds"])
    with phases.timed("forecast"):
        latest = rows.take(rows.date == last)
        forecast = model.predict(fitted.booster, latest)
    return Outcome(
        folds=folds,
        final=bytes(fitted.booster.save_raw(raw_format="ubj")),
        latest=latest,
        forecast=forecast,
        final_train_rows=fitted.train_rows,
        device=booster_device(fitted.booster),
        phases=phases.rounded(),
        peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    )
