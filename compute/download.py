"""Fetching the Kaggle dataset zip, verifying it, and skipping the download when a verified copy
is already on disk. Credentials come from the environment or ~/.kaggle, never from this project.

Next to `<dest>/<name>.zip` the verification writes `<name>.zip.sha256` (sha256sum format) and
`<name>.zip.json` (size, SHA-256, file counts); a copy counts as verified while both still match.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

KAGGLE_PREFIX = "kaggle:"
DEFAULT_DATASET = "jacksoncrow/stock-market-dataset"
KAGGLE_API_HOST = "api.kaggle.com"
OFFLINE_HINT = "or pass --source with a Kaggle-layout folder or zip already on disk"


class DownloadError(RuntimeError):
    """The dataset could not be fetched or verified; the message says what to do, in one line."""


def kaggle_dataset(source: str) -> str | None:
    """'kaggle:owner/name' -> 'owner/name'; None for anything else."""
    if not source.startswith(KAGGLE_PREFIX):
        return None
    dataset = source[len(KAGGLE_PREFIX) :].strip("/")
    if dataset.count("/") != 1 or not all(dataset.split("/")):
        raise DownloadError(f"'{source}' is not kaggle:OWNER/DATASET (e.g. kaggle:{DEFAULT_DATASET})")
    return dataset


def zip_path(dataset: str, dest: Path) -> Path:
    return Path(dest) / f"{dataset.split('/')[1]}.zip"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, max_file_bytes: int) -> dict[str, Any]:
    """Check the zip is whole and in the Kaggle layout; record its size and SHA-256 beside it."""
    # Here, not at the top: the command line reads DEFAULT_DATASET for --help (pyarrow, 0.3 s).
    from compute.stages.ingest.sources import SourceError, list_files, open_source
    from compute.storage import write_bytes, write_json

    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()  # reads every member and checks its CRC
        if broken is not None:
            raise DownloadError(f"{path}: member {broken} is corrupt (CRC mismatch)")
        listing = list_files(open_source(path), max_file_bytes)
    except (zipfile.BadZipFile, OSError, SourceError) as exc:
        raise DownloadError(f"{path} is not a usable dataset zip: {exc}") from None
    if listing.meta_member is None:
        raise DownloadError(
            f"{path} has no symbols_valid_meta.csv: not the Kaggle stock-market-dataset layout"
        )
    info = {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "symbol_files": len(listing.files),
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_bytes(f"{info['sha256']}  {path.name}\n".encode(), _sidecar(path, ".sha256"))
    write_json(info, _sidecar(path, ".json"))
    return info


def is_verified(path: Path) -> bool:
    """True when the zip and its recorded size and SHA-256 still agree."""
    try:
        info = json.loads(_sidecar(path, ".json").read_text())
        recorded = _sidecar(path, ".sha256").read_text().split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return (
        path.is_file()
        and path.stat().st_size == info.get("bytes")
        and recorded == info.get("sha256")
        and sha256_of(path) == recorded
    )


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def check_access() -> None:
    """Fail fast, before any work, when there are no credentials or no route to Kaggle."""
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    has_env = bool(os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
    has_token = bool(os.environ.get("KAGGLE_API_TOKEN")) or (config_dir / "access_token").is_file()
    if not (has_env or has_token or (config_dir / "kaggle.json").is_file()):
        raise DownloadError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or save an API token as "
            f"{config_dir / 'kaggle.json'} (kaggle.com > Settings > API), {OFFLINE_HINT}"
        )
    try:
        socket.getaddrinfo(KAGGLE_API_HOST, 443)
    except OSError:
        raise DownloadError(
            f"cannot reach {KAGGLE_API_HOST} (no network?): try again online, {OFFLINE_HINT}"
        ) from None


def fetch(dataset: str, dest: Path, max_file_bytes: int, *, force: bool = False) -> tuple[Path, bool]:
    """The verified dataset zip in dest, downloading only when needed; returns (path, downloaded)."""
    target = zip_path(dataset, dest)
    if not force and target.is_file():
        if is_verified(target):
            return target, False
        if not _sidecar(target, ".json").exists():
            with contextlib.suppress(DownloadError):  # a copy placed by hand: keep it if it is good
                verify(target, max_file_bytes)
                return target, False
    check_access()
    partial = Path(dest) / f".download-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _kaggle_download(dataset, partial)
        downloaded = partial / target.name
        if not downloaded.is_file():
            raise DownloadError(f"Kaggle sent no {target.name} for {dataset}")
        verify(downloaded, max_file_bytes)
        os.replace(downloaded, target)
        for suffix in (".sha256", ".json"):
            os.replace(_sidecar(downloaded, suffix), _sidecar(target, suffix))
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target, True


def _kaggle_download(dataset: str, folder: Path) -> None:
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise DownloadError("the kaggle package is not installed (pip install kaggle)") from None
    api = KaggleApi()
    chatter = io.StringIO()  # the client prints multi-line help; keep the one-line message ours
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            api.authenticate()
            api.dataset_download_files(dataset, path=str(folder), quiet=True, force=True)
    except SystemExit:
        raise DownloadError(f"Kaggle rejected the credentials: check them, {OFFLINE_HINT}") from None
    except OSError as exc:  # requests' ConnectionError and timeouts are OSErrors
        raise DownloadError(
            f"cannot download {dataset} from Kaggle ({type(exc).__name__}): {OFFLINE_HINT}"
        ) from None
    except Exception as exc:  # HTTP errors from the client: 401, 403, 404 ...
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DownloadError(f"Kaggle refused the download of {dataset}: {first}") from None
