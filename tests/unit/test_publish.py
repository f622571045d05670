"""The publish protocol on local folders: whole swaps, repair after a crash, and a publisher killed
(SIGKILL, for real) at random moments while a reader keeps reading: old or new, never a mix."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compute import model as contract
from compute import publish
from compute.metrics import Metrics
from compute.publish import Manifest, Staging


def card(version: int) -> contract.ModelCard:
    """A model card that says which of the test's versions it is (as its `created`)."""
    scores = Metrics(mae=1.0, rmse=1.0, r2=0.0, mape_pct=1.0)
    return contract.ModelCard(
        objective="test",
        training_window=None,
        holdout_cutoff="2020-01-01",
        data_hash="sha256:test",
        metrics=contract.HoldoutMetrics(time_split=scores, baseline=scores),
        versions={},
        created=str(version),
    )


def version_of(card: contract.ModelCard) -> int:
    return int(card.created)


def publish_version(final: Path, version: int) -> None:
    staging = Staging(str(final))
    contract.write(staging.location, os.urandom(50_000 + version), card(version))
    staging.commit(Manifest(fingerprint=str(version)))


def test_commit_replaces_the_whole_folder_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    final = tmp_path / "model"
    publish_version(final, 1)
    (final / "stray").write_text("from version 1")
    publish_version(final, 2)
    model, written = contract.read(final)
    assert version_of(written) == 2 and written.model_sha256 == contract.sha256(model)
    assert not (final / "stray").exists(), "the old folder's files must go with it"
    assert publish.read_manifest(str(final)).fingerprint == "2"  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_aborted_staging_leaves_the_published_folder_alone(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    publish_version(final, 1)
    staging = Staging(str(final))
    (Path(staging.location) / "part-00000.parquet").write_bytes(b"half")
    staging.abort()
    assert version_of(contract.read(final)[1]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_a_crash_between_the_fallback_renames_is_repaired(tmp_path: Path) -> None:
    """Where the filesystem cannot exchange two folders, publishing takes two renames; a crash
    between them leaves the old folder aside under a .old name, which the next run puts back."""
    final = tmp_path / "model"
    publish_version(final, 1)
    os.rename(final, tmp_path / ".model.0123456789ab.old")  # the state such a crash leaves
    (tmp_path / ".model.ba9876543210.staging").mkdir()  # and the new content, never published
    publish.remove_leftovers(str(final))
    assert version_of(contract.read(final)[1]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_model_files_that_do_not_belong_together_are_refused(tmp_path: Path) -> None:
    contract.write(tmp_path, b"new model", card(2))
    (tmp_path / "model.bin").write_bytes(b"old model")  # what the old in-place publish could leave
    with pytest.raises(contract.ModelNotWhole, match="does not match the SHA-256"):
        contract.read(tmp_path)


PUBLISHER = """
import sys, time
from pathlib import Path
from tests.unit.test_publish import publish_version
final, version = Path(sys.argv[1]), int(sys.argv[2])
while True:
    version += 1
    publish_version(final, version)
    print(version, flush=True)
"""


def test_a_publisher_killed_at_any_moment_leaves_the_old_or_the_new_folder(tmp_path: Path) -> None:
    final = tmp_path / "model"
    publish_version(final, 0)
    published = 0
    rng = random.Random(0)
    for _ in range(15):
        process = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(final), str(published * 1000)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        first = process.stdout.readline()  # type: ignore[union-attr]  # publishing has begun
        time.sleep(rng.uniform(0, 0.05))  # then kill it somewhere in one of its publishes
        process.send_signal(signal.SIGKILL)
        done = [int(line) for line in (first + process.communicate()[0]).split()]
        publish.remove_leftovers(str(final))
        _, found = contract.read(final)  # raises if model.bin and model.json do not match
        # The last completed publish, or the one it was in the middle of.
        assert version_of(found) in (done[-1], done[-1] + 1), (found, done[-3:])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
        published = version_of(found) // 1000 + 1


def test_a_reader_sees_whole_models_while_they_are_published(tmp_path: Path) -> None:
    final = tmp_path / "model"
    publish_version(final, 0)
    stop = threading.Event()

    def publish_many() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            publish_version(final, version)

    writer = threading.Thread(target=publish_many)
    writer.start()
    try:
        seen = set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            model, found = contract.read_published(str(final))
            assert found.model_sha256 == contract.sha256(model)
            seen.add(version_of(found))
    finally:
        stop.set()
        writer.join()
    assert len(seen) > 10, "the reader should have seen many versions"


def test_a_stages_code_is_every_module_it_imports_found_without_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fingerprint's modules are derived: a module imported inside a function counts, a name
    imported from a module is not taken for one, and editing any of them changes the digest."""
    from compute.publish import code_digest, code_modules

    train = set(code_modules("compute.stages.train.stage"))
    stage_files = Path(__file__).resolve().parents[2].glob("compute/stages/train/*.py")
    assert {f"compute.stages.train.{p.stem}" for p in stage_files} - {
        "compute.stages.train.__init__"
    } <= train
    # Once missing from a list kept by hand: editing them reused a stale model.
    assert {"compute.stages.train.gate", "compute.drift", "compute.schema",
            "compute.stages.train.results", "compute.stages.train.report"} <= train  # fmt: skip

    package = tmp_path / "fingerprinted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stage.py").write_text(
        "def build():\n    from fingerprinted.work import NAME\n    return NAME\n"
    )
    (package / "work.py").write_text("NAME = 'work'\n")
    (package / "unused.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert code_modules("fingerprinted.stage") == ["fingerprinted.stage", "fingerprinted.work"]
    before = code_digest("fingerprinted.stage")
    (package / "unused.py").write_text("X = 1\n")
    assert code_digest("fingerprinted.stage") == before
    (package / "work.py").write_text("NAME = 'changed'\n")
    assert code_digest("fingerprinted.stage") != before
