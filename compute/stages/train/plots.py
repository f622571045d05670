"""Training report plots (PNG), drawn with matplotlib's object API and its Agg renderer (no pyplot:
no global state). The stage calls `prepare` while its workers train, since the driver only waits
then: matplotlib's import and a first figure (which loads the fonts) take about 0.5 s, a few
percent of the stage on the 2021 vintage. Margins are set, not computed (tight_layout renders every
text once more to measure it)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from compute.drift import DriftReport
    from compute.model import Fold


def _figure(**kwargs: object) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)  # type: ignore[arg-type]


def prepare() -> None:
    """Import matplotlib and draw a first figure now."""
    fig = _figure(figsize=(2, 1))
    fig.subplots().set_title("warm-up")
    _png(fig, dpi=50)


def learning_curve(history: dict[str, dict[str, list[float]]]) -> bytes:
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for split, metrics in history.items():
        for metric, values in metrics.items():
            ax.plot(range(len(values)), values, label=f"{split} {metric}")
    ax.set_xlabel("boosting round")
    ax.set_ylabel("loss (weighted, on Volume / vol_moving_avg)")
    ax.set_title("Learning curve")
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.92)
    return _png(fig, dpi=110)


def predicted_vs_actual(sample: dict[str, np.ndarray]) -> bytes:
    """Side by side on log axes: the baseline (vol_moving_avg) and the model, against the truth."""
    # Volume 0 is drawn at 1 so that it shows on a log axis.
    actual = np.maximum(sample["actual"], 1.0)
    fig = _figure(figsize=(11, 5.5))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    low, high = float(actual.min()), float(actual.max())
    for ax, key, title in [
        (axes[0], "baseline", "baseline: vol_moving_avg"),
        (axes[1], "predicted", "model"),
    ]:
        # Markers of one line, not a scatter: the same picture, drawn in a third of the time.
        ax.plot(actual, np.maximum(sample[key], 1.0), ".", markersize=2, alpha=0.3, linestyle="none")
        ax.plot([low, high], [low, high], color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("actual Volume")
        ax.set_title(title)
    axes[0].set_ylabel("predicted Volume")
    fig.suptitle(f"Time holdout, {len(actual):,} sampled rows")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.88, wspace=0.05)
    return _png(fig, dpi=100)


def backtest(folds: list[Fold]) -> bytes:
    """MAE per walk-forward fold: the model beside the baseline, year by year."""
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    years = np.arange(len(folds))
    ax.bar(years - 0.2, [f.baseline.mae for f in folds], width=0.4, label="baseline: vol_moving_avg")
    ax.bar(years + 0.2, [f.model.mae for f in folds], width=0.4, label="model")
    ax.set_xticks(years, [str(f.year) for f in folds])
    ax.set_xlabel("test year (trained on every earlier row)")
    ax.set_ylabel("MAE (shares)")
    ax.set_title("Backtest: walk-forward folds")
    ax.set_ylim(0, 1.25 * max(max(f.baseline.mae, f.model.mae) for f in folds))  # room for the legend
    ax.legend(loc="upper center", ncol=2)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.92)
    return _png(fig, dpi=110)


def drift(report: DriftReport) -> bytes:
    """Per profiled column, the share of rows in each of the reference's quantile bins: the data
    the champion was trained on against the new stage 2."""
    fig = _figure(figsize=(10, 3))
    axes = fig.subplots(1, max(len(report.columns), 1), squeeze=False)
    for ax, column in zip(axes[0], report.columns, strict=False):
        bins = np.arange(len(column.expected_shares))
        ax.bar(bins - 0.2, column.expected_shares, width=0.4, label=f"{report.reference}'s data")
        ax.bar(bins + 0.2, column.actual_shares, width=0.4, label="new stage 2")
        ax.set_title(f"{column.column}: PSI {column.psi:.3f}", fontsize=9)
        ax.set_xlabel("training quantile bin", fontsize=8)
    axes[0][0].set_ylabel("share of rows")
    axes[0][0].legend(fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.17, top=0.88, wspace=0.25)
    return _png(fig, dpi=90)


def _png(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
