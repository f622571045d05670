"""What every test shares: a private environment and where the sample is.

tests/unit/ checks code alone (no Ray, no Prefect server, no HTTP): `make test-fast`.
tests/integration/ runs the real components (Ray, Prefect, BentoML over HTTP, S3 on loopback);
every test there is marked `integration`. `make test` runs both.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
# For the loopback S3 endpoint in test_object_store (it accepts any key). Set before Ray starts, so
# that its workers inherit them; no instance-metadata lookups, which would hang without a cloud.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "stockpipe-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "stockpipe-test")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# A private BentoML model and Bento store for the test session, never the user's ~/bentoml.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="stockpipe-bentoml-")
# Never the services a person's `stockpipe up` left running: every command here starts its own,
# or joins the session's (tests/integration/test_lasting.py starts and stops its own).
os.environ["STOCKPIPE_HOME"] = tempfile.mkdtemp(prefix="stockpipe-home-")
# Started as a background job by a non-interactive shell, this process ignores SIGINT, and so would
# every process it starts (an ignored signal stays ignored across exec): the servers and workers
# the tests start, and then stop with a Ctrl-C's SIGINT, must get it as from a person's shell.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Imported once the environment above is set.
from compute import download
from compute.download import DEFAULT_DATASET
from compute.lock import LOCK_FILE
from compute.settings import SAMPLE_SOURCE

SAMPLE = Path(SAMPLE_SOURCE)
INTEGRATION = Path(__file__).parent / "integration"


def sample_zip(dest: Path) -> Path:
    """The embedded sample, packed the way Kaggle ships the dataset."""
    dest.mkdir(parents=True, exist_ok=True)
    path = download.zip_path(DEFAULT_DATASET, dest)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(SAMPLE.rglob("*.csv")):
            archive.write(file, file.relative_to(SAMPLE).as_posix())
    return path


def scaled_sample(dest: Path, times: int) -> Path:
    """The embedded sample `times` over: every file also under new symbol names (AAPL.R1, ...)
    with its metadata rows, for a run whose stages take a few seconds."""
    for kind in ("stocks", "etfs"):
        (dest / kind).mkdir(parents=True)
        for path in sorted((SAMPLE / kind).glob("*.csv")):
            for k in range(times):
                os.link(path, dest / kind / (path.name if k == 0 else f"{path.stem}.R{k}.csv"))
    lines = (SAMPLE / "symbols_valid_meta.csv").read_text().splitlines()
    column = lines[0].split(",").index("NASDAQ Symbol")
    rows = [lines[0], *lines[1:]]
    for k in range(1, times):
        for row in lines[1:]:
            cells = row.split(",")
            cells[column] = f"{cells[column]}.R{k}"
            rows.append(",".join(cells))
    (dest / "symbols_valid_meta.csv").write_text("\n".join(rows) + "\n")
    return dest


# What a line that looks like an error or a traceback looks like: Python's, Prefect's and Ray's own
# (C++ log lines carry " E " between the time and the process id).
ERROR_LOOKING = re.compile(r"Traceback|\bERROR\b|\b[A-Za-z]+Error\b|\d E \d+ \d+\]")


def leftovers(out: Path) -> list[str]:
    """Hidden names beside an output's folders (staging, scratch), the run lock file aside."""
    return sorted(p.name for p in out.glob(".*") if p.name != LOCK_FILE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_stop_left() -> Iterator[None]:
    """A test that stops a run in this process (compute/stop.py) leaves no request to the next."""
    yield
    from compute import stop

    stop.clear()


@pytest.fixture(scope="session", autouse=True)
def _private_bentoml_home() -> Iterator[None]:
    yield
    shutil.rmtree(os.environ["BENTOML_HOME"], ignore_errors=True)
    shutil.rmtree(os.environ["STOCKPIPE_HOME"], ignore_errors=True)
