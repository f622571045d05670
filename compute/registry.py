"""Model versions, and which one is the champion: the model that `serve` and `package` read.

    <out>/models/<version>/    every trained model: model.bin, model.json (its card), metrics.json,
                               published whole by the train stage
    <out>/models/history.json  every gate decision and every change of champion: when, why
                               (gate, promote, rollback), from which version to which
    <out>/model/               the champion: its version's files, and champion.json (which version,
                               since when, why, and the champions before it, for a rollback)

A promotion publishes model/ the way every output is published (compute/publish.py): a reader
sees the previous champion or the new one, whole, locally and on an object store. champion.json
travels with the files it describes, so the champion and its record never disagree; the history is
written just after, and a decision that a killed run never recorded is recorded by the next run
(compute/stages/train/stage.py). Callers hold the output's lock (compute/lock.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from compute import model as contract
from compute import publish, storage
from compute.layout import CHAMPION_FILE, METRICS_FILE, Layout
from compute.publish import Manifest, Staging

Why = Literal["gate", "promote", "rollback"]
MAX_PREVIOUS = 50  # former champions a rollback can go back through


class RegistryError(ValueError):
    """A promotion or rollback that cannot be done; the message says why, in one line."""


class RegistryDamaged(RegistryError):
    """history.json or champion.json is there but cannot be read. Nothing writes over it: it is
    the record of every change of champion, which a new file would lose."""

    then = "repair it, or move it aside to start a new record, then run again"

    def __init__(self, location: str, problem: str) -> None:
        super().__init__(f"{location} cannot be read ({problem}); it is left as it is")


class Champion(BaseModel):
    """model/champion.json."""

    version: str
    since: str  # UTC, ISO 8601
    why: Why
    previous: list[str] = []  # the champions before it, the latest first


class Change(BaseModel):
    """One line of the history: a gate's decision, or a promotion or rollback by hand."""

    when: str
    why: Why
    version: str  # the version decided on
    before: str | None  # the champion before
    after: str | None  # the champion after (the same as before when the gate kept it)
    detail: str = ""


class History(BaseModel):
    changes: list[Change] = Field(default_factory=list)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_version() -> str:
    """A version name that sorts by time and that BentoML takes as a tag's version."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def versions(layout: Layout) -> list[str]:
    """Every published version, oldest first."""
    return [name for name in storage.children(layout.models) if publish.is_published(layout.version(name))]


def latest_manifest(layout: Layout) -> Manifest | None:
    """The newest version's manifest: what an unchanged re-run of training reuses."""
    found = versions(layout)
    return publish.read_manifest(layout.version(found[-1])) if found else None


def read_version(layout: Layout, version: str) -> tuple[bytes, contract.ModelCard]:
    """A version's model.bin and card, checked whole (its SHA-256)."""
    if not publish.is_published(layout.version(version)):
        raise RegistryError(f"no model version {version} in {layout.models} (`stockpipe models` lists them)")
    try:
        return contract.read_published(layout.version(version))
    except contract.ModelNotWhole as exc:
        raise RegistryError(f"model version {version} is damaged: {exc}") from None


def champion(layout: Layout) -> Champion | None:
    """The champion's record, None when there is no champion; RegistryDamaged when it is unreadable."""
    return _read(storage.join(publish.data_dir(layout.model), CHAMPION_FILE), Champion)


def history(layout: Layout) -> list[Change]:
    """Every change of champion, oldest first; RegistryDamaged when the file is unreadable."""
    found = _read(layout.history, History)
    return found.changes if found else []


def check(layout: Layout) -> None:
    """Refuse (RegistryDamaged) before any work when the history or the champion's record cannot
    be read."""
    history(layout)
    champion(layout)


M = TypeVar("M", bound=BaseModel)


def _read(location: str, kind: type[M]) -> M | None:
    try:
        text = storage.read_bytes(location)
    except FileNotFoundError:
        return None
    try:
        return kind.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise RegistryDamaged(location, f"{where}: {first['msg']}" if where else first["msg"]) from None


def record(layout: Layout, change: Change) -> None:
    """Add a line to the history (read, append, write whole: the caller holds the lock)."""
    changes = [*history(layout), change]
    storage.write_json(History(changes=changes).model_dump(mode="json"), layout.history)


def promote(layout: Layout, version: str, why: Why, detail: str = "") -> Champion:
    """Make `version` the champion: model/ becomes its files, whole; then the history says so.
    Nothing is written when the history or the champion's record cannot be read."""
    check(layout)
    model, card = read_version(layout, version)  # refuses files whose SHA-256 does not match
    source = publish.data_dir(layout.version(version))
    metrics = storage.read_bytes(storage.join(source, METRICS_FILE))
    before = champion(layout)
    if why == "rollback":
        previous = before.previous[1:] if before else []
    else:
        previous = ([before.version, *before.previous] if before else [])[:MAX_PREVIOUS]
    chosen = Champion(version=version, since=now(), why=why, previous=previous)
    publish.remove_leftovers(layout.model)
    staging = Staging(layout.model)
    try:
        contract.write(staging.location, model, card)
        storage.write_bytes(metrics, staging.join(METRICS_FILE))
        storage.write_json(chosen.model_dump(mode="json"), staging.join(CHAMPION_FILE))
        staging.commit(Manifest(fingerprint=f"champion {version}"))
    except BaseException:
        staging.abort()
        raise
    record(
        layout,
        Change(
            when=chosen.since,
            why=why,
            version=version,
            before=before.version if before else None,
            after=version,
            detail=detail,
        ),
    )
    return chosen


def rollback(layout: Layout) -> Champion:
    """Return to the champion before the current one."""
    check(layout)
    current = champion(layout)
    if current is None:
        raise RegistryError(f"no champion in {layout.model}: nothing to roll back")
    if not current.previous:
        raise RegistryError(
            f"{current.version} is the first champion of {layout.root}: nothing to roll back to"
        )
    return promote(layout, current.previous[0], "rollback", f"back from {current.version}")


def prune(layout: Layout, keep: int) -> list[str]:
    """Delete old versions: keep the newest `keep` and every version that was ever champion."""
    found = versions(layout)
    now_champion = champion(layout)
    kept = set(found[-keep:]) if keep > 0 else set()
    if now_champion:
        kept |= {now_champion.version, *now_champion.previous}
    kept |= {c.after for c in history(layout) if c.after}
    gone = [v for v in found if v not in kept]
    for version in gone:
        storage.remove_dir(layout.version(version))
    return gone
