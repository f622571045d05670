"""Source and output on an object store, through a real S3 API served over HTTP on loopback (moto's
stand-alone server: the pipeline talks to it with pyarrow's own S3 client, as it would to AWS)."""

from __future__ import annotations

import io
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from compute import model as contract
from compute import publish, registry, storage
from compute.layout import Layout
from compute.settings import Settings
from harness.faulty_proxy import Fault, FaultyProxy, Request
from harness.procs import free_port, start_server, stop
from tests.conftest import SAMPLE

BUCKET = "stockpipe"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A loopback S3 endpoint holding the sample as a folder and as a zip."""
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    _, process = start_server(command, port, log, ready_path="/")
    try:
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        _upload_sample(fs)
        options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        yield {"fs": fs, "port": port, "uri": lambda key: f"s3://{BUCKET}/{key}?{options}"}
    finally:
        stop(process)


def _upload_sample(fs: pafs.S3FileSystem) -> None:
    fs.create_dir(BUCKET)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(SAMPLE.rglob("*")):
            if path.is_file():
                name = path.relative_to(SAMPLE).as_posix()
                archive.writestr(name, path.read_bytes())
                with fs.open_output_stream(f"{BUCKET}/sample/{name}") as fh:
                    fh.write(path.read_bytes())
    with fs.open_output_stream(f"{BUCKET}/sample.zip") as fh:
        fh.write(zipped.getvalue())


def _stage_table(stage: str) -> pa.Table:
    parts = publish.parquet_parts(stage)
    assert parts, f"no parts in {stage}"
    return pa.concat_tables([storage.read_parquet(p) for p in parts])


@pytest.fixture(scope="module")
def s3_run(s3: dict[str, Any], prefect_harness: None) -> Any:
    """The whole pipeline from the sample on S3 to an output on S3, runs/a."""
    from flows.pipeline import stock_pipeline

    # Default rounds: a model that beats the baseline, which the gate makes the first champion.
    return stock_pipeline(source=s3["uri"]("sample"), out=s3["uri"]("runs/a"))


def test_folder_on_s3_to_output_on_s3(s3: dict[str, Any], s3_run: Any, sample_run: dict[str, Any]) -> None:
    result = s3_run
    fs = s3["fs"]
    local = sample_run["result"]
    assert result.ingest.rows == local.ingest.rows
    assert result.ingest.files == local.ingest.files

    # Stage data is found through each stage's manifest, which names the committed version prefix.
    for stage in ("stage1", "stage2", "quarantine", "model"):
        info = fs.get_file_info(f"{BUCKET}/runs/a/{stage}/_manifest.json")
        assert info.type == pafs.FileType.File
    stage1 = _stage_table(s3["uri"]("runs/a/stage1"))
    local_stage1 = pq.read_table(Path(sample_run["out"]) / "stage1")
    assert stage1.num_rows == local_stage1.num_rows == local.ingest.rows.kept
    assert stage1.sort_by([("Symbol", "ascending"), ("Date", "ascending")]).equals(
        local_stage1.sort_by([("Symbol", "ascending"), ("Date", "ascending")])
    )
    assert _stage_table(s3["uri"]("runs/a/stage2")).num_rows == local.features.rows

    # The model is published like a stage: its files under the version its manifest names.
    model_dir = publish.data_dir(s3["uri"]("runs/a/model"))
    for name in ("model.bin", "model.json", "metrics.json"):
        assert storage.is_file(storage.join(model_dir, name)), name
    model, card = contract.read_published(s3["uri"]("runs/a/model"))
    assert card.model_sha256 == contract.sha256(model)
    for key in ("logs/training.log", "reports/ingest.json", "reports/learning_curve.png"):
        assert fs.get_file_info(f"{BUCKET}/runs/a/{key}").type == pafs.FileType.File, key
    log_lines = fs.open_input_stream(f"{BUCKET}/runs/a/logs/training.log").read().decode().splitlines()
    assert len(log_lines) == Settings().train_rounds and log_lines[0].startswith("round=0 train-")
    # Nothing is left behind: no training scratch space, one version per published folder.
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/a", recursive=True))]
    assert not [n for n in names if "/_work" in n]
    for folder in ("stage1", "stage2", "quarantine", "model"):
        versions = {n.split("/")[4] for n in names if n.startswith(f"{BUCKET}/runs/a/{folder}/v-")}
        assert len(versions) == 1, (folder, versions)
    assert result.package and result.package.model == f"stock-volume:{result.train.version}"  # type: ignore[union-attr]

    # The registry on the store: the version published like a stage, the champion, its history;
    # a promotion and a rollback publish model/ anew, whole, through the store's manifest.
    layout = Layout(s3["uri"]("runs/a"))
    version = result.train.version  # type: ignore[union-attr]
    assert registry.versions(layout) == [version]
    assert registry.champion(layout).version == version  # type: ignore[union-attr]
    assert [(c.why, c.after) for c in registry.history(layout)] == [("gate", version)]
    registry.promote(layout, version, "promote", "the same again")
    assert registry.rollback(layout).version == version
    assert contract.read_published(s3["uri"]("runs/a/model"))[1].version == version
    assert [c.why for c in registry.history(layout)] == ["gate", "promote", "rollback"]
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/a/model", recursive=True))]
    assert len({n.split("/")[4] for n in names if "/v-" in n}) == 1, "old champion versions left"


def test_a_built_bento_follows_a_champion_on_the_store(
    s3: dict[str, Any], s3_run: Any, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """The sample run's Bento (its own files, its own packages), told to follow runs/a on S3: it
    answers with that champion, and a version promoted on the store reaches it. (The Bento once
    shipped compute/storage.py without the settings module it imports, and could not read the
    store.)"""
    import os
    import time

    import httpx

    from compute.stage import run
    from compute.stages import Train

    layout = Layout(s3["uri"]("runs/a"))
    first = registry.champion(layout).version  # type: ignore[union-attr]
    second = run(Train(Settings(out=layout.root, train_rounds=5), progress=lambda _line: None)).version
    port = free_port()
    env = {**os.environ, "STOCKPIPE_SERVE_FOLLOW": layout.root, "STOCKPIPE_SERVE_FOLLOW_SECONDS": "1"}
    command = [sys.executable, "-m", "bentoml", "serve", sample_run["result"].package.bento,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    url, server = start_server(command, port, tmp_path / "bento.log", env=env)
    try:
        for target in (first, second):
            if target == second:
                registry.promote(layout, second, "promote", "by the test")
            deadline = time.monotonic() + 20
            while (info := httpx.get(f"{url}/model").json())["version"] != target:
                assert time.monotonic() < deadline, (
                    target,
                    info,
                    (tmp_path / "bento.log").read_text()[-2000:],
                )
                time.sleep(0.2)
            assert info["follows"] == layout.root
        assert httpx.get(
            f"{url}/predict", params={"vol_moving_avg": 51318, "adj_close_rolling_med": 216}
        ).is_success
        assert "cannot read the champion" not in (tmp_path / "bento.log").read_text()
    finally:
        stop(server)
        registry.promote(layout, first, "promote", "back, for the other tests")


def test_zip_on_s3_rebuild_replaces_the_version_and_unchanged_rerun_reuses(
    s3: dict[str, Any], prefect_harness: None
) -> None:
    from flows.pipeline import ingest_flow

    fs = s3["fs"]
    out = s3["uri"]("runs/b")
    first = ingest_flow(source=s3["uri"]("sample.zip"), out=out)
    assert first.rows.read == first.rows.kept + first.rows.quarantined + first.rows.in_failed_files
    again = ingest_flow(source=s3["uri"]("sample.zip"), out=out)
    assert again.reused is True

    def versions() -> set[str]:
        listed = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/b/stage1"))
        return {i.base_name for i in listed if i.type == pafs.FileType.Directory}

    before = versions()
    rebuilt = ingest_flow(source=s3["uri"]("sample.zip"), out=out, force=True)
    after = versions()
    assert len(before) == len(after) == 1 and before != after, "the old version must be replaced"
    assert rebuilt.rows == first.rows
    assert _stage_table(s3["uri"]("runs/b/stage1")).num_rows == first.rows.kept


def test_unknown_scheme_is_a_clear_error(tmp_path: Path) -> None:
    from flows.cli import main

    assert main(["ingest", "--source", str(SAMPLE), "--out", "nosuch://bucket/x"]) == 2


def test_credentials_in_a_uri_are_refused() -> None:
    from flows.cli import main

    # A location is written to reports and logs, so secrets must come from the environment.
    assert main(["ingest", "--source", "s3://AKIA:hunter2@bucket/data", "--out", "out"]) == 2
    assert main(["features", "--out", "s3://bucket/x?secret_key=hunter2"]) == 2


def _through(proxy: FaultyProxy, key: str) -> str:
    return f"s3://{BUCKET}/{key}?endpoint_override=127.0.0.1:{proxy.port}&scheme=http&region=us-east-1"


def test_throttling_and_resets_during_a_publish_are_retried_by_the_store_client(
    s3: dict[str, Any], ray_session: str | None, prefect_harness: None, sample_run: dict[str, Any]
) -> None:
    """The first try of every fourth write to the store is answered 503 SlowDown and of every
    seventh request reset, through a proxy in front of moto, while stage 1 is written and
    published: pyarrow's S3 client retries each (compute/storage.py), and stage 1 is whole and
    exact. (Reads are reset but not throttled: pyarrow 26 writes a throttled GET's error body into
    the read's buffer and fails with INTERNAL_FAILURE instead of retrying; docs/operations.md.)"""
    from flows.pipeline import ingest_flow

    def flaky(request: Request) -> Fault:
        if request.attempt > 1:
            return None
        if request.number % 4 == 0 and request.method != "GET":
            return "slow_down"
        return "reset" if request.number % 7 == 0 else None

    with FaultyProxy(s3["port"], flaky) as proxy:
        result = ingest_flow(source=str(SAMPLE), out=_through(proxy, "runs/flaky"))
    assert {f[0] for f in proxy.faults} == {"slow_down", "reset"} and len(proxy.faults) > 10, proxy.faults
    assert result.rows == sample_run["result"].ingest.rows
    ours = _stage_table(s3["uri"]("runs/flaky/stage1")).sort_by(
        [("Symbol", "ascending"), ("Date", "ascending")]
    )
    local = pq.read_table(Path(sample_run["out"]) / "stage1").sort_by(
        [("Symbol", "ascending"), ("Date", "ascending")]
    )
    assert ours.equals(local)


def test_a_store_that_keeps_failing_ends_in_one_line_and_leaves_the_previous_publish(
    s3: dict[str, Any], ray_session: str | None, prefect_harness: None, tmp_path: Path
) -> None:
    """Every write of a part file answered 503 SlowDown, beyond the client's retries: one line,
    exit status 1, and the stage 1 published before is the one readers find. The command sets 3
    attempts, and its job's tasks on this session's cluster use them (compute/cluster.py), instead
    of the workers' default 10 (about 13 s a write)."""
    import os
    import subprocess

    import ray
    from prefect.settings import PREFECT_API_URL

    from tests.conftest import ERROR_LOOKING

    out = s3["uri"]("runs/failing")
    from flows.pipeline import ingest_flow

    ingest_flow(source=str(SAMPLE), out=out)
    published = publish.read_manifest(s3["uri"]("runs/failing/stage1"))

    def throttled(request: Request) -> Fault:
        return "slow_down" if request.method == "PUT" and "part-" in request.path else None

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "STOCKPIPE_STORE_ATTEMPTS": "3"}  # fmt: skip
    with FaultyProxy(s3["port"], throttled) as proxy:
        command = [sys.executable, "-m", "flows.cli", "ingest", "--force", "--source", str(SAMPLE), "--out",
                   _through(proxy, "runs/failing")]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    # Each part file's write tried exactly as often as the command said, by whichever worker wrote it.
    attempts = Counter(path for _fault, method, path in proxy.faults if method == "PUT")
    assert attempts and set(attempts.values()) == {3}, attempts
    lines = [line for line in result.stderr.splitlines() if line.startswith("stockpipe:")]
    assert len(lines) == 1 and "keeps failing" in lines[0] and "SLOW_DOWN" in lines[0].upper(), lines
    assert "ingest stopped: stage 1 is unchanged; run again once the store answers" in lines[0]
    printed = (result.stdout + result.stderr).splitlines()
    assert not [line for line in printed if ERROR_LOOKING.search(line) and not line.startswith("stockpipe:")]
    assert publish.read_manifest(s3["uri"]("runs/failing/stage1")) == published
    assert _stage_table(s3["uri"]("runs/failing/stage1")).num_rows > 0
