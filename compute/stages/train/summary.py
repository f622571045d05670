"""The workers' results merged into the typed metrics, the training log and the model card."""

from __future__ import annotations

import hashlib
import platform
import time

import numpy as np
import pyarrow as pa
import ray
import xgboost as xgb

from compute import drift, storage
from compute.metrics import Metrics, merge_all
from compute.model import Fold, HoldoutMetrics, ModelCard
from compute.settings import Settings
from compute.stages.train import gate
from compute.stages.train.fit import Fitted
from compute.stages.train.results import (
    Engine,
    FitOutcome,
    Gate,
    History,
    RandomSplit,
    TimeSplit,
    Timing,
    TrainMetrics,
    TrainRows,
    WorkerResult,
)


def summarise(
    fitted: Fitted,
    *,
    version: str,
    champion: gate.Champion | None,
    engine: Engine,
    params: dict[str, object],
    settings: Settings,
    fingerprint: str,
) -> TrainMetrics:
    """One TrainMetrics from every worker's result (each read its own stage-2 parts), with the
    gate's comparison of this model and the champion on the same rows, and the drift of this
    stage 2 from the champion's data (its card's bins)."""
    results = fitted.workers

    def merged(outcomes: list[FitOutcome], which: str) -> Metrics:
        return merge_all([getattr(o, which) for o in outcomes]).summary()

    def span(spans: list[list[str] | None]) -> list[str] | None:
        dates = [d for d in spans if d]
        return [min(d[0] for d in dates), max(d[1] for d in dates)] if dates else None

    timed = [r.time for r in results]
    slowest = max(results, key=lambda r: r.ended - r.began)
    model, baseline = merged(timed, "model"), merged(timed, "baseline")
    random_split = None
    randoms = [r.random for r in results if r.random]
    if len(randoms) == len(results):
        random_split = RandomSplit(
            test_fraction=settings.holdout_fraction,
            train_rows=sum(o.train_rows for o in randoms),
            test_rows=sum(o.test_rows for o in randoms),
            model=merged(randoms, "model"),
            baseline=merged(randoms, "baseline"),
        )
    scored = [r.champion for r in results if r.champion is not None]
    champion_metrics = merge_all(scored).summary() if champion and len(scored) == len(results) else None
    test_rows = sum(o.test_rows for o in timed)
    decision = gate.decide(
        model.mae,
        baseline.mae,
        champion,
        champion_metrics.mae if champion_metrics else None,
        settings.gate_tolerance_pct,
    )
    return TrainMetrics(
        version=version,
        backtest=backtest(results) or None,
        time_split=TimeSplit(
            cutoff=results[0].cutoff,  # the same on every worker
            train_dates=span([r.train_dates for r in results]),
            test_dates=span([r.test_dates for r in results]),
            train_rows=sum(o.train_rows for o in timed),
            test_rows=test_rows,
            model=model,
            baseline=baseline,
            mae_improvement_pct=100.0 * (1 - model.mae / baseline.mae) if baseline.mae else None,
        ),
        rows=TrainRows(
            stage2=sum(r.read for r in results),
            dropped_null_features=sum(r.read - r.rows for r in results),
            used=sum(r.rows for r in results),
        ),
        engine=engine,
        params=params,
        rounds=settings.train_rounds,
        random_split=random_split,
        timing=Timing(
            fit_seconds=round(fitted.seconds, 3),
            # Ray's own time: starting the workers (Ray Train's controller and workers, or the
            # task's process), and after the last worker is done, stopping them.
            start_seconds=round(min(r.began for r in results) - fitted.began, 3),
            stop_seconds=round(fitted.ended - max(r.ended for r in results), 3),
            load_seconds=round(max(r.load_seconds for r in results), 3),
            boosting_seconds=round(max(o.seconds for o in timed), 3),
            backtest_seconds=round(max(sum(f.outcome.seconds for f in r.backtest) for r in results), 3),
            phases=slowest.phases,
            worker_peak_mib=max(r.peak_mib for r in results),
        ),
        fingerprint=fingerprint,
        drift=drift_report(
            results, champion.card if champion else None, champion.version if champion else None
        ),
        gate=Gate(
            rows=test_rows,
            champion=champion.version if champion else None,
            champion_metrics=champion_metrics,
            tolerance_pct=settings.gate_tolerance_pct,
            promote=decision.promote,
            reason=decision.reason,
        ),
    )


