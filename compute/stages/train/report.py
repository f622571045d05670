"""The training report: model against baseline with the plots inline, and the gate's decision
(a line for the terminal and the log, a table for the Prefect UI)."""

from __future__ import annotations

import base64
from typing import Any

from compute.metrics import Metrics
from compute.model import MODEL_NAME
from compute.stages.train.results import TrainMetrics


def gate_line(metrics: TrainMetrics) -> str:
    """e.g. `train: challenger stock-volume:V MAE 23,849,709 vs champion stock-volume:C MAE
    2,835,834 (baseline 2,923,482) on the same 22,947 rows: champion kept: it is worse ...`"""
    gate, split = metrics.gate, metrics.time_split
    said = f"train: challenger {MODEL_NAME}:{metrics.version} MAE {split.model.mae:,.0f}"
    if gate.champion:
        scored = f"MAE {gate.champion_metrics.mae:,.0f}" if gate.champion_metrics else "not scored"
        said += f" vs champion {MODEL_NAME}:{gate.champion} {scored}"
    said += f" (baseline {split.baseline.mae:,.0f}) on the same {gate.rows:,} rows: "
    if gate.promote:
        return said + f"promoted: {gate.reason}"
    return (
        said + ("champion kept: " if gate.champion else "not promoted, nothing to serve yet: ") + gate.reason
    )


def drift_line(metrics: TrainMetrics) -> str:
    """The drift of this stage 2 from the champion's data, in a line: a warning above PSI 0.1."""
    report = metrics.drift
    if not report.columns:
        return f"  drift:      not measured: {report.note}"
    psi = ", ".join(f"{c.column} {c.psi:.3f}" for c in report.columns)
    symbols = f"; {len(report.symbols_new)} symbols new, {len(report.symbols_gone)} gone"
    worst = report.worst()
    assert worst is not None
    if worst.level == "none":
        return f"  drift:      none against the data of {MODEL_NAME}:{report.reference} (PSI {psi}){symbols}"
    shifted = ", ".join(
        f"{c.column} PSI {c.psi:.3f} ({c.level})" for c in report.columns if c.level != "none"
    )
    return (
        f"  warning: drift: {shifted} against the data of {MODEL_NAME}:{report.reference} "
        f"(0.1 moderate, 0.2 significant){symbols}"
    )


def drift_markdown(metrics: TrainMetrics, plot: bytes | None) -> str:
    """The drift report for the Prefect UI: a table per column, the symbols, the plot inline."""
    report = metrics.drift
    if not report.columns:
        return f"# Drift\n\nNot measured: {report.note}.\n"
    lines = [
        f"# Drift: this stage 2 ({report.rows:,} rows) against the data of {MODEL_NAME}:{report.reference} "
        f"({report.reference_rows or 0:,} rows)",
        "",
        "| column | PSI | level | rows outside its training range |",
        "|---|---:|---|---:|",
        *[
            f"| {c.column} | {c.psi:.4f} | {c.level} | {100 * c.outside_range_share:.2f}% |"
            for c in report.columns
        ],
        "",
        f"Symbols new: {len(report.symbols_new)} ({', '.join(report.symbols_new[:10])}"
        f"{', ...' if len(report.symbols_new) > 10 else ''}); gone: {len(report.symbols_gone)} "
        f"({', '.join(report.symbols_gone[:10])}{', ...' if len(report.symbols_gone) > 10 else ''}).",
        "",
        "PSI below 0.1: no shift; 0.1 to 0.2: moderate; 0.2 or more: significant.",
        "",
    ]
    if plot:
        lines += [f"![Drift](data:image/png;base64,{base64.b64encode(plot).decode()})", ""]
    return "\n".join(lines) + "\n"


def gate_table(metrics: TrainMetrics) -> list[dict[str, Any]]:
    """The challenger, the champion and the baseline on the same rows (a Prefect table artifact)."""
    gate, split = metrics.gate, metrics.time_split
    rows: list[tuple[str, str, Metrics | None]] = [
        ("challenger", f"{MODEL_NAME}:{metrics.version}", split.model),
        ("champion", f"{MODEL_NAME}:{gate.champion}" if gate.champion else "none", gate.champion_metrics),
        ("baseline", "Volume = vol_moving_avg", split.baseline),
    ]
    decision = "promoted" if gate.promote else "kept out"
    return [
        {
            "model": role,
            "version": name,
            "rows": gate.rows,
            **({k: round(v, 4) for k, v in m.model_dump().items()} if m else {"mae": None}),
            "decision": decision if role == "challenger" else "",
            "reason": gate.reason if role == "challenger" else "",
        }
        for role, name, m in rows
    ]


def training_markdown(metrics: TrainMetrics, plots: dict[str, bytes]) -> str:
    """Model vs baseline on the time holdout (and the random split), with the plots inline (PNG
    data URIs: a browser will not open a file:// link from the Prefect UI)."""
    split, gate = metrics.time_split, metrics.gate
    rows = [("model, time holdout", split.model), ("baseline, time holdout", split.baseline)]
    if gate.champion_metrics:
        rows.insert(1, (f"champion {gate.champion}, same rows", gate.champion_metrics))
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
        f"{_engine(metrics)}, fit {metrics.timing.fit_seconds:.1f} s.",
        "",
        f"**Gate:** {'promoted' if gate.promote else 'kept out'}: {gate.reason}.",
        "",
    ]
    if metrics.backtest:
        lines += [
            "## Backtest: walk-forward folds",
            "",
            "| test year | train rows | test rows | model MAE | baseline MAE | MAE vs baseline "
            "| model R² | baseline R² |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {f.year} | {f.train_rows:,} | {f.test_rows:,} | {f.model.mae:,.0f} "
                f"| {f.baseline.mae:,.0f} | {f.mae_improvement_pct or 0:+.1f}% | {f.model.r2:.4f} "
                f"| {f.baseline.r2:.4f} |"
                for f in metrics.backtest
            ],
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


def _engine(metrics: TrainMetrics) -> str:
    engine = metrics.engine
    if engine.layout == "single":
        return f"One Ray task on {engine.device} ({engine.why})"
    return f"{engine.workers} Ray Train workers on {engine.device} ({engine.why})"
