"""The forecaster's gate: the walk-forward's skill per fold and pooled, against the three naive
forecasts an analyst would use instead, and the decision. The forecaster answers only when its
pooled MAE is below the best naive forecast's and its mean |log error| below the best naive one's
too; otherwise the naive forecast with the lowest MAE answers, named as such, with a range from
the 10th and 90th percentiles of its own walk-forward errors (log of actual over forecast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compute.stages.forecast.model import NAIVE, Fold, Scores
from compute.stages.forecast.results import FoldSkill, ForecastReport, Skill, WalkForward


def skill(scores: Scores, with_range: bool = False) -> Skill:
    return Skill.model_validate(scores.summary(with_range))


def walk_forward(folds: list[Fold]) -> WalkForward:
    pooled, naive = Scores(), {name: Scores() for name in NAIVE}
    rows = []
    for fold in folds:
        pooled = pooled + fold.model
        naive = {name: naive[name] + fold.naive[name] for name in NAIVE}
        rows.append(
            FoldSkill(
                first=str(fold.first), last=str(fold.last), cutoff=str(fold.cutoff),
                train_rows=fold.train_rows, seconds=round(fold.seconds, 3), model=skill(fold.model, True),
                naive={name: skill(s) for name, s in fold.naive.items()},
            )
        )  # fmt: skip
    naive_skill = {name: skill(s) for name, s in naive.items()}
    model = skill(pooled, True)
    best = min(naive_skill, key=lambda n: naive_skill[n].mae)
    best_log = min(naive_skill.values(), key=lambda s: s.mean_abs_log_error)
    return WalkForward(
        folds=rows,
        model=model,
        naive=naive_skill,
        best_naive=best,
        mae_below_best_naive_pct=_below(model.mae, naive_skill[best].mae),
        log_error_below_best_naive_pct=_below(model.mean_abs_log_error, best_log.mean_abs_log_error),
    )


def _below(value: float, reference: float) -> float:
    return round(100.0 * (1.0 - value / reference), 2) if reference > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    published_model: bool
    answers: str  # the table's `model` column
    why: str
    naive: str  # the best naive forecast's name
    naive_range: tuple[float, float]  # its log errors' 10th and 90th percentiles


def decide(walk: WalkForward, fingerprint: str, as_of: str, folds: list[Fold] | None = None) -> Decision:
    best = walk.best_naive
    ratios = np.concatenate([f.naive_log_ratios[best] for f in folds or []] or [np.zeros(1)])
    naive_range = (float(np.quantile(ratios, 0.1)), float(np.quantile(ratios, 0.9)))
    beats = walk.mae_below_best_naive_pct > 0 and walk.log_error_below_best_naive_pct > 0
    pooled = (
        f"pooled over {len(walk.folds)} walk-forward folds ({walk.model.forecasts:,} forecasts), "
        f"MAE {walk.mae_below_best_naive_pct:+.1f}% and mean |log error| "
        f"{walk.log_error_below_best_naive_pct:+.1f}% below the best naive forecast ({NAIVE[best]})"
    )
    if beats:
        name = f"forecaster:{as_of}-{fingerprint[:8]}"
        return Decision(True, name, f"the forecaster answers: {pooled}", best, naive_range)
    return Decision(
        False,
        f"naive:{best}",
        f"{NAIVE[best]} answers: the forecaster did not beat it ({pooled})",
        best,
        naive_range,
    )


def headline(result: ForecastReport) -> str:
    walk = result.walk_forward
    return (
        f"forecast: walk-forward MAE {walk.model.mae:,.0f} vs {walk.naive[walk.best_naive].mae:,.0f} "
        f"({NAIVE[walk.best_naive]}, {walk.mae_below_best_naive_pct:+.1f}%), mean |log error| "
        f"{walk.log_error_below_best_naive_pct:+.1f}%, 10-90% range coverage "
        f"{100 * (walk.model.coverage or 0):.0f}%; "
        + ("the forecaster answers" if result.published_model else f"{NAIVE[walk.best_naive]} answers")
    )


def table(walk: WalkForward) -> list[dict[str, Any]]:
    """The walk-forward as a table: a row per fold and forecaster, and the pooled rows."""
    out = []
    for label, model, naive in [
        *[(f"{f.first}..{f.last}", f.model, f.naive) for f in walk.folds],
        ("pooled", walk.model, walk.naive),
    ]:
        for name, s in [("forecaster", model), *[(f"naive: {NAIVE[n]}", naive[n]) for n in NAIVE]]:
            out.append({
                "sessions": label, "forecast by": name, "forecasts": s.forecasts, "MAE": round(s.mae),
                "mean |log error|": round(s.mean_abs_log_error, 4),
                "10-90% coverage": None if s.coverage is None else round(s.coverage, 3),
            })  # fmt: skip
    return out
