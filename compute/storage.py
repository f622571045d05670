"""Writing stage outputs so that a reader never sees a half-written file or a half-replaced stage."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(data: Any, path: Path) -> None:
    write_bytes((json.dumps(data, indent=2) + "\n").encode(), path)


def staging_dir(final: Path) -> Path:
    """A fresh sibling folder to build a stage in before publishing it."""
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.staging")
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: Path, final: Path) -> None:
    """Swap a fully written staging folder in for the stage's previous output."""
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def parquet_parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))
