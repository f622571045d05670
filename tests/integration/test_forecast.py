"""The next-session forecast on the embedded sample, as the pipeline published it and as `stockpipe
serve` answers it: every symbol accounted for, the exchange's next session, a forecast that does
not change when the rows after its day are cut, and the routes' answers and refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compute import stage
from compute.settings import get_settings
from compute.stages.forecast.calendar import Calendar
from compute.stages.forecast.inputs import LOOK_BACK
from compute.stages.forecast.stage import Forecast
from harness.procs import free_port, start_server, stop
from tests.integration.test_interruptions import session_env


def table(out: Path, name: str) -> pa.Table:
    return pq.read_table(out / "forecast" / name)


def test_every_symbol_has_a_forecast_or_a_reason(sample_run: dict[str, Any]) -> None:
    out = sample_run["out"]
    stage1 = pq.read_table(out / "stage1", columns=["Symbol", "Date"]).to_pandas()
    forecast, missing = table(out, "forecast.parquet"), table(out, "not_forecast.parquet")
    result = sample_run["result"].forecast
    symbols = set(stage1["Symbol"])
    answered, skipped = set(forecast.column("symbol").to_pylist()), set(missing.column("symbol").to_pylist())
    assert answered | skipped == symbols and not answered & skipped
    assert result.symbols == len(answered) and sum(result.not_forecast.values()) == len(skipped)
    counts = stage1.groupby("Symbol").size()
    last = stage1["Date"].max()
    for row in missing.to_pylist():
        assert counts[row["symbol"]] < LOOK_BACK and row["reason"].startswith("too little history")
        assert f"{counts[row['symbol']]} sessions up to {row['last']}" in row["reason"]
    for symbol in answered:
        assert counts[symbol] >= LOOK_BACK and stage1.loc[stage1["Symbol"] == symbol, "Date"].max() == last


def test_each_forecast_is_for_the_exchanges_next_session_with_a_range(sample_run: dict[str, Any]) -> None:
    forecast = table(sample_run["out"], "forecast.parquet").to_pandas()
    calendar = Calendar.between(np.datetime64("2021-01-01"), np.datetime64("2021-01-27"))
    as_of = forecast["as_of"].to_numpy().astype("datetime64[D]")
    assert (forecast["date"].to_numpy() == calendar.next_session(as_of).astype(str)).all()
    assert set(forecast["date"]) == {"2021-01-28"}  # the sample ends on 2021-01-27, a Wednesday
    assert (forecast["low"] <= forecast["volume"]).all() and (forecast["volume"] <= forecast["high"]).all()
    result = sample_run["result"].forecast
    assert set(forecast["model"]) == {result.answers}
    if result.published_model:
        assert (forecast["volume"] == forecast["forecaster_volume"]).all()


def test_the_walk_forward_table_is_what_the_result_reports(sample_run: dict[str, Any]) -> None:
    walk = table(sample_run["out"], "walkforward.parquet").to_pandas()
    result = sample_run["result"].forecast.walk_forward
    assert len(result.folds) == walk["fold"].nunique() == get_settings().forecast_folds
    assert result.model.forecasts == len(walk)
    # The integers in the table round the forecasts the sums were taken over: within a share a row.
    assert abs((walk["volume"] - walk["actual"]).abs().mean() - result.model.mae) < 1
    for name in ("last", "mean5", "mean30"):
        assert abs((walk[name] - walk["actual"]).abs().mean() - result.naive[name].mae) < 1
    inside = ((walk["actual"] >= walk["low"]) & (walk["actual"] <= walk["high"])).mean()
    assert abs(inside - result.model.coverage) < 0.01
    for fold, rows in walk.groupby("fold"):
        info = result.folds[int(fold)]
        assert rows["date"].min() == info.first and rows["date"].max() == info.last
        assert (rows["as_of"] < rows["date"]).all() and info.cutoff < info.first


def test_a_forecast_is_the_same_when_the_rows_after_its_day_are_cut(
    sample_run: dict[str, Any], tmp_path: Path
) -> None:
    """The stage on the sample cut at the last fold's cutoff D: its forecast for the session after
    D is, for every symbol, the one the full run's last fold made for that session."""
    full = sample_run["out"]
    fold = sample_run["result"].forecast.walk_forward.folds[-1]
    cut = tmp_path / "cut"
    (cut / "stage1").mkdir(parents=True)
    for part in sorted((full / "stage1").glob("part-*.parquet")):
        rows = pq.read_table(part)
        pq.write_table(
            rows.filter(pc.less_equal(rows.column("Date"), fold.cutoff)), cut / "stage1" / part.name
        )
    result = stage.run(Forecast(get_settings(out=str(cut))))
    assert result.as_of == fold.cutoff and result.date == fold.first
    walk = table(full, "walkforward.parquet").to_pandas()
    made = walk[walk["date"] == fold.first].set_index("symbol")[["volume", "low", "high"]].sort_index()
    again = table(cut, "forecast.parquet").to_pandas().set_index("symbol").sort_index()
    again = again[["forecaster_volume", "forecaster_low", "forecaster_high"]]
    again.columns = ["volume", "low", "high"]
    assert len(made) > 20
    assert again.loc[made.index].equals(made)


