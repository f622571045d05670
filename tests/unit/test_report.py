"""The reports people read: the ingest summary and its table, and the training artifact's plots."""

from __future__ import annotations

import base64
import re

from compute.drift import DriftReport
from compute.layout import Layout
from compute.metrics import Metrics
from compute.stages.ingest.report import ingest_markdown, ingest_problems, metadata_gap
from compute.stages.ingest.results import (
    FailedFile,
    FileCounts,
    IngestIncremental,
    IngestReport,
    IngestWarnings,
    RowCounts,
)
from compute.stages.train.report import training_markdown
from compute.stages.train.results import Engine, Gate, TimeSplit, Timing, TrainMetrics, TrainRows


def report(missing: list[str], failed: list[FailedFile] | None = None) -> IngestReport:
    return IngestReport(
        source="/data/vintage.zip",
        files=FileCounts(seen=100, ingested=100 - len(failed or []), failed=len(failed or [])),
        rows=RowCounts(read=1000, kept=990, quarantined=10, in_failed_files=0),
        quarantined_by_reason={"empty_row": 4, "negative_price": 6},
        failed_files=failed or [],
        symbols_without_metadata=missing,
        metadata_warning=None,
        files_reordered_by_date=[],
        warnings=IngestWarnings(zero_price_rows_kept={}),
        ignored_members=[],
        per_file=[],
        incremental=IngestIncremental(files_ingested=100, parts_carried_over=0, parts_built=4),
        ray_nodes={"n": 4},
    )


def test_symbols_without_metadata_are_a_warning_with_a_count_examples_and_where_the_list_is() -> None:
    layout = Layout("/out")
    missing = [f"S{i:02d}" for i in range(90)]  # a vintage whose metadata covers one symbol in ten
    gap = metadata_gap(report(missing), layout)
    assert gap == (
        "90 of 100 ingested symbols have no row in the metadata file, so their Security Name is null: "
        "S00, S01, S02, S03, S04, S05, S06, S07, ... (all of them: symbols_without_metadata in "
        "/out/reports/ingest.json)"
    )
    assert f"**Warning:** {gap}" in ingest_markdown(report(missing), layout)
    assert metadata_gap(report([]), layout) is None and "Warning" not in ingest_markdown(report([]), layout)


def test_the_problems_table_lists_quarantine_reasons_and_failed_files() -> None:
    failed = [FailedFile(file="stocks/BIN.csv", reason="not a CSV text file (binary content)", rows=3)]
    assert ingest_problems(report([], failed)) == [
        {"kind": "quarantined rows", "name": "empty_row", "reason": "empty_row", "rows": 4},
        {"kind": "quarantined rows", "name": "negative_price", "reason": "negative_price", "rows": 6},
        {
            "kind": "failed file",
            "name": "stocks/BIN.csv",
            "reason": "not a CSV text file (binary content)",
            "rows": 3,
        },
    ]


def test_the_training_artifact_carries_its_plots_inline() -> None:
    m = Metrics(mae=1.0, rmse=2.0, r2=0.5, mape_pct=10.0)
    metrics = TrainMetrics(
        version="20260101-000000-abcd",
        time_split=TimeSplit(
            cutoff="2020-01-01",
            train_dates=["2019-01-01", "2019-12-31"],
            test_dates=["2020-01-01", "2020-06-30"],
            train_rows=80,
            test_rows=20,
            model=m,
            baseline=m,
            mae_improvement_pct=0.0,
        ),
        rows=TrainRows(stage2=110, dropped_null_features=10, used=100),
        engine=Engine(trainer="ray.train.xgboost.XGBoostTrainer", workers=2, device="cpu"),
        params={},
        rounds=40,
        timing=Timing(fit_seconds=1.0, boosting_seconds=0.5, load_seconds=0.1),
        fingerprint="f",
        gate=Gate(
            rows=20, champion=None, champion_metrics=None, tolerance_pct=0.0, promote=True, reason="test"
        ),
        drift=DriftReport(
            reference=None, reference_rows=None, rows=100, columns=[], symbols_new=[], symbols_gone=[]
        ),
    )
    png = b"\x89PNG\r\n\x1a\n fake"
    markdown = training_markdown(metrics, {"Learning curve": png})
    images = re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert images == [("Learning curve", base64.b64encode(png).decode())]
    assert "file://" not in markdown
