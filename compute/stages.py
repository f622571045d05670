"""Stage drivers: plan the work, fan it out over Ray, gather small results, publish the outputs.

These run on the driver and move only file names and counts; Ray workers read and write the data.

Runs are incremental. Each stage-1 part is built from one batch of source files, and the stage's
manifest records every part's files with their sizes and CRCs (zip) or modification times
(folder). A re-run carries over every part whose files are all unchanged, and ingests only the
files that are new or sat in a part with a changed or removed file; stage 2 likewise recomputes
only the parts whose stage-1 part changed. A carried-over part is hard-linked (or copied on an object
store) into the new stage, which is then published whole as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from compute import cluster, features, ingest, manifest, schema, sources, storage
from compute.cluster import cluster_cpus, fan_out
from compute.features import features_part
from compute.ingest import FileResult, ingest_batch
from compute.layout import Layout, part_name, part_number
from compute.report import build_ingest_report
from compute.settings import Settings
from compute.sources import SourceFile, list_files, open_source, read_security_names

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
    layout = Layout(settings.out)
    source = open_source(source_location)
    listing = list_files(source, settings.max_file_bytes)
    entries = {member: [size, signature] for member, size, signature in source.entries(listing)}
    # What every part depends on besides its own files: where they come from, the code, the size
    # limit and the metadata file (Security Name).
    basis = manifest.digest(
        source.location,
        manifest.code(ingest, sources, schema),
        settings.max_file_bytes,
        entries.get(listing.meta_member or ""),
    )
    fingerprint = manifest.digest(basis, entries, listing.rejected, listing.ignored)
    previous = None if settings.force else storage.read_manifest(layout.stage1)
    if report := manifest.reused(previous, fingerprint):
        progress(f"ingest: {source.location} and the code are unchanged since the last run: stage 1 reused")
        storage.write_json(report, layout.ingest_report)
        return report

    started += _join_ray(settings, progress)  # stage time excludes starting Ray
    storage.remove_leftovers(layout.stage1)
    storage.remove_leftovers(layout.quarantine)
    carried = _unchanged_parts(previous, basis, entries)
    done = {member for part in carried.values() for member in part["files"]}
    todo = [f for f in listing.files if f.member not in done]
    batches = plan_batches(todo, settings.batch_bytes, cluster_cpus())
    first = 1 + max((part_number(name) for name in carried), default=-1)
    progress(
        f"ingest: {len(todo)} of {len(listing.files)} files from {source.location} in {len(batches)} "
        f"Ray tasks; {len(carried)} unchanged parts carried over"
    )
    names, meta_warning = read_security_names(source, listing, settings.max_file_bytes)

    stage1, quarantine = storage.staging_dir(layout.stage1), storage.staging_dir(layout.quarantine)
    try:
        _carry_over([name for name, part in carried.items() if part["stage1"]], layout.stage1, stage1)
        _carry_over(
            [name for name, part in carried.items() if part["quarantine"]], layout.quarantine, quarantine
        )
        fanned = fan_out(
            ingest_batch,
            [
                (source, batch, {f.symbol: names[f.symbol] for f in batch if f.symbol in names},
                 first + i, stage1, quarantine, settings.max_file_bytes)
                for i, batch in enumerate(batches)
            ],
            label="ingest",
            progress=progress,
        )  # fmt: skip
    except BaseException:
        storage.remove_dir(stage1)
        storage.remove_dir(quarantine)
        raise
    kept = [FileResult(**r) for r in previous["result"]["per_file"] if r["file"] in done] if carried else []
    parts = dict(carried)
    for i, (batch, results) in enumerate(zip(batches, fanned.results, strict=True)):
        parts[part_name(first + i)] = {
            "files": {f.member: entries[f.member] for f in batch},
            "stage1": any(r.rows_kept for r in results),
            "quarantine": any(sum(r.quarantined.values()) for r in results),
        }
    report = build_ingest_report(
        source=source.location,
        listing=listing,
        results=kept + [r for batch in fanned.results for r in batch],
        metadata_warning=meta_warning,
        seconds=time.perf_counter() - started,
    )
    report["incremental"] = {
        "files_ingested": len(todo),
        "parts_carried_over": len(carried),
        "parts_built": len(batches),
    }
    report["ray_nodes"] = fanned.nodes
    # Quarantine first: a stage 1 carrying a manifest then always has its quarantine beside it.
    storage.publish_dir(
        quarantine, layout.quarantine, manifest.entry(fingerprint, {"rows": report["rows"]["quarantined"]})
    )
    storage.publish_dir(stage1, layout.stage1, manifest.entry(fingerprint, report, basis=basis, parts=parts))
    storage.write_json(report, layout.ingest_report)
    return report


def _unchanged_parts(
    previous: dict[str, Any] | None, basis: str, entries: dict[str, list[int]]
) -> dict[str, dict[str, Any]]:
    """The previous stage 1's parts whose every file is still there, unchanged."""
    if not previous or previous.get("basis") != basis:
        return {}
    return {
        name: part
        for name, part in previous.get("parts", {}).items()
        if all(entries.get(member) == signature for member, signature in part["files"].items())
    }


