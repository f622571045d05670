"""Re-run detection: each stage carries a manifest of what it was built from (the inputs' names,
sizes and timestamps or CRCs, the code that built it, the settings that shape it). A stage whose
manifest matches is reused instead of rebuilt. The manifest is published together with the stage's
data or not at all (see compute/storage.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from compute import storage


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code(*modules: ModuleType) -> str:
    """The source text of the modules that shape a stage's output."""
    return digest(*[Path(m.__file__).read_bytes().hex() for m in modules if m.__file__])


def entry(fingerprint: str, result: dict[str, Any], **details: Any) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "result": result, **details}


def stage_id(stage: str) -> Any:
    """What identifies a stage's content: its own fingerprint when this pipeline wrote it, else its
    part files' names, sizes and modification times."""
    stored = storage.read_manifest(stage)
    if stored and "fingerprint" in stored:
        return stored["fingerprint"]
    return [item for item in storage.listing(stage) if item[0].startswith("part-")]


def reused(previous: dict[str, Any] | None, fingerprint: str) -> dict[str, Any] | None:
    """A stage's stored result, marked reused, when its manifest `previous` says it was built from
    exactly these inputs; else None."""
    if previous and previous.get("fingerprint") == fingerprint:
        return {**previous["result"], "reused": True}
    return None
