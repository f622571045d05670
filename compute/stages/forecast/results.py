"""What forecast returns, typed: forecast/forecast.json and reports/forecast.json."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from compute.stage import StageResult


class Skill(BaseModel):
    """One forecaster's errors over forecasts whose actual is known."""

    model_config = ConfigDict(ser_json_inf_nan="constants")
    forecasts: int
    mae: float  # shares
    mean_abs_log_error: float  # mean |log(1 + forecast) - log(1 + actual)|
    coverage: float | None = None  # share of actuals within [low, high]: the model's 10-90% range


class FoldSkill(BaseModel):
    first: str  # the first and last sessions it forecast
    last: str
    cutoff: str  # the model was trained on rows whose next session is on or before it
    train_rows: int
    seconds: float  # its fit
    model: Skill
    naive: dict[str, Skill]  # last, mean5, mean30


class WalkForward(BaseModel):
    folds: list[FoldSkill]
    model: Skill  # pooled over the folds
    naive: dict[str, Skill]
    best_naive: str  # the naive forecast with the lowest pooled MAE
    mae_below_best_naive_pct: float  # positive: the model's MAE is lower by this much
    log_error_below_best_naive_pct: float  # against the naive with the lowest mean |log error|


class ForecastIncremental(BaseModel):
    parts_carried_over: int
    parts_built: int


class ForecastReport(StageResult):
    as_of: str  # the data's last session
    date: str  # the session forecast: the exchange's next one
    answers: str  # what the table holds: the forecaster's version, or the naive forecast's name
    published_model: bool  # false: the forecaster did not beat the best naive forecast
    why: str  # which of the two answers, and why
    symbols: int  # forecast
    not_forecast: dict[str, int]  # symbols without a forecast, by reason
    walk_forward: WalkForward
    train_rows: int  # the final model's
    device: str  # where XGBoost trained ("cpu", "cuda:0")
    layout: str  # how the fit ran, and why
    phases: dict[str, float]  # seconds: inputs (the fan-out), read, walk-forward, final fit, forecast
    peak_mib: int  # the fit's process
    incremental: ForecastIncremental
    seconds: float = 0.0
    ray_nodes: dict[str, int]
