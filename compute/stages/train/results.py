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
    # seconds: read, dmatrix, boosting, predict, champion, folds, profiles, write
    phases: dict[str, float] = {}
    data_on: str = "host"  # where XGBoost's input was: "gpu" (CuPy arrays) or "host" (numpy)
    peak_mib: int = 0  # its process's peak resident memory
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
    """How the model was trained (compute/stages/train/params.py chose the layout)."""

    trainer: str  # "ray task" (the single layout) or "ray.train.xgboost.XGBoostTrainer"
    layout: str = "distributed"  # "single" or "distributed"
    why: str = ""  # why that layout
    workers: int
    resources_per_worker: dict[str, float] = {}
    device: str  # the one asked of XGBoost
    xgboost_device: str | None = None  # the one it used, as the first worker's booster reports it
    data_on: str = "host"  # where XGBoost's input was: "gpu" (CuPy arrays) or "host" (numpy)


class Timing(BaseModel):
    """Seconds. The fit is the whole call from the driver: the workers' start (Ray Train's or
    the task's: scheduling, a process, imports), their work, and their stop. `phases` splits the
    work of the slowest worker; each phase is that worker's."""

    fit_seconds: float
    start_seconds: float = 0.0
    stop_seconds: float = 0.0
    load_seconds: float
    boosting_seconds: float
    backtest_seconds: float = 0.0  # boosting the walk-forward folds
    phases: dict[str, float] = {}
    stage_seconds: float = 0.0
    worker_peak_mib: int = 0  # the largest peak resident memory of a worker's process


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
