"""Session-wide real services: one local Ray and one Prefect test harness, started once (~10 s each),
and the flow run once on the embedded sample, whose outputs most tests read."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.settings import Settings
from harness.procs import free_port, start_server, stop
from tests.conftest import SAMPLE


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str | None]:
    """A real local Ray (2 CPUs, dashboard on a free loopback port), shared by every test."""
    import ray

    from compute import cluster

    cluster.connect(Settings(ray_address=None, dashboard_port=free_port()))
    yield cluster.dashboard_url()
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's own test harness: a temporary database and API server for this session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_run(
    ray_session: str | None, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The `stock-pipeline` flow run once on the embedded sample; tests read its outputs."""
    from flows.pipeline import stock_pipeline

    out = tmp_path_factory.mktemp("sample-run")
    state = stock_pipeline(source=str(SAMPLE), out=str(out), return_state=True)
    return {"out": out, "state": state, "result": state.result()}


@pytest.fixture(scope="session")
def served(sample_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`stockpipe serve` on a free loopback port, for the model the sample run trained."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    out = str(sample_run["out"])
    command = [sys.executable, "-m", "flows.cli", "serve", "--out", out, "--port", str(port)]
    url, process = start_server(command, port, log)
    yield url
    stop(process)


@pytest.fixture(scope="session")
def expected(sample_run: dict[str, Any]) -> dict[str, Any]:
    """Real feature rows from the sample (plus edge values) and the booster's own predictions."""
    import numpy as np
    import pyarrow.parquet as pq

    from compute import model as contract

    table = pq.read_table(sample_run["out"] / "stage2").to_pandas().dropna().sample(200, random_state=0)
    m = np.concatenate([table["vol_moving_avg"].to_numpy(), [0.0, 0.5, 51318.0, 7.4e9, 1e12]])
    a = np.concatenate([table["adj_close_rolling_med"].to_numpy(), [0.0, 1.0, 216.0, 500.0, 1e7]])
    booster, card = contract.load(sample_run["out"] / "model")
    volume = contract.predict_volume(booster, card, contract.feature_matrix(m, a))
    return {"m": m, "a": a, "volume": np.rint(volume).astype(np.int64)}


@pytest.fixture(scope="session")
def bad_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source with every kind of broken file next to good ones."""
    root = tmp_path_factory.mktemp("bad-source")
    for kind in ("stocks", "etfs"):
        (root / kind).mkdir()
    for member in ["stocks/ATAC.csv", "stocks/ACC.csv", "etfs/AVDG.csv"]:
        shutil.copy(SAMPLE / member, root / member)
    meta = (SAMPLE / "symbols_valid_meta.csv").read_text().splitlines()
    (root / "symbols_valid_meta.csv").write_text(
        "\n".join(line for line in meta if ",AVDG," not in line) + "\n"
    )
    good = (SAMPLE / "stocks/ATAC.csv").read_bytes()
    (root / "stocks/TRUNC.csv").write_bytes(good[: len(good) // 2 + 7])
    (root / "stocks/BIN.csv").write_bytes(bytes(range(256)) * 4)
    (root / "stocks/HDR.csv").write_text("Date,Price,Volume\n2020-01-01,1,2\n2020-01-02,1,2\n")
    (root / "stocks/EMPTY.csv").write_bytes(b"")
    (root / "stocks/bad name.csv").write_bytes(good)
    return root