def backtest(results: list[WorkerResult]) -> list[Fold]:
    """Each walk-forward fold's metrics over every worker's rows (the same folds on every worker)."""
    folds = []
    for i, first in enumerate(results[0].backtest):
        outcomes = [r.backtest[i].outcome for r in results]
        model, baseline = (
            merge_all([getattr(o, k) for o in outcomes]).summary() for k in ("model", "baseline")
        )
        folds.append(
            Fold(
                year=first.year,
                train_rows=sum(o.train_rows for o in outcomes),
                test_rows=sum(o.test_rows for o in outcomes),
                model=model,
                baseline=baseline,
                mae_improvement_pct=100.0 * (1 - model.mae / baseline.mae) if baseline.mae else None,
            )
        )
    return folds


def data_profile(fitted: Fitted) -> tuple[dict[str, drift.Bins], list[str]]:
    """The quantile bins of every profiled column over all workers' rows, and their symbols."""
    bins = {c: drift.merged_bins([r.profile[c] for r in fitted.workers]) for c in drift.COLUMNS}
    return bins, sorted({s for r in fitted.workers for s in r.symbols})


def drift_report(
    results: list[WorkerResult], reference: ModelCard | None, version: str | None
) -> drift.DriftReport:
    """This stage 2 against the data the champion was trained on, over its card's bins."""
    rows = sum(r.rows for r in results)
    symbols = {s for r in results for s in r.symbols}
    if reference is None or not reference.feature_bins or not all(r.drift for r in results):
        note = (
            "no champion to compare with" if version is None else f"the champion {version}'s card has no bins"
        )
        return drift.DriftReport(
            reference=version,
            reference_rows=None,
            rows=rows,
            columns=[],
            symbols_new=[],
            symbols_gone=[],
            note=note,
        )
    columns = [
        drift.column_drift(
            column,
            reference.feature_bins[column],
            np.sum([r.drift[column].counts for r in results], axis=0),
            sum(r.drift[column].outside for r in results),
        )
        for column in drift.COLUMNS
    ]
    known = set(reference.symbols or [])
    return drift.DriftReport(
        reference=version,
        reference_rows=(reference.train_rows or 0) + (reference.test_rows or 0),
        rows=rows,
        columns=columns,
        symbols_new=sorted(symbols - known) if reference.symbols is not None else [],
        symbols_gone=sorted(known - symbols),
    )


def history(fitted: Fitted) -> History:
    """Every round's loss: XGBoost's collective evaluates on all workers' rows, so rank 0's is all."""
    return fitted.workers[0].time.history


def training_log(history: History) -> str:
    """One line per boosting round: the train and validation loss."""
    lines = []
    for metric in history["train"]:
        rounds = zip(history["train"][metric], history["validation"][metric], strict=True)
        for i, (train, validation) in enumerate(rounds):
            lines.append(f"round={i} train-{metric}={train:.8g} validation-{metric}={validation:.8g}")
    return "\n".join(lines) + "\n"


def model_card(
    metrics: TrainMetrics,
    fitted: Fitted,
    stage2_hash: str,
    stage2: str,
    code: str,
) -> ModelCard:
    """model.json, less model.bin's SHA-256 (compute.model.write adds it); `stage2_hash` is
    `data_hash` of its parts, `stage2` and `code` the fingerprints of the stage 2 and the code it
    was trained with."""
    bins, symbols = data_profile(fitted)
    return ModelCard(
        feature_bins=bins,
        symbols=symbols,
        drift_psi={c.column: c.psi for c in metrics.drift.columns} or None,
        drift_reference=metrics.drift.reference if metrics.drift.columns else None,
        version=metrics.version,
        stage2_fingerprint=stage2,
        code_version=code,
        params=metrics.params,
        rounds=metrics.rounds,
        train_rows=metrics.time_split.train_rows,
        test_rows=metrics.time_split.test_rows,
        backtest=metrics.backtest,
        objective=str(metrics.params["objective"]),
        training_window=metrics.time_split.train_dates,
        holdout_cutoff=metrics.time_split.cutoff,
        data_hash=stage2_hash,
        metrics=HoldoutMetrics(time_split=metrics.time_split.model, baseline=metrics.time_split.baseline),
        versions={
            "xgboost": xgb.__version__,
            "ray": ray.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def data_hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(storage.basename(part).encode())
        fs, path = storage.resolve(part)
        with fs.open_input_stream(path) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
