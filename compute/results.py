"""What each stage returns, typed: the CLI, the reports, the Prefect artifacts and the tests read
these by attribute. Each stage's result is also its JSON report (reports/ingest.json,
reports/features.json, model/metrics.json) and is stored in the stage's manifest, so that a reused
stage returns exactly what it returned when it was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class StageResult(BaseModel):
    # NaN metrics (an empty split) stay NaN in JSON, as json.dumps writes them.
    model_config = ConfigDict(ser_json_inf_nan="constants")
    # Fields left out of the JSON while they hold their default (None, or False for `reused`).
    omit_when_default: ClassVar[tuple[str, ...]] = ()

    reused: bool = False  # the stage was unchanged since the last run and nothing was rebuilt

    def to_json(self) -> dict[str, Any]:
        omit = {"reused", *self.omit_when_default}
        data = self.model_dump(mode="json", exclude={n for n in omit if getattr(self, n) in (None, False)})
        if self.reused:
            data["reused"] = data.pop("reused")  # last, where readers of older reports found it
        return data

    def timed(self, seconds: float) -> Self:
        """This result with the stage's own time (excluding Ray's start) filled in, where it has one."""
        if "seconds" not in type(self).model_fields:
            return self
        return self.model_copy(update={"seconds": round(seconds, 3)})


# --- ingest ---------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """One source file's outcome, as a Ray task reports it."""

    file: str
    symbol: str
    status: str = "ingested"  # or "failed"
    reason: str | None = None
    rows_read: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    zero_prices: dict[str, int] = field(default_factory=dict)
    reordered: bool = False  # rows were not in date order in the source
    has_metadata: bool = True


class FileCounts(BaseModel):
    seen: int
    ingested: int
    failed: int


class RowCounts(BaseModel):
    read: int
    kept: int
    quarantined: int
    in_failed_files: int


class FailedFile(BaseModel):
    file: str
    reason: str | None
    rows: int


class IngestWarnings(BaseModel):
    zero_price_rows_kept: dict[str, int]


class IngestIncremental(BaseModel):
    files_ingested: int
    parts_carried_over: int
    parts_built: int


class IngestReport(StageResult):
    source: str
    files: FileCounts
    rows: RowCounts
    quarantined_by_reason: dict[str, int]
    failed_files: list[FailedFile]
    symbols_without_metadata: list[str]
    metadata_warning: str | None
    files_reordered_by_date: list[str]
    warnings: IngestWarnings
    ignored_members: list[str]
    seconds: float = 0.0
    per_file: list[FileResult]
    incremental: IngestIncremental
    ray_nodes: dict[str, int]


# --- features -------------------------------------------------------------------------------------


class FeaturesIncremental(BaseModel):
    parts_carried_over: int
    parts_built: int


class FeaturesReport(StageResult):
    parts: int
    rows: int
    symbols: int
    rows_with_features: int
    incremental: FeaturesIncremental
    seconds: float = 0.0
    ray_nodes: dict[str, int]


# --- train ----------------------------------------------------------------------------------------


class Metrics(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")
    mae: float
    rmse: float
    r2: float
    mape_pct: float


class TimeSplit(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")
    cutoff: str
    train_dates: list[str] | None
    test_dates: list[str] | None
    train_rows: int
    test_rows: int
    model: Metrics
    baseline: Metrics
    mae_improvement_pct: float | None


class RandomSplit(BaseModel):
    test_fraction: float
    train_rows: int
    test_rows: int
    model: Metrics
    baseline: Metrics


class TrainRows(BaseModel):
    stage2: int
    dropped_null_features: int
    used: int


class Engine(BaseModel):
    trainer: str
    workers: int
    device: str


class Timing(BaseModel):
    ray_train_fit_seconds: float
    boosting_seconds: float
    load_seconds: float
    ray_train_start_seconds: float = 0.0
    ray_train_stop_seconds: float = 0.0
    stage_seconds: float = 0.0


class TrainMetrics(StageResult):
    """model/metrics.json."""

    omit_when_default = ("random_split",)

    time_split: TimeSplit
    rows: TrainRows
    engine: Engine
    params: dict[str, Any]
    rounds: int
    random_split: RandomSplit | None = None  # only when the random-split comparison was asked for
    timing: Timing
    fingerprint: str

    def timed(self, seconds: float) -> Self:
        timing = self.timing.model_copy(update={"stage_seconds": round(seconds, 3)})
        return self.model_copy(update={"timing": timing})


# --- package --------------------------------------------------------------------------------------


class PackageResult(StageResult):
    model: str  # the model's tag in the BentoML model store
    bento: str  # the Bento's tag


# --- the whole pipeline ---------------------------------------------------------------------------


class PipelineResult(BaseModel):
    """What `stock-pipeline` returns: each stage that ran, in order."""

    ingest: IngestReport | None = None
    features: FeaturesReport | None = None
    train: TrainMetrics | None = None
    package: PackageResult | None = None

    def stages(self) -> dict[str, StageResult]:
        return {name: result for name in type(self).model_fields if (result := getattr(self, name))}
