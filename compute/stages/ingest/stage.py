"""Stage 1, ingest: every symbol file of the source (settings.source) into stage1/ (kept rows) and
quarantine/ (bad rows, each with its file, line and reason); reports/ingest.json accounts for every
file and row.

Files are grouped into batches of about `batch_bytes` of CSV; each Ray task reads its own batch
straight from the folder or zip (parse.py) and writes one stage-1 part and, if any row is
bad, one quarantine part with the same number.

Incremental: the manifest records every part's files with their sizes and CRCs (zip) or
modification times (folder). A re-run carries over every part whose files are all unchanged and
ingests only the files that are new or sat in a part with a changed or removed file.
"""

from __future__ import annotations

from dataclasses import dataclass

from compute import publish
from compute.cluster import cluster_cpus, fan_out
from compute.layout import part_name, part_number
from compute.publish import Manifest, Part, Staging
from compute.stage import Artifact, Built, Plan, Stage, unchanged_parts
from compute.stages.ingest.parse import ingest_batch
from compute.stages.ingest.report import build_ingest_report, ingest_markdown, ingest_problems, metadata_gap
from compute.stages.ingest.results import FileResult, IngestIncremental, IngestReport
from compute.stages.ingest.sources import (
    Listing,
    Source,
    SourceFile,
    list_files,
    open_source,
    read_security_names,
)
from compute.storage import write_json


@dataclass
class IngestPlan(Plan):
    source: Source
    listing: Listing
    entries: dict[str, list[int]]  # member -> [size, CRC or mtime] of every file read
    basis: str  # what every part depends on besides its own files
    carried: dict[str, Part]  # unchanged parts of the published stage 1
    carried_files: list[FileResult]  # the previous results of the files in them


class Ingest(Stage[IngestPlan, IngestReport]):
    name = "ingest"
    output_name, output_folder = "stage 1", "stage1"
    result_type = IngestReport
    depends_on = "the source files and the code"

    def outputs(self) -> tuple[str, ...]:
        # Stage 1 carries the result; the quarantine is published just before it, so a published
        # stage 1 always has its quarantine beside it.
        return (self.layout.stage1, self.layout.quarantine)

    def plan(self, previous: Manifest | None) -> IngestPlan:
        source = open_source(self.settings.source)
        listing = list_files(source, self.settings.max_file_bytes)
        entries = {member: [size, signature] for member, size, signature in source.entries(listing)}
        basis = publish.digest(
            source.location,
            self.code(),
            self.settings.max_file_bytes,
            entries.get(listing.meta_member or ""),  # the metadata file gives every Security Name
        )
        # A part is unchanged when the basis and every one of its files are.
        parts = previous.parts if previous else {}
        carried = unchanged_parts(
            previous, {name: _inputs(basis, part.files, entries) for name, part in parts.items()}
        )
        done = {member for part in carried.values() for member in part.files}
        return IngestPlan(
            fingerprint=publish.digest(basis, entries, listing.rejected, listing.ignored),
            source=source,
            listing=listing,
            entries=entries,
            basis=basis,
            carried=carried,
            carried_files=[FileResult(**r) for r in previous.result.get("per_file", []) if r["file"] in done]
            if previous and carried
            else [],
        )

    def space_needed(self, plan: IngestPlan) -> int:
        """Stage 1 is 0.16 times the CSV it holds (0.161 on the 2021 vintage, 0.165 on the sample):
        0.2 times the bytes of the files to ingest, and a megabyte for the quarantine."""
        done = {member for part in plan.carried.values() for member in part.files}
        return int(0.2 * sum(f.size for f in plan.listing.files if f.member not in done)) + 1_000_000

    def build(self, plan: IngestPlan, staging: list[Staging]) -> Built[IngestReport]:
        stage1, quarantine = staging
        done = {member for part in plan.carried.values() for member in part.files}
        todo = [f for f in plan.listing.files if f.member not in done]
        batches = plan_batches(todo, self.settings.batch_bytes, cluster_cpus())
        first = 1 + max((part_number(name) for name in plan.carried), default=-1)
        self.progress(
            f"ingest: {len(todo)} of {len(plan.listing.files)} files from {plan.source.location} in "
            f"{len(batches)} Ray tasks; {len(plan.carried)} unchanged parts carried over"
        )
        names, meta_warning = read_security_names(plan.source, plan.listing, self.settings.max_file_bytes)
        stage1.carry_over(list(plan.carried))
        quarantine.carry_over(list(plan.carried))
        fanned = fan_out(
            ingest_batch,
            [
                (plan.source, batch, {f.symbol: names[f.symbol] for f in batch if f.symbol in names},
                 first + i, stage1.location, quarantine.location, self.settings.max_file_bytes)
                for i, batch in enumerate(batches)
            ],
            label="ingest",
            # Named by what each holds, so that a slow or failing batch can be found on the dashboard.
            names=[f"ingest {b[0].symbol}..{b[-1].symbol} ({len(b)} files)" for b in batches],
            progress=self.progress,
        )  # fmt: skip
        parts = dict(plan.carried)
        for i, batch in enumerate(batches):
            files = [f.member for f in batch]
            parts[part_name(first + i)] = Part(
                inputs=_inputs(plan.basis, files, plan.entries),
                files={member: plan.entries[member] for member in files},
            )
        report = build_ingest_report(
            source=plan.source.location,
            listing=plan.listing,
            results=plan.carried_files + [r for batch in fanned.results for r in batch],
            metadata_warning=meta_warning,
            incremental=IngestIncremental(
                files_ingested=len(todo), parts_carried_over=len(plan.carried), parts_built=len(batches)
            ),
            ray_nodes=fanned.nodes,
        )
        return Built(report, parts)

    def report(self, result: IngestReport) -> None:
        write_json(result.to_json(), self.layout.ingest_report)

    def artifacts(self, result: IngestReport) -> list[Artifact]:
        return [
            Artifact("ingest-report", "Ingest report", markdown=ingest_markdown(result, self.layout)),
            Artifact(
                "ingest-problems",
                "Failed files and quarantined rows by reason",
                table=ingest_problems(result),
            ),
        ]

    def describe(self, result: IngestReport) -> list[str]:
        files, rows = result.files, result.rows
        warnings = [w for w in (metadata_gap(result, self.layout), result.metadata_warning) if w]
        return [
            f"ingest: {files.ingested}/{files.seen} files, {rows.kept:,} rows kept, "
            f"{rows.quarantined:,} quarantined, {files.failed} files failed",
            *[f"  warning: {w}" for w in warnings],
            f"  stage 1:    {self.layout.stage1}/",
            f"  quarantine: {self.layout.quarantine}/",
            f"  report:     {self.layout.ingest_report}",
        ]


def _inputs(basis: str, files: list[str] | dict[str, list[int]], entries: dict[str, list[int]]) -> str:
    """What a part built from these files depends on: the basis and each file's current signature
    (None for a file that is gone, so that its part is rebuilt)."""
    return publish.digest(basis, {member: entries.get(member) for member in sorted(files)})


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
