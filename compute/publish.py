"""Publishing an output folder as a whole: a reader sees the previous content or the new one,
never a mix, and a run killed at any moment leaves one of the two.

Every output folder of the pipeline (stage1/, quarantine/, stage2/, model/) goes through here:
- local path: the new content is written into a hidden sibling (`.model.<id>.staging`), then
  exchanged with the published folder in one atomic rename (renameat2 RENAME_EXCHANGE). Where the
  filesystem cannot exchange, two renames are used, and a run killed between them leaves the old
  folder under a `.old` name, which the next run puts back before anything else.
- object store (no rename): the new content goes under a fresh `v-<id>/` prefix; writing
  `_manifest.json`, which names that prefix, is the commit (one PUT is atomic); older prefixes are
  deleted after it. Readers follow the manifest (`data_dir`).

The manifest travels with the content and says what it was built from: the stage's fingerprint
(a digest of its inputs, code and settings), the stage's result, and per part file what that part
was built from, so that a re-run can reuse the whole folder or carry over unchanged parts.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from compute import storage

MANIFEST = "_manifest.json"  # pyarrow's dataset readers skip names starting with "_"
VERSION_PREFIX = "v-"


def digest(*parts: Any) -> str:
    """A stable digest of JSON-able values (a fingerprint)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code_modules(root: str) -> list[str]:
    """`root` and every module of its package that it imports, directly or through another, at
    the top or inside a function: the code that can shape what it builds. Found by reading the
    source, never importing it, so that a stage's fingerprint covers modules it imports only when
    it builds (and no list kept by hand falls behind the code)."""
    package = root.split(".")[0]
    found, todo = {}, [root]
    while todo:
        name = todo.pop()
        if name in found or (path := _source(name)) is None:
            continue
        found[name] = path
        stat = path.stat()
        todo += [n for n in _imported(path, stat.st_mtime_ns, stat.st_size) if n.split(".")[0] == package]
    return sorted(found)


