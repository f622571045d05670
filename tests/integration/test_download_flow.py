"""A kaggle: source in the flow: ingested from its verified copy, with no download."""

from __future__ import annotations

from pathlib import Path

import pytest

from compute import download
from compute.download import DEFAULT_DATASET
from tests.conftest import sample_zip

LIMIT = 64 << 20


def test_flow_ingests_a_kaggle_source_from_its_verified_copy(
    ray_session: str | None, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import ingest_flow

    dest = tmp_path / "downloads"
    path = sample_zip(dest)
    download.verify(path, LIMIT)
    monkeypatch.setenv("STOCKPIPE_DOWNLOAD_DIR", str(dest))
    report = ingest_flow(source=f"kaggle:{DEFAULT_DATASET}", out=str(tmp_path / "out"))
    assert report.source == str(path)
    assert report.files.model_dump() == {"seen": 39, "ingested": 39, "failed": 0}
