"""Drift between runs, for real: the embedded sample with some symbols removed and every volume
scaled, run against the champion trained on the sample, is reported as a significant shift, in
reports/drift.json, the command's warning line, the model card and the Prefect artifact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from compute import model as contract
from compute import registry
from compute.layout import Layout
from tests.conftest import SAMPLE

GONE = ["stocks/AAPL.csv", "stocks/ACC.csv", "etfs/ARKQ.csv", "etfs/DIA.csv"]  # each has rows with features


def shifted_sample(root: Path, factor: int) -> Path:
    """The sample without GONE's files, every Volume multiplied by `factor`."""
    shutil.copytree(SAMPLE, root)
    for member in GONE:
        (root / member).unlink()
    for path in [*root.glob("stocks/*.csv"), *root.glob("etfs/*.csv")]:
        lines = path.read_text().splitlines()
        scaled = [lines[0]]
        for line in lines[1:]:
            cells = line.split(",")
            if len(cells) == 7 and cells[6]:
                cells[6] = str(int(float(cells[6])) * factor)
            scaled.append(",".join(cells))
        path.write_text("\n".join(scaled) + "\n")
    return root


def test_a_shifted_vintage_is_reported_as_significant_drift(
    ray_session: str | None, prefect_harness: None, sample_run: dict[str, Any], tmp_path: Path
) -> None:
    import ray
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    for folder in ("model", "models"):  # the champion trained on the sample, with its bins
        shutil.copytree(sample_run["out"] / folder, out / folder)
    champion = registry.champion(Layout(str(out)))
    assert champion is not None
    source = shifted_sample(tmp_path / "shifted", factor=20)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [sys.executable, "-m", "flows.cli", "run", "--stop-after", "train", "--source", str(source),
               "--out", str(out), "--ray-address", ray.get_runtime_context().gcs_address]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    report = json.loads((out / "reports" / "drift.json").read_text())
    assert report["reference"] == champion.version
    by_column = {c["column"]: c for c in report["columns"]}
    for column in ("Volume", "vol_moving_avg"):  # every volume twenty times as large
        assert by_column[column]["level"] == "significant" and by_column[column]["psi"] >= 0.2, by_column[
            column
        ]
        assert by_column[column]["outside_range_share"] > 0
    assert by_column["adj_close_rolling_med"]["psi"] < 0.2  # prices did not change, four symbols went
    assert report["symbols_gone"] == sorted(Path(m).stem for m in GONE) and report["symbols_new"] == []
    warning = next(line for line in result.stdout.splitlines() if "warning: drift:" in line)
    assert (
        "Volume PSI" in warning
        and "(significant)" in warning
        and f"stock-volume:{champion.version}" in warning
    )
    assert "4 gone" in warning

    new = registry.versions(Layout(str(out)))[-1]
    _, card = contract.read_published(str(out / "models" / new))
    assert card.drift_reference == champion.version and card.drift_psi == {
        c: by_column[c]["psi"] for c in ("vol_moving_avg", "adj_close_rolling_med", "Volume")
    }
    assert card.feature_bins and card.symbols and len(card.symbols) == len(champion_symbols(sample_run)) - 4
    assert (out / "reports" / "drift.png").read_bytes()[:4] == b"\x89PNG"

    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest() -> Any:
        async with get_client() as client:
            return (
                await client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-drift"])),
                    sort="CREATED_DESC",
                )
            )[0]

    artifact = asyncio.run(latest())
    assert (
        "| Volume |" in artifact.data
        and "significant" in artifact.data
        and "data:image/png;base64," in artifact.data
    )


def champion_symbols(sample_run: dict[str, Any]) -> list[str]:
    _, card = contract.read_published(str(sample_run["out"] / "model"))
    return card.symbols or []
