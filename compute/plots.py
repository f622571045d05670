"""Training report plots (PNG), drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def learning_curve(history: dict[str, dict[str, list[float]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, metrics in history.items():
        for metric, values in metrics.items():
            ax.plot(range(len(values)), values, label=f"{split} {metric}")
    ax.set_xlabel("boosting round")
    ax.set_ylabel("loss (weighted, on Volume / vol_moving_avg)")
    ax.set_title("Learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_vs_actual(sample: dict[str, np.ndarray], path: Path) -> None:
    actual, predicted, baseline = (np.maximum(sample[k], 1.0) for k in ("actual", "predicted", "baseline"))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(actual, baseline, s=2, alpha=0.25, label="baseline (vol_moving_avg)", color="tab:gray")
    ax.scatter(actual, predicted, s=2, alpha=0.35, label="model", color="tab:blue")
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="perfect")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("actual Volume")
    ax.set_ylabel("predicted Volume")
    ax.set_title(f"Time holdout, {len(actual):,} sampled rows")
    ax.legend(markerscale=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
