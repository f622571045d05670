"""What ingest returns, typed: reports/ingest.json, and one source file's outcome as a Ray task
reports it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from compute.stage import StageResult


@dataclass
class FileResult:
    """One source file's outcome, as a Ray task reports it."""

    file: str
    symbol: str
    status: str = "ingested"  # or "failed"
    reason: str | None = None
    rows_read: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    zero_prices: dict[str, int] = field(default_factory=dict)
    reordered: bool = False  # rows were not in date order in the source
    has_metadata: bool = True


class FileCounts(BaseModel):
    seen: int
    ingested: int
    failed: int


class RowCounts(BaseModel):
    read: int
    kept: int
    quarantined: int
    in_failed_files: int


class FailedFile(BaseModel):
    file: str
    reason: str | None
    rows: int


class IngestWarnings(BaseModel):
    zero_price_rows_kept: dict[str, int]


class IngestIncremental(BaseModel):
    files_ingested: int
    parts_carried_over: int
    parts_built: int


class IngestReport(StageResult):
    source: str
    files: FileCounts
    rows: RowCounts
    quarantined_by_reason: dict[str, int]
    failed_files: list[FailedFile]
    symbols_without_metadata: list[str]
    metadata_warning: str | None
    files_reordered_by_date: list[str]
    warnings: IngestWarnings
    ignored_members: list[str]
    seconds: float = 0.0
    per_file: list[FileResult]
    incremental: IngestIncremental
    ray_nodes: dict[str, int]