@functools.cache
def _imported(path: Path, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    """The modules a source file imports, and `from a.b import c`'s a.b.c (c is a module of a.b,
    or a name in it: then _source finds none). Cached while the file is unchanged: every stage
    reads mostly the same modules (five stages parsed them 0.5 s a run)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return tuple(names)


def _source(module: str) -> Path | None:
    """The file of a module of the project's packages, found without importing anything."""
    top = importlib.util.find_spec(module.split(".")[0])
    if top is None or not top.origin:
        return None
    base = Path(top.origin).parent.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def code_digest(root: str) -> str:
    """The source text of `root` and of every module it imports (`code_modules`)."""
    return digest(*[_source(name).read_bytes().hex() for name in code_modules(root)])  # type: ignore[union-attr]


class Part(BaseModel):
    """What one part file was built from. A re-run carries the part over when it would be built
    from exactly the same inputs."""

    inputs: str  # digest of everything the part depends on
    files: dict[str, list[int]] = {}  # source files in it: member -> [size, CRC or mtime] (ingest)
    counts: dict[str, int] = {}  # what the stage counted in it (features)


class Manifest(BaseModel):
    fingerprint: str
    result: dict[str, Any] = {}  # the stage's typed result, as JSON
    parts: dict[str, Part] = {}
    data: str | None = None  # object stores: the committed version prefix


class Staging:
    """A fresh place to write an output folder's next content before it is published."""

    def __init__(self, final: str) -> None:
        self.final = final
        if storage.is_local(final):
            path = storage.hidden_sibling(Path(final), "staging")
            path.mkdir(parents=True)
            self.location = str(path)
        else:
            self.location = storage.join(final, f"{VERSION_PREFIX}{uuid.uuid4().hex[:12]}")
        self.committed = False

    def join(self, *names: str) -> str:
        return storage.join(self.location, *names)

    def commit(self, manifest: Manifest) -> None:
        """Make the staged content, with its manifest, the published one."""
        if storage.is_local(self.final):
            storage.write_json(manifest.model_dump(mode="json"), self.join(MANIFEST))
            _swap_in(self.location, self.final)
            self.committed = True
            shutil.rmtree(self.location, ignore_errors=True)  # the previous content, if any
            return
        current = storage.basename(self.location)
        storage.write_json(manifest.model_copy(update={"data": current}).model_dump(mode="json"),
                           storage.join(self.final, MANIFEST))  # fmt: skip
        self.committed = True
        for name in storage.children(self.final):
            if name.startswith(VERSION_PREFIX) and name != current:
                storage.remove_dir(storage.join(self.final, name))

    def abort(self) -> None:
        """Delete what was staged (nothing, once committed)."""
        if not self.committed:
            storage.remove_dir(self.location)

    def carry_over(self, names: list[str]) -> None:
        """Put these files of the published content into the staged one, unchanged."""
        if not names:  # a first run or --force: nothing to read
            return
        published = data_dir(self.final)  # reads the manifest once, not per file
        present = {name for name, _, _ in storage.listing(published)}
        for name in names:
            if name in present:
                storage.link_or_copy(storage.join(published, name), self.join(name))


# --- reading ------------------------------------------------------------------------------------


def read_manifest(final: str) -> Manifest | None:
    """The published manifest; None when there is none or it is not one of ours."""
    stored = storage.read_json(storage.join(final, MANIFEST))
    try:
        return Manifest.model_validate(stored) if isinstance(stored, dict) else None
    except ValidationError:
        return None


def is_published(final: str) -> bool:
    """Whether the folder has published content (its manifest), without reading the manifest."""
    return storage.is_file(storage.join(final, MANIFEST))


def data_dir(final: str, manifest: Manifest | None = None) -> str:
    """Where the published files are: the folder itself, or the committed version prefix."""
    manifest = manifest or read_manifest(final)
    return storage.join(final, manifest.data) if manifest and manifest.data else final


def parquet_parts(final: str | Path, manifest: Manifest | None = None) -> list[str]:
    """The published part files (`manifest`: the folder's, when the caller has read it already)."""
    folder = data_dir(str(final), manifest)
    return [
        storage.join(folder, rel)
        for rel, _, _ in storage.listing(folder)
        if rel.startswith("part-") and rel.endswith(".parquet")
    ]


def content_id(final: str, manifest: Manifest | None = None) -> Any:
    """What identifies a folder's content: its fingerprint when this pipeline published it, else
    its part files' names, sizes and modification times."""
    manifest = manifest or read_manifest(final)
    if manifest:
        return manifest.fingerprint
    return [item for item in storage.listing(final) if item[0].startswith("part-")]


# --- local publishing ---------------------------------------------------------------------------


def remove_leftovers(final: str) -> None:
    """Repair and clean what a killed run left beside a local folder: a published folder moved
    aside by the two-rename fallback is put back; every staging folder beside it is deleted (the
    caller holds the output's lock, so none of them is live; a model version's staging folder is
    named after a version the next run does not know). On an object store, unpublished versions
    are deleted by the next commit."""
    if not storage.is_local(final):
        return
    path = Path(final)
    aside = sorted(path.parent.glob(f".{path.name}.*.old"))
    if aside and not path.exists():
        os.rename(aside.pop(), path)
    for leftover in [*aside, *path.parent.glob(f".*.{'?' * storage.HIDDEN_ID_LENGTH}.staging")]:
        shutil.rmtree(leftover, ignore_errors=True)


def remove_every_leftover(root: str) -> None:
    """Every staging folder under a local output (its stages' and its model versions'): for a run
    that must end before its stages can clean up after themselves."""
    if not storage.is_local(root):
        return
    for folder in (Path(root), Path(root) / "models"):
        for leftover in folder.glob(f".*.{'?' * storage.HIDDEN_ID_LENGTH}.staging"):
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(staging: str, final: str) -> None:
    """Put `staging` at `final` in one step; the previous content, if any, ends up at `staging`."""
    if not os.path.lexists(final):
        os.rename(staging, final)
    elif not _exchange(staging, final):
        aside = storage.hidden_sibling(Path(final), "old")
        os.rename(final, aside)  # a crash here leaves `aside`, which remove_leftovers puts back
        os.rename(staging, final)
        os.rename(aside, staging)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths (Linux 3.15+); False where the system or filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)
