"""Getting the Kaggle dataset: fail fast without credentials or network (for real: this machine has
no internet), and verify / skip on a zip built here from the embedded sample. No fake Kaggle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from compute import download
from compute.download import DEFAULT_DATASET, DownloadError
from tests.conftest import sample_zip

LIMIT = 64 << 20


def no_credentials(tmp: Path) -> dict[str, str]:
    """No Kaggle credentials, and no zip already downloaded: a verified copy in the project's
    data/downloads (a user's, or this machine's) would be used without asking Kaggle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "STOCKPIPE_"))}
    home = {"HOME": str(tmp / "home"), "KAGGLE_CONFIG_DIR": str(tmp / "home" / ".kaggle")}
    return {**env, **home, "STOCKPIPE_DOWNLOAD_DIR": str(tmp / "downloads")}


def stockpipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(n in result.stderr for n in needles), result.stderr


def test_without_credentials_download_fails_fast_with_what_to_do(tmp_path: Path) -> None:
    result = stockpipe(["download", "--dest", str(tmp_path / "d")], no_credentials(tmp_path))
    assert_one_line_failure(result, "no Kaggle credentials", "KAGGLE_USERNAME", "--source")
    assert not (tmp_path / "home" / ".kaggle").exists()  # nothing written where credentials live


def test_without_network_download_fails_fast_with_what_to_do(tmp_path: Path) -> None:
    # Credentials that look real, on a machine with no route to Kaggle (true here and in CI).
    env = {**no_credentials(tmp_path), "KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "0" * 32}
    result = stockpipe(["download", "--dest", str(tmp_path / "d")], env)
    assert_one_line_failure(result, "--source")
    assert "cannot reach" in result.stderr or "Kaggle refused" in result.stderr
    assert not list((tmp_path / "d").glob("*.zip"))


def test_run_with_a_kaggle_source_fails_before_starting_anything(tmp_path: Path) -> None:
    result = stockpipe(
        ["run", "--source", f"kaggle:{DEFAULT_DATASET}", "--out", str(tmp_path)], no_credentials(tmp_path)
    )
    assert_one_line_failure(result, "no Kaggle credentials")
    assert not list(tmp_path.iterdir())


def test_a_verified_copy_is_not_downloaded_again(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    path = sample_zip(dest)
    # No credentials and no network: this can only succeed without downloading.
    got, downloaded = download.fetch(DEFAULT_DATASET, dest, LIMIT)
    assert (got, downloaded) == (path, False)
    info = json.loads((dest / f"{path.name}.json").read_text())
    assert info["bytes"] == path.stat().st_size and info["symbol_files"] == 39
    assert (dest / f"{path.name}.sha256").read_text() == f"{download.sha256_of(path)}  {path.name}\n"
    assert download.is_verified(path)
    result = stockpipe(["download", "--dest", str(dest)], no_credentials(tmp_path))
    assert result.returncode == 0 and "not downloaded again" in result.stdout


def test_a_changed_copy_is_no_longer_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    dest = tmp_path / "d"
    path = sample_zip(dest)
    download.verify(path, LIMIT)
    with open(path, "ab") as fh:
        fh.write(b"tampered")
    assert not download.is_verified(path)
    with pytest.raises(DownloadError, match="no Kaggle credentials"):
        download.fetch(DEFAULT_DATASET, dest, LIMIT)  # it would have to download again


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"README.md": b"x"}, "no stocks/"),
        ({"stocks/AAA.csv": b"Date,Open\n"}, "no symbols_valid_meta.csv"),
    ],
)
def test_verification_refuses_a_zip_that_is_not_the_dataset(
    tmp_path: Path, members: dict, message: str
) -> None:
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(DownloadError, match=message):
        download.verify(path, LIMIT)
    assert not (tmp_path / "x.zip.json").exists()


def test_verification_refuses_a_truncated_zip(tmp_path: Path) -> None:
    path = sample_zip(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DownloadError, match="not a usable dataset zip"):
        download.verify(path, LIMIT)


@pytest.mark.parametrize("source", ["kaggle:", "kaggle:owner", "kaggle:a/b/c", "kaggle:/x"])
def test_bad_kaggle_references_are_refused(source: str) -> None:
    with pytest.raises(DownloadError, match="not kaggle:OWNER/DATASET"):
        download.kaggle_dataset(source)


def test_the_daily_deployment_reads_the_zip_where_download_writes_it() -> None:
    """`stockpipe download`, then the `daily` deployment with no edit: its default source is the
    path download writes, relative to the project root (the worker's working directory)."""
    import yaml

    from compute.settings import PROJECT_ROOT, Settings

    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    daily = next(d for d in deployments if d["name"] == "daily")
    written = download.zip_path(DEFAULT_DATASET, Settings.model_fields["download_dir"].default)
    assert Path(daily["parameters"]["source"]) == written
    assert not written.is_absolute()
    pull = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["pull"]
    assert pull[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $PWD }}"
