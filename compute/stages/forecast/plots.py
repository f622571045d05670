"""The forecast's plot (PNG): forecast, 10-90% range and actual over the last walk-forward fold,
for the symbols that traded most, drawn as compute/stages/train/plots.py draws (Agg, no pyplot)."""

from __future__ import annotations

import numpy as np

from compute.stages.forecast.model import Fold
from compute.stages.train.plots import _figure, _png

SYMBOLS = 4


def last_fold(fold: Fold) -> bytes:
    rows, forecast = fold.tested, fold.forecast
    assert rows is not None and forecast is not None
    symbols = np.asarray(rows.symbol.to_pylist(), dtype=object)
    names, index = np.unique(symbols, return_inverse=True)
    traded = np.bincount(index, weights=rows.actual, minlength=len(names))
    picked = names[np.argsort(-traded)[:SYMBOLS]]
    fig = _figure(figsize=(10, 2.4 * len(picked) + 0.6))
    axes = fig.subplots(max(len(picked), 1), 1, squeeze=False)[:, 0]
    for ax, symbol in zip(axes, picked, strict=False):
        mine = symbols == symbol
        days = rows.target_date[mine]
        order = np.argsort(days)
        days, low, mid, high = days[order], *(forecast[mine][order].T)
        ax.fill_between(days, low, high, color="tab:blue", alpha=0.2, label="10-90% range")
        ax.plot(days, mid, color="tab:blue", marker="o", label="forecast")
        ax.plot(days, rows.actual[mine][order], color="black", marker="x", linestyle="", label="actual")
        ax.plot(
            days, rows.naive["mean5"][mine][order], color="tab:gray", linestyle="--", label="5-session mean"
        )
        ax.set_title(
            f"{symbol}: next-session volume, {fold.first}..{fold.last} (trained up to {fold.cutoff})"
        )
        ax.set_ylabel("shares")
        ax.tick_params(axis="x", labelsize=8)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.95, bottom=0.06, hspace=0.45)
    return _png(fig, dpi=100)
