"""The training report for the Prefect UI: model against baseline, with the plots inline."""

from __future__ import annotations

import base64

from compute.stages.train.results import TrainMetrics


def training_markdown(metrics: TrainMetrics, plots: dict[str, bytes]) -> str:
    """Model vs baseline on the time holdout (and the random split), with the plots inline (PNG
    data URIs: a browser will not open a file:// link from the Prefect UI)."""
    split = metrics.time_split
    rows = [("model, time holdout", split.model), ("baseline, time holdout", split.baseline)]
    if metrics.random_split:
        rows += [("model, random 80/20", metrics.random_split.model)]
        rows += [("baseline, random 80/20", metrics.random_split.baseline)]
    lines = [
        f"# Training: {split.train_rows:,} rows before {split.cutoff}, {split.test_rows:,} after",
        "",
        "| | MAE | RMSE | R² | MAPE % |",
        "|---|---:|---:|---:|---:|",
        *[f"| {n} | {m.mae:,.0f} | {m.rmse:,.0f} | {m.r2:.4f} | {m.mape_pct:.1f} |" for n, m in rows],
        "",
        f"MAE vs baseline: {split.mae_improvement_pct:+.2f}% better. "
        f"{metrics.engine.workers} workers on {metrics.engine.device}, "
        f"fit {metrics.timing.ray_train_fit_seconds:.1f} s.",
        "",
    ]
    for title, png in plots.items():
        lines += [
            f"## {title}",
            "",
            f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})",
            "",
        ]
    return "\n".join(lines) + "\n"