def test_the_run_shows_the_walk_forward_and_the_busiest_forecasts_in_prefect(
    sample_run: dict[str, Any],
) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["forecast-walk-forward", "forecast-furthest-above-normal"]

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)), sort="CREATED_DESC"
            )
            return {a.key: a for a in reversed(found)}  # the latest of each

    artifacts = asyncio.run(read())
    result = sample_run["result"].forecast
    rows = artifacts["forecast-walk-forward"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    pooled = {r["forecast by"]: r for r in rows if r["sessions"] == "pooled"}
    assert set(pooled) == {"forecaster", "naive: the last session's volume", "naive: the 5-session mean",
                           "naive: the 30-session mean"}  # fmt: skip
    assert pooled["forecaster"]["MAE"] == round(result.walk_forward.model.mae)
    assert len(rows) == 4 * (len(result.walk_forward.folds) + 1)
    markdown = artifacts["forecast-furthest-above-normal"].data
    top = table(sample_run["out"], "forecast.parquet").to_pandas()
    top = top.assign(ratio=top["volume"] / top["mean30"]).sort_values("ratio", ascending=False)
    assert f"| {top['symbol'].iloc[0]} |" in markdown and result.why in markdown


def test_an_unchanged_rerun_reuses_the_forecast(sample_run: dict[str, Any]) -> None:
    settings = get_settings(out=str(sample_run["out"]))
    before = (sample_run["out"] / "forecast" / "forecast.parquet").stat().st_mtime_ns
    again = stage.run(Forecast(settings))
    assert again.reused and again.walk_forward == sample_run["result"].forecast.walk_forward
    assert (sample_run["out"] / "forecast" / "forecast.parquet").stat().st_mtime_ns == before


def test_a_changed_stage1_part_rebuilds_only_its_inputs(sample_run: dict[str, Any], tmp_path: Path) -> None:
    """A day's new file changes one stage-1 part: only that part's inputs are built again, the
    others are carried over, and the forecast is the one a rebuild of everything makes."""
    out = tmp_path / "out"
    for folder in ("stage1", "forecast", "forecast_inputs"):
        shutil.copytree(sample_run["out"] / folder, out / folder)
    manifest = json.loads((out / "stage1" / "_manifest.json").read_text())
    changed = sorted(manifest["parts"])[0]
    manifest["parts"][changed]["inputs"] += "-changed"  # as if its source files had changed
    manifest["fingerprint"] += "-changed"
    (out / "stage1" / "_manifest.json").write_text(json.dumps(manifest))
    result = stage.run(Forecast(get_settings(out=str(out))))
    parts = len(manifest["parts"])
    assert not result.reused
    assert (result.incremental.parts_built, result.incremental.parts_carried_over) == (1, parts - 1)
    assert table(out, "forecast.parquet").equals(table(sample_run["out"], "forecast.parquet").set_column(
        6, "model", table(out, "forecast.parquet").column("model")))  # fmt: skip
    for name in sorted(manifest["parts"]):
        assert (out / "forecast_inputs" / name).read_bytes() == (
            sample_run["out"] / "forecast_inputs" / name
        ).read_bytes()


# --- served -------------------------------------------------------------------------------------


def row(out: Path, symbol: str) -> dict[str, Any]:
    found = [r for r in table(out, "forecast.parquet").to_pylist() if r["symbol"] == symbol]
    assert found, symbol
    return {k: found[0][k] for k in ("symbol", "date", "volume", "low", "high", "as_of", "model")}


def test_get_forecast_answers_the_published_row(served: str, sample_run: dict[str, Any]) -> None:
    want = row(sample_run["out"], "AAPL")
    assert httpx.get(f"{served}/forecast", params={"symbol": "AAPL"}).json() == want
    assert httpx.get(f"{served}/forecast", params={"symbol": "aapl"}).json() == want


def test_post_forecast_answers_many_and_says_which_it_cannot(served: str, sample_run: dict[str, Any]) -> None:
    r = httpx.post(f"{served}/forecast", json={"symbols": ["AAPL", "DIA", "NOPE", "ACVF"]})
    assert r.status_code == 200
    body = r.json()
    assert body["forecasts"] == [row(sample_run["out"], "AAPL"), row(sample_run["out"], "DIA")]
    assert [m["symbol"] for m in body["not_found"]] == ["NOPE", "ACVF"]
    assert "unknown symbol NOPE" in body["not_found"][0]["error"]
    assert "too little history" in body["not_found"][1]["error"]


@pytest.mark.parametrize(
    ("symbol", "says"),
    [
        ("NOPE", "unknown symbol NOPE"),
        ("ACVF", "no forecast for ACVF: too little history: 23 sessions up to 2021-01-27, 60 needed"),
    ],
)
def test_a_symbol_without_a_forecast_is_a_404_that_says_why(served: str, symbol: str, says: str) -> None:
    r = httpx.get(f"{served}/forecast", params={"symbol": symbol})
    assert r.status_code == 404 and says in r.json()["error"], r.text


@pytest.mark.parametrize(
    "params", [{}, {"symbol": ""}, {"symbol": "A B"}, {"symbol": "X" * 21}, {"symbol": "../x"}]
)
def test_a_missing_or_malformed_symbol_is_a_422(served: str, params: dict[str, str]) -> None:
    r = httpx.get(f"{served}/forecast", params=params)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "symbol", r.text


@pytest.mark.parametrize(
    "body", [{}, {"symbols": []}, {"symbols": "AAPL"}, {"symbols": [1]}, {"symbol": ["AAPL"]}]
)
def test_a_malformed_batch_is_a_422(served: str, body: dict[str, Any]) -> None:
    r = httpx.post(f"{served}/forecast", json=body)
    assert r.status_code == 422 and r.json()["problems"], r.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(symbol=st.text(max_size=30))
def test_any_symbol_is_an_answer_or_a_clear_4xx(served: str, symbol: str) -> None:
    r = httpx.get(f"{served}/forecast", params={"symbol": symbol})
    assert r.status_code in (200, 404, 422), (r.status_code, r.text[:300])
    assert "error" in r.json() or r.json()["symbol"]


def test_model_says_which_forecast_answers_and_why(served: str, sample_run: dict[str, Any]) -> None:
    result = sample_run["result"].forecast
    info = httpx.get(f"{served}/model").json()["forecast"]
    assert info["answers"] == result.answers and info["why"] == result.why
    assert info["published_model"] == result.published_model and info["as_of"] == result.as_of
    assert info["walk_forward"] == json.loads(result.walk_forward.model.model_dump_json())


def test_a_new_forecast_is_served_without_a_restart(sample_run: dict[str, Any], tmp_path: Path) -> None:
    """`stockpipe serve` on a copy of the output; a forecast published there is answered within
    serve_follow_seconds."""
    out = tmp_path / "out"
    for folder in ("stage1", "model", "models", "forecast", "forecast_inputs"):
        shutil.copytree(sample_run["out"] / folder, out / folder)
    port, log = free_port(), tmp_path / "server.log"
    command = [sys.executable, "-m", "flows.cli", "serve", "--out", str(out), "--port", str(port)]
    env = {**os.environ, "STOCKPIPE_SERVE_FOLLOW_SECONDS": "1"}
    url, process = start_server(command, port, log, env=env)
    try:
        before = httpx.get(f"{url}/model").json()["forecast"]["version"]
        old = httpx.get(f"{url}/forecast", params={"symbol": "AAPL"}).json()
        newer = stage.run(Forecast(get_settings(out=str(out), forecast_rounds=30)))
        deadline = time.monotonic() + 30
        while (info := httpx.get(f"{url}/model").json()["forecast"])["version"] == before:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        assert info["answers"] == newer.answers
        # Each worker follows on its own clock: the one that answered /model has swapped, the next
        # request may reach one that has not yet (docs/serving.md). Every worker within the interval.
        expected = row(out, "AAPL")
        while (answer := httpx.get(f"{url}/forecast", params={"symbol": "AAPL"}).json()) != expected:
            assert answer == old, (answer, expected)  # the old table's answer, never another
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        stop(process)
    assert "now serving forecast" in log.read_text()


def test_the_forecast_command_runs_the_stage_alone(sample_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(sample_run["out"] / "stage1", out / "stage1")
    command = [sys.executable, "-m", "flows.cli", "forecast", "--out", str(out)]
    done = subprocess.run(
        command, env=session_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"forecast: {sample_run['result'].forecast.symbols} symbols for 2021-01-28" in done.stdout
    assert (out / "reports" / "forecast.png").stat().st_size > 10_000
    assert table(out, "forecast.parquet").equals(table(sample_run["out"], "forecast.parquet"))
