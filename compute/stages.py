"""Stage drivers: plan the work, fan it out over Ray, gather small results, publish the outputs.

These run on the driver and move only file names and counts; Ray workers read and write the data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compute import features, ingest, manifest, schema, sources
from compute.cluster import cluster_cpus, fan_out
from compute.features import features_part
from compute.ingest import FileResult, ingest_batch
from compute.layout import Layout
from compute.report import build_ingest_report
from compute.settings import Settings
from compute.sources import SourceFile, list_files, open_source, read_security_names
from compute.storage import parquet_parts, publish_dir, staging_dir, write_json

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def plan_batches(files: list[SourceFile], batch_bytes: int, workers: int) -> list[list[SourceFile]]:
    """Group files into batches of about batch_bytes, with at least ~4 batches per worker."""
    total = sum(f.size for f in files)
    target = max(min(batch_bytes, total // max(4 * workers, 1)), 1)
    batches: list[list[SourceFile]] = []
    current: list[SourceFile] = []
    size = 0
    for f in files:
        current.append(f)
        size += f.size
        if size >= target:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


def run_ingest(source_location: str, settings: Settings, progress: Progress = log.info) -> dict[str, Any]:
    """Stage 1 for a whole source; returns the ingest report (also written to reports/ingest.json)."""
    started = time.perf_counter()
    layout = Layout(Path(settings.out))
    source = open_source(source_location)
    listing = list_files(source, settings.max_file_bytes)
    batches = plan_batches(listing.files, settings.batch_bytes, cluster_cpus())
    fingerprint = manifest.digest(
        manifest.source_inputs(source, listing),
        manifest.code(ingest, sources, schema),
        settings.max_file_bytes,
        [[f.member for f in batch] for batch in batches],
    )
    if not settings.force and (previous := manifest.reusable(layout.stage1, fingerprint)):
        progress(f"ingest: {source.location} and the code are unchanged since the last run: stage 1 reused")
        report = {**previous, "reused": True}
        write_json(report, layout.ingest_report)
        return report
    progress(f"ingest: {len(listing.files)} files from {source.location} in {len(batches)} Ray tasks")
    names, meta_warning = read_security_names(source, listing, settings.max_file_bytes)

    layout.root.mkdir(parents=True, exist_ok=True)
    stage1, quarantine = staging_dir(layout.stage1), staging_dir(layout.quarantine)
    calls = [
        (
            source,
            batch,
            {f.symbol: names[f.symbol] for f in batch if f.symbol in names},
            part,
            str(stage1),
            str(quarantine),
            settings.max_file_bytes,
        )
        for part, batch in enumerate(batches)
    ]
    fanned = fan_out(ingest_batch, calls, label="ingest", progress=progress)
    results: list[FileResult] = [r for batch in fanned.results for r in batch]
    report = build_ingest_report(
        source=source.location,
        listing=listing,
        results=results,
        metadata_warning=meta_warning,
        seconds=time.perf_counter() - started,
    )
    report["ray_nodes"] = fanned.nodes
    # Quarantine first: a stage 1 carrying a manifest then always has its quarantine beside it.
    publish_dir(quarantine, layout.quarantine)
    manifest.write(stage1, fingerprint, report)
    publish_dir(stage1, layout.stage1)
    write_json(report, layout.ingest_report)
    return report


def run_features(settings: Settings, progress: Progress = log.info) -> dict[str, Any]:
    """Stage 2 from the stage-1 parts in settings.out; returns a small summary."""
    started = time.perf_counter()
    layout = Layout(Path(settings.out))
    parts = parquet_parts(layout.stage1)
    if not layout.stage1.is_dir():
        raise FileNotFoundError(f"no stage 1 output in {layout.root}: run `stockpipe ingest` first")
    fingerprint = manifest.digest(manifest.stage_id(layout.stage1), manifest.code(features, schema))
    if not settings.force and (previous := manifest.reusable(layout.stage2, fingerprint)):
        progress("features: stage 1 and the code are unchanged since the last run: stage 2 reused")
        summary = {**previous, "reused": True}
        write_json(summary, layout.features_report)
        return summary
    progress(f"features: {len(parts)} stage-1 parts in {len(parts)} Ray tasks")
    stage2 = staging_dir(layout.stage2)
    calls = [(str(p), str(stage2)) for p in parts]
    fanned = fan_out(features_part, calls, label="features", progress=progress)
    counts = fanned.results
    summary = {
        "parts": len(parts),
        "rows": sum(c["rows"] for c in counts),
        "symbols": sum(c["symbols"] for c in counts),
        "rows_with_features": sum(c["rows_with_features"] for c in counts),
        "seconds": round(time.perf_counter() - started, 3),
        "ray_nodes": fanned.nodes,
    }
    manifest.write(stage2, fingerprint, summary)
    publish_dir(stage2, layout.stage2)
    write_json(summary, layout.features_report)
    return summary
