"""The model registry on real folders: versions published whole, promotion and rollback through
model/, the history, pruning that keeps every former champion, and a tampered version refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compute import model as contract
from compute import publish, registry, storage
from compute.layout import CHAMPION_FILE, METRICS_FILE, Layout
from compute.publish import Manifest, Staging
from tests.unit.test_publish import card


def trained(layout: Layout, n: int) -> str:
    """A version as the train stage publishes it: model.bin, its card, metrics.json."""
    version = f"2026120{n}-000000-abcd"
    staging = Staging(layout.version(version))
    contract.write(staging.location, os.urandom(1000 + n), card(n).model_copy(update={"version": version}))
    storage.write_json({"rounds": n}, staging.join(METRICS_FILE))
    staging.commit(Manifest(fingerprint=f"fingerprint {n}"))
    return version


def served(layout: Layout) -> str | None:
    """The version in model/, as serve and package read it, checked whole."""
    _, found = contract.read_published(layout.model)
    return found.version


def test_promote_and_rollback_go_through_model_and_the_history(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    v1, v2, v3 = (trained(layout, n) for n in (1, 2, 3))
    assert registry.versions(layout) == [v1, v2, v3] and registry.champion(layout) is None
    assert registry.latest_manifest(layout).fingerprint == "fingerprint 3"  # type: ignore[union-attr]

    registry.promote(layout, v1, "gate", "it beats the baseline")
    registry.promote(layout, v3, "promote", "by hand")
    assert served(layout) == v3
    assert registry.champion(layout).previous == [v1]  # type: ignore[union-attr]
    assert storage.read_json(str(tmp_path / "model" / METRICS_FILE)) == {"rounds": 3}

    assert registry.rollback(layout).version == v1
    assert served(layout) == v1 and registry.champion(layout).previous == []  # type: ignore[union-attr]
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(layout)

    assert [(c.why, c.before, c.after) for c in registry.history(layout)] == [
        ("gate", None, v1), ("promote", v1, v3), ("rollback", v3, v1),
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(
        ["_manifest.json", "model.bin", "model.json", METRICS_FILE, CHAMPION_FILE]
    )
    assert not [p for p in tmp_path.rglob(".*") if p.name != "history.json"], "staging left behind"


def test_a_tampered_version_is_refused_and_the_champion_stays(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    v1, v2 = trained(layout, 1), trained(layout, 2)
    registry.promote(layout, v1, "gate")
    (Path(layout.version(v2)) / "model.bin").write_bytes(b"not the model the card describes")
    with pytest.raises(registry.RegistryError, match=f"{v2} is damaged: .*does not match the SHA-256"):
        registry.promote(layout, v2, "promote")
    with pytest.raises(registry.RegistryError, match="no model version nope"):
        registry.promote(layout, "nope", "promote")
    assert served(layout) == v1 and len(registry.history(layout)) == 1


def test_pruning_keeps_the_newest_and_every_former_champion(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    found = [trained(layout, n) for n in range(1, 8)]
    registry.promote(layout, found[0], "gate")
    registry.promote(layout, found[2], "gate")
    assert registry.prune(layout, keep=2) == [found[1], found[3], found[4]]
    assert registry.versions(layout) == [found[0], found[2], found[5], found[6]]
    assert served(layout) == found[2] and publish.is_published(layout.version(found[0]))
