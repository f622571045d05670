"""The forecast table the service answers GET and POST /forecast from: a lookup, every answer's JSON
encoded once when the table is loaded. It comes from an output's forecast/ folder (what `stockpipe
serve` follows) or from the BentoML model store (`stock-forecast:<version>`, what a built Bento
holds; bento/package.py puts it there)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, Strict

from compute import publish, storage
from compute.layout import FORECAST_RESULT, FORECAST_TABLE, NOT_FORECAST_TABLE

FORECAST_MODEL_NAME = "stock-forecast"
FILES = (FORECAST_TABLE, NOT_FORECAST_TABLE, FORECAST_RESULT)
# A ticker as the exchanges and the Kaggle files spell them: letters, digits and . - $ # ^ = _
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-$#^=_]{0,19}$"
SYMBOL = re.compile(SYMBOL_PATTERN)
MAX_SYMBOLS = 1000  # per POST /forecast


class Forecast(BaseModel):
    symbol: str
    date: str = Field(description="the session forecast: the exchange's next session after as_of")
    volume: int = Field(description="shares: the forecast (the median)")
    low: int = Field(description="shares: the 10th percentile")
    high: int = Field(description="shares: the 90th percentile")
    as_of: str = Field(description="the symbol's last session in the data, which the forecast starts from")
    model: str = Field(description="what forecast it: forecaster:<version>, or naive:<name> when the "
                       "forecaster did not beat that naive forecast on the walk-forward")  # fmt: skip


class NotFound(BaseModel):
    symbol: str
    error: str


Ticker = Annotated[str, Strict(), Field(pattern=SYMBOL_PATTERN)]


class Symbols(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbols: list[Ticker] = Field(
        min_length=1, max_length=MAX_SYMBOLS, description="tickers, e.g. AAPL", examples=[["AAPL", "DIA"]]
    )


class ForecastBatch(BaseModel):
    forecasts: list[Forecast] = Field(description="for each symbol asked for that has a forecast, in order")
    not_found: list[NotFound] = Field(description="each symbol asked for without one, and why")


class Skill(BaseModel):
    """Errors over the walk-forward's forecasts (compute/stages/forecast/results.py: Skill)."""

    forecasts: int
    mae: float = Field(description="shares")
    mean_abs_log_error: float = Field(description="mean |log(1 + forecast) - log(1 + actual)|")
    coverage: float | None = Field(description="share of actual volumes within [low, high]")


class ForecasterInfo(BaseModel):
    """Which forecast answers /forecast, and how it did on the walk-forward."""

    version: str = Field(description="the forecast's version: its run's fingerprint")
    answers: str
    published_model: bool = Field(description="false: the forecaster did not beat the best naive forecast")
    why: str
    as_of: str
    date: str
    symbols: int
    walk_forward: Skill = Field(description="the forecaster, pooled over the walk-forward folds")
    best_naive: str
    best_naive_walk_forward: Skill
    source: str = Field(description="where it was read: an output's forecast/ folder, or the model store")


@dataclass(frozen=True)
class Table:
    version: str
    bodies: dict[str, bytes]  # SYMBOL -> its Forecast, as JSON
    rows: dict[str, Forecast]
    missing: dict[str, str]  # SYMBOL -> why it has no forecast
    info: ForecasterInfo

    @classmethod
    def read(cls, folder: str, version: str, source: str) -> Table:
        """The table from a folder holding FILES (local or on a store)."""
        # The stage's result as JSON: the service reads the fields it shows, without the stage's code.
        result = storage.read_json(storage.join(folder, FORECAST_RESULT))
        table = storage.read_parquet(storage.join(folder, FORECAST_TABLE))
        rows = {}
        for row in table.select(list(Forecast.model_fields)).to_pylist():
            rows[row["symbol"].upper()] = Forecast.model_validate(row)
        missing = {
            row["symbol"].upper(): f"no forecast for {row['symbol']}: {row['reason']}"
            for row in storage.read_parquet(storage.join(folder, NOT_FORECAST_TABLE)).to_pylist()
        }
        walk, best = result["walk_forward"], result["walk_forward"]["best_naive"]
        info = ForecasterInfo(
            version=version, answers=result["answers"], published_model=result["published_model"],
            why=result["why"], as_of=result["as_of"], date=result["date"], symbols=len(rows),
            walk_forward=walk["model"], best_naive=best, best_naive_walk_forward=walk["naive"][best],
            source=source,
        )  # fmt: skip
        bodies = {symbol: pydantic_core.to_json(row.model_dump()) for symbol, row in rows.items()}
        return cls(version, bodies, rows, missing, info)

    @classmethod
    def published(cls, output: str) -> Table | None:
        """An output's published forecast (None: there is none)."""
        folder = storage.join(output, "forecast")
        manifest = publish.read_manifest(folder)
        if manifest is None:
            return None
        return cls.read(publish.data_dir(folder, manifest), manifest.fingerprint[:16], folder)

    def why_not(self, symbol: str) -> str:
        """The 404's message for a symbol without a forecast."""
        if symbol in self.missing:
            return self.missing[symbol]
        return (
            f"unknown symbol {symbol}: the forecast's data ({self.info.symbols} symbols with a forecast, as "
            f"of {self.info.as_of}) has no such symbol"
        )


def version_of(output: str) -> str | None:
    """The published forecast's version in `output`, reading its manifest alone."""
    manifest = publish.read_manifest(storage.join(output, "forecast"))
    return manifest.fingerprint[:16] if manifest else None


def write_files(folder: str, target: Path) -> None:
    """Copy the table's files from a published forecast folder into `target` (the model store)."""
    for name in FILES:
        (target / name).write_bytes(storage.read_bytes(storage.join(folder, name)))
