"""What train returns, typed: model/metrics.json; and what each Ray Train worker hands the driver
(rank-N.json in the work folder), typed too, since it crosses a process boundary."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from compute.drift import Counts, DriftReport, Profile
from compute.metrics import ErrorSums, Metrics
from compute.model import Fold
from compute.stage import StageResult

History = dict[str, dict[str, list[float]]]  # split ("train", "validation") -> metric -> per round


class FitOutcome(BaseModel):
    """One model fitted on one worker's rows: its loss per round and error sums on its test rows."""

    model_config = ConfigDict(ser_json_inf_nan="constants")
    history: History
    seconds: float  # boosting
    device: str = ""  # what XGBoost used, from the booster's config: "cpu" after a fall-back from CUDA
    model: ErrorSums
    baseline: ErrorSums
    train_rows: int
    test_rows: int


class FoldOutcome(BaseModel):
    """One walk-forward fold of the backtest on one worker."""

    year: int
    outcome: FitOutcome


class WorkerResult(BaseModel):
    """What one Ray Train worker reports (rank-N.json)."""

    rank: int
    began: float  # wall clock when its function started (Ray Train's start-up is before it)
    ended: float  # wall clock when it was done (Ray Train's shutdown is after it)
    load_seconds: float
    cutoff: str  # the time split's first test date, the same on every worker
    read: int  # rows in its stage-2 parts
    rows: int  # of them, rows with both features
    train_dates: list[str] | None  # first and last
    test_dates: list[str] | None
    time: FitOutcome  # the time split's model
    champion: ErrorSums | None = None  # the champion on the same test rows, when there is one
    random: FitOutcome | None  # the random split's, when asked for
    backtest: list[FoldOutcome] = []  # the walk-forward folds, when asked for
    symbols: list[str] = []  # that have a row with both features
    profile: dict[str, Profile] = {}  # per column (compute/drift.py): for the new model's bins
    drift: dict[str, Counts] = {}  # per column, over the champion's bins, when its card has them


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
    device: str  # the one asked of XGBoost
    xgboost_device: str | None = None  # the one it used, as the first worker's booster reports it


class Timing(BaseModel):
    ray_train_fit_seconds: float
    boosting_seconds: float
    load_seconds: float
    ray_train_start_seconds: float = 0.0
    ray_train_stop_seconds: float = 0.0
    backtest_seconds: float = 0.0  # boosting the walk-forward folds
    stage_seconds: float = 0.0


class Gate(BaseModel):
    """The challenger (this model) against the champion, scored on the same rows: the challenger's
    time holdout (compute/stages/train/gate.py)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")
    rows: int  # the holdout rows both were scored on
    champion: str | None  # the champion's version, when there was one
    champion_metrics: Metrics | None  # the champion on those rows (the challenger's are time_split.model)
    tolerance_pct: float
    promote: bool  # the decision
    reason: str


class TrainMetrics(StageResult):
    """metrics.json of a model version."""

    omit_when_default = ("random_split", "backtest")

    version: str  # in <out>/models/
    time_split: TimeSplit
    rows: TrainRows
    engine: Engine
    params: dict[str, Any]
    rounds: int
    random_split: RandomSplit | None = None  # only when the random-split comparison was asked for
    backtest: list[Fold] | None = None  # only when folds were asked for (train_backtest_folds)
    timing: Timing
    fingerprint: str
    gate: Gate
    drift: DriftReport  # the new stage 2 against the champion's data (reports/drift.json)

    def timed(self, seconds: float) -> Self:
        timing = self.timing.model_copy(update={"stage_seconds": round(seconds, 3)})
        return self.model_copy(update={"timing": timing})
