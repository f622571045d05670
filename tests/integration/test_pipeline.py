"""The flow end to end on real Ray and Prefect: outputs, schema, and counts that add up."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from compute.schema import QUARANTINE, STAGE1
from compute.settings import Settings
from compute.stage import run
from compute.stages import Features, Ingest
from tests.conftest import SAMPLE, leftovers


def test_flow_completes_with_every_output(sample_run: dict[str, Any]) -> None:
    out: Path = sample_run["out"]
    assert sample_run["state"].is_completed()
    for folder in ["stage1", "stage2", "quarantine"]:
        assert list((out / folder).glob("part-*.parquet")), folder
    assert (out / "reports" / "ingest.json").is_file()
    assert not leftovers(out), "staging folders were left behind"


def test_stage1_has_exactly_the_contract_schema(sample_run: dict[str, Any]) -> None:
    dataset = pq.read_table(sample_run["out"] / "stage1")
    assert dataset.schema.remove_metadata() == STAGE1
    assert pq.read_table(sample_run["out"] / "quarantine").schema.remove_metadata() == QUARANTINE
    assert dataset.column("Date").to_pylist()[0].count("-") == 2
    assert dataset.column("Security Name").null_count == 0


def test_sample_report_accounts_for_every_row(sample_run: dict[str, Any]) -> None:
    report = json.loads((sample_run["out"] / "reports" / "ingest.json").read_text())
    assert report == sample_run["result"].ingest.to_json()  # the report is the typed result
    lines = sum(len(p.read_text().splitlines()) - 1 for p in SAMPLE.glob("*/*.csv"))
    rows = report["rows"]
    assert rows["read"] == lines
    assert rows["read"] == rows["kept"] + rows["quarantined"] + rows["in_failed_files"]
    assert rows["kept"] == pq.read_table(sample_run["out"] / "stage1").num_rows
    assert rows["quarantined"] == pq.read_table(sample_run["out"] / "quarantine").num_rows
    assert report["files"] == {"seen": 39, "ingested": 39, "failed": 0}
    # The sample's known defects: five Yahoo mid-day empty rows, zero Open/Low prices kept.
    assert report["quarantined_by_reason"] == {"empty_row": 5}
    assert report["warnings"]["zero_price_rows_kept"]["Low"] > 0
    assert sample_run["result"].features.rows == rows["kept"]


def test_bad_files_are_reported_and_the_run_goes_on(
    ray_session: str | None, bad_source: Path, tmp_path: Path
) -> None:
    report = run(Ingest(Settings(out=tmp_path, source=str(bad_source))))
    failed = {f.file: f.reason for f in report.failed_files}
    assert set(failed) == {"stocks/BIN.csv", "stocks/HDR.csv", "stocks/EMPTY.csv", "stocks/bad name.csv"}
    assert "binary" in failed["stocks/BIN.csv"]
    assert "wrong header" in failed["stocks/HDR.csv"]
    assert failed["stocks/EMPTY.csv"] == "empty file"
    assert "not a valid ticker symbol" in failed["stocks/bad name.csv"]
    assert report.files.model_dump() == {"seen": 8, "ingested": 4, "failed": 4}
    assert report.symbols_without_metadata == ["AVDG", "TRUNC"]
    assert report.quarantined_by_reason == {"empty_row": 1, "malformed_row": 1}

    rows = report.rows
    assert rows.read == rows.kept + rows.quarantined + rows.in_failed_files
    stage1 = pq.read_table(tmp_path / "stage1").to_pandas()
    assert len(stage1) == rows.kept
    assert set(stage1["Symbol"]) == {"ATAC", "ACC", "AVDG", "TRUNC"}
    assert stage1.loc[stage1["Symbol"] == "AVDG", "Security Name"].isna().all()
    assert stage1.loc[stage1["Symbol"] == "ATAC", "Security Name"].notna().all()
    quarantine = pq.read_table(tmp_path / "quarantine").to_pandas()
    assert set(quarantine["source_file"]) == {"stocks/ACC.csv", "stocks/TRUNC.csv"}

    summary = run(Features(Settings(out=tmp_path)))
    assert summary.rows == rows.kept and summary.symbols == 4


def test_zip_source_with_escaping_member_is_ingested_safely(ray_session: str | None, tmp_path: Path) -> None:
    archive = tmp_path / "stock-market-dataset.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(SAMPLE / "symbols_valid_meta.csv", "symbols_valid_meta.csv")
        z.write(SAMPLE / "stocks/ATAC.csv", "stocks/ATAC.csv")
        z.write(SAMPLE / "stocks/BENEU.csv", "../stocks/BENEU.csv")
    report = run(Ingest(Settings(out=tmp_path / "out", source=str(archive))))
    assert report.files.model_dump() == {"seen": 2, "ingested": 1, "failed": 1}
    assert report.failed_files[0].file == "../stocks/BENEU.csv"
    assert report.failed_files[0].reason.startswith("unsafe path")
    assert not (tmp_path / "stocks").exists()  # nothing was written outside the output folder
    assert pq.read_table(tmp_path / "out" / "stage1").column("Symbol").unique().to_pylist() == ["ATAC"]


def test_rerun_replaces_previous_outputs(ray_session: str | None, bad_source: Path, tmp_path: Path) -> None:
    run(Ingest(Settings(out=tmp_path, source=str(SAMPLE))))
    report = run(Ingest(Settings(out=tmp_path, source=str(bad_source))))
    assert pq.read_table(tmp_path / "stage1").num_rows == report.rows.kept


def test_ray_tasks_are_named_by_what_they_hold(ray_session: str | None, sample_run: dict[str, Any]) -> None:
    """On the Ray dashboard each ingest task shows its first and last symbol and file count, each
    features task its part, so that a slow or failing batch can be found."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=ray_session, filters=[("type", "=", "NORMAL_TASK")], limit=10_000)
    names = {t.name for t in tasks}
    ingest = sorted(n for n in names if n.startswith("ingest "))
    assert ingest and all(
        re.fullmatch(r"ingest [A-Z0-9.\-$#]+\.\.[A-Z0-9.\-$#]+ \(\d+ files\)", n) for n in ingest
    )
    assert {f"features {p.name}" for p in (sample_run["out"] / "stage2").glob("part-*")} <= names
