"""The ingest report: every file and every row accounted for."""

from __future__ import annotations

from collections import Counter
from typing import Any

from compute.layout import Layout
from compute.stages.ingest.results import (
    FailedFile,
    FileCounts,
    FileResult,
    IngestIncremental,
    IngestReport,
    IngestWarnings,
    RowCounts,
)
from compute.stages.ingest.sources import Listing


class CountMismatch(AssertionError):
    """Rows read did not equal rows kept + quarantined + in failed files: a bug, never bad input."""


def build_ingest_report(
    *,
    source: str,
    listing: Listing,
    results: list[FileResult],
    metadata_warning: str | None,
    incremental: IngestIncremental,
    ray_nodes: dict[str, int],
) -> IngestReport:
    ingested = [r for r in results if r.status == "ingested"]
    failed = [r for r in results if r.status == "failed"]
    reasons: Counter[str] = Counter()
    zero_prices: Counter[str] = Counter()
    for r in ingested:
        reasons.update(r.quarantined)
        zero_prices.update(r.zero_prices)
    rows = RowCounts(
        read=sum(r.rows_read for r in results),
        kept=sum(r.rows_kept for r in ingested),
        quarantined=sum(reasons.values()),
        in_failed_files=sum(r.rows_read for r in failed),
    )
    if rows.read != rows.kept + rows.quarantined + rows.in_failed_files:
        raise CountMismatch(f"row counts do not add up: {rows}")
    failed_files = [FailedFile(file=r.file, reason=r.reason, rows=r.rows_read) for r in failed]
    failed_files += [FailedFile(file=member, reason=reason, rows=0) for member, reason in listing.rejected]
    return IngestReport(
        source=source,
        files=FileCounts(
            seen=len(results) + len(listing.rejected), ingested=len(ingested), failed=len(failed_files)
        ),
        rows=rows,
        quarantined_by_reason=dict(sorted(reasons.items())),
        failed_files=sorted(failed_files, key=lambda f: f.file),
        symbols_without_metadata=sorted(r.symbol for r in ingested if not r.has_metadata),
        metadata_warning=metadata_warning,
        files_reordered_by_date=sorted(r.file for r in ingested if r.reordered),
        warnings=IngestWarnings(zero_price_rows_kept=dict(sorted(zero_prices.items()))),
        ignored_members=listing.ignored,
        per_file=sorted(results, key=lambda r: r.file),
        incremental=incremental,
        ray_nodes=ray_nodes,
    )


def metadata_gap(report: IngestReport, layout: Layout) -> str | None:
    """A warning when ingested symbols have no metadata row (their Security Name is null)."""
    missing = report.symbols_without_metadata
    if not missing:
        return None
    shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
    return (
        f"{len(missing):,} of {report.files.ingested:,} ingested symbols have no row in the metadata "
        f"file, so their Security Name is null: {shown} (all of them: symbols_without_metadata in "
        f"{layout.ingest_report})"
    )


def ingest_markdown(report: IngestReport, layout: Layout) -> str:
    """A short human summary of the report, for the Prefect UI."""
    files, rows = report.files, report.rows
    gap = metadata_gap(report, layout)
    lines = [
        f"# Ingest report: `{report.source}`",
        "",
        *([f"**Warning:** {gap}", ""] if gap else []),
        *([f"**Warning:** {report.metadata_warning}", ""] if report.metadata_warning else []),
        "| files seen | ingested | failed | rows read | kept | quarantined | in failed files |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {files.seen:,} | {files.ingested:,} | {files.failed:,} | {rows.read:,} "
        f"| {rows.kept:,} | {rows.quarantined:,} | {rows.in_failed_files:,} |",
        "",
    ]
    if report.quarantined_by_reason:
        lines += ["| quarantine reason | rows |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in report.quarantined_by_reason.items()]
        lines.append("")
    if report.failed_files:
        lines += ["| failed file | reason |", "|---|---|"]
        lines += [f"| {f.file} | {f.reason} |" for f in report.failed_files[:50]]
        lines.append("")
    zero = report.warnings.zero_price_rows_kept
    if zero:
        lines.append(
            "Zero prices kept (Yahoo placeholders): " + ", ".join(f"{k} {v:,}" for k, v in zero.items())
        )
    return "\n".join(lines) + "\n"


def ingest_problems(report: IngestReport) -> list[dict[str, Any]]:
    """Failed files and quarantined rows by reason, as one table (a Prefect table artifact)."""
    table: list[dict[str, Any]] = [
        {"kind": "quarantined rows", "name": reason, "reason": reason, "rows": count}
        for reason, count in report.quarantined_by_reason.items()
    ]
    table += [
        {"kind": "failed file", "name": f.file, "reason": f.reason, "rows": f.rows}
        for f in report.failed_files
    ]
    return table or [
        {"kind": "none", "name": "", "reason": "every file ingested, no row quarantined", "rows": 0}
    ]
