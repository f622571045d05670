"""Re-run detection: each stage folder carries a manifest of what it was built from (the inputs'
names, sizes and timestamps or CRCs, the code that built it, the settings that shape it). A stage
whose manifest matches is reused instead of rebuilt. The manifest is written into the staging
folder, so it is published together with the stage's data or not at all."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

from compute.sources import Listing, Source
from compute.storage import parquet_parts, write_json

MANIFEST = "_manifest.json"  # pyarrow's dataset readers skip names starting with "_"


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code(*modules: ModuleType) -> str:
    """The source text of the modules that shape a stage's output."""
    return digest(*[Path(m.__file__).read_bytes().hex() for m in modules if m.__file__])


def source_inputs(source: Source, listing: Listing) -> str:
    """Names with sizes and CRCs (zip) or sizes and modification times (folder); no file is read."""
    members = sorted(
        [f.member for f in listing.files] + ([listing.meta_member] if listing.meta_member else [])
    )
    if source.is_zip:
        with zipfile.ZipFile(source.location) as archive:
            entries = [(m, archive.getinfo(m).file_size, archive.getinfo(m).CRC) for m in members]
    else:
        root = Path(source.location)
        entries = [(m, (root / m).stat().st_size, (root / m).stat().st_mtime_ns) for m in members]
    return digest(source.location, entries, listing.rejected, listing.ignored)


def read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def stage_id(folder: Path) -> Any:
    """What identifies a stage's content: its own fingerprint when this pipeline wrote it, else its
    part files' names, sizes and modification times."""
    stored = read(folder)
    if stored:
        return stored["fingerprint"]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in parquet_parts(folder)]


def write(folder: Path, fingerprint: str, result: dict[str, Any]) -> None:
    write_json({"fingerprint": fingerprint, "result": result}, folder / MANIFEST)


def reusable(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The stored result when `folder` was built from exactly these inputs, else None."""
    stored = read(folder)
    return stored["result"] if stored and stored.get("fingerprint") == fingerprint else None