def _join_ray(settings: Settings, progress: Progress) -> float:
    """Connect to Ray (starting a local one if needed); return the seconds that start took."""
    before = cluster.start_seconds()
    cluster.connect(settings, progress)
    return cluster.start_seconds() - before


def _carry_over(names: list[str], stage: str, staging: str) -> None:
    """Put these unchanged part files of the published stage into its staging folder."""
    published = storage.data_dir(stage)  # reads the manifest: once, not per part
    for name in names:
        storage.carry_over(storage.join(published, name), storage.join(staging, name))


def run_features(settings: Settings, progress: Progress = log.info) -> dict[str, Any]:
    """Stage 2 from the stage-1 parts in settings.out; returns a small summary."""
    started = time.perf_counter()
    layout = Layout(settings.out)
    if not storage.is_dir(layout.stage1):
        raise FileNotFoundError(f"no stage 1 output in {layout.root}: run `stockpipe ingest` first")
    code = manifest.code(features, schema)
    fingerprint = manifest.digest(manifest.stage_id(layout.stage1), code)
    previous = None if settings.force else storage.read_manifest(layout.stage2)
    if summary := manifest.reused(previous, fingerprint):
        progress("features: stage 1 and the code are unchanged since the last run: stage 2 reused")
        storage.write_json(summary, layout.features_report)
        return summary

    started += _join_ray(settings, progress)  # stage time excludes starting Ray
    storage.remove_leftovers(layout.stage2)
    # Each stage-1 part's identity; a stage 1 this pipeline did not write has none and is rebuilt.
    stage1_manifest = storage.read_manifest(layout.stage1) or {}
    sources_of = {
        name: manifest.digest(stage1_manifest.get("basis"), part["files"])
        for name, part in stage1_manifest.get("parts", {}).items()
    }
    before = previous.get("parts", {}) if previous and previous.get("code") == code else {}
    parts = storage.parquet_parts(layout.stage1)
    carried = {
        name: before[name]
        for name in map(storage.basename, parts)
        if name in sources_of and before.get(name, {}).get("from") == sources_of[name]
    }
    todo = [p for p in parts if storage.basename(p) not in carried]
    progress(f"features: {len(todo)} of {len(parts)} stage-1 parts in {len(todo)} Ray tasks")
    stage2 = storage.staging_dir(layout.stage2)
    try:
        _carry_over(list(carried), layout.stage2, stage2)
        fanned = fan_out(features_part, [(p, stage2) for p in todo], label="features", progress=progress)
    except BaseException:
        storage.remove_dir(stage2)
        raise
    built = {
        storage.basename(p): {"from": sources_of.get(storage.basename(p)), "counts": counts}
        for p, counts in zip(todo, fanned.results, strict=True)
    }
    every = {**carried, **built}
    summary = {
        "parts": len(parts),
        **{
            k: sum(part["counts"][k] for part in every.values())
            for k in ("rows", "symbols", "rows_with_features")
        },
        "incremental": {"parts_carried_over": len(carried), "parts_built": len(built)},
        "seconds": round(time.perf_counter() - started, 3),
        "ray_nodes": fanned.nodes,
    }
    storage.publish_dir(stage2, layout.stage2, manifest.entry(fingerprint, summary, code=code, parts=every))
    storage.write_json(summary, layout.features_report)
    return summary
