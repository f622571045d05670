"""All tunables in one place; every field can be set from the environment (STOCKPIPE_<NAME>).

Each field's description is its documentation: docs/configuration.md is this module's table
(`python -m compute.settings` prints it; tests/unit/test_settings.py keeps the two equal).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from compute.locations import normalize

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SOURCE = PROJECT_ROOT / "data" / "sample"
ENV_PREFIX = "STOCKPIPE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    # Input and output.
    source: str = Field(
        str(SAMPLE_SOURCE),
        description="Kaggle-layout folder or zip, kaggle:OWNER/DATASET, or an object-store URI "
        "(the embedded sample by default)",
    )
    out: str = Field(
        "output",
        description="where every stage writes: a local or shared-mount path, or a pyarrow "
        "filesystem URI such as s3://bucket/prefix",
    )
    download_dir: Path = Field(
        Path("data/downloads"), description="where `stockpipe download` and kaggle: sources keep the zip"
    )
    max_file_bytes: int = Field(
        64 * 1024 * 1024,
        description="a source file larger than this is refused unread (the largest real file is about 1 MB)",
    )

    # Runs.
    force: bool = Field(
        False, description="rebuild every stage even when its inputs, code and settings are unchanged"
    )
    wait: bool = Field(
        True,
        description="a second run on the same output waits for the first (true) or refuses at once (false)",
    )

    prefect_api_wait_seconds: float = Field(
        60.0,
        gt=0,
        description="how long a `stockpipe` command waits for a Prefect server that stopped "
        "answering before it stops, with exit status 75",
    )

    timeline: Path | None = Field(
        None,
        description="a file where each command appends the time each of its phases ended (start-up, "
        "first task, shutdown) as JSON lines, for bench/etl.py (compute/timeline.py)",
    )

    store_attempts: int = Field(
        10,
        ge=1,
        description="attempts at each object-store request, with the AWS SDK's backoff between them "
        "(25 ms, doubling: about 13 s for 10) on throttling and dropped connections",
    )

    home: Path = Field(
        Path("~/.stockpipe"),
        validate_default=True,
        description="where `stockpipe up` keeps the state and logs of the Prefect server and Ray "
        "cluster it starts for later commands",
    )

    # Ray.
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("STOCKPIPE_RAY_ADDRESS", "RAY_ADDRESS"),
        description="an existing Ray cluster to run on; unset starts a local one",
    )
    dashboard_host: str = Field("127.0.0.1", description="where a local Ray's dashboard listens")
    dashboard_port: int = Field(8265, description="its port (another free one when this is taken)")
    batch_bytes: int = Field(
        6_000_000,
        description="CSV bytes one ingest task reads: enough to amortise a task's overhead, few "
        "enough files that a worker holds little at once",
    )

    # Training (compute/stages/train/; docs/model.md says why these values).
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="the latest rows, by date, held out")
    train_rounds: int = Field(40, ge=1, description="boosting rounds")
    train_max_depth: int = Field(6, ge=1, description="XGBoost's max_depth")
    train_eta: float = Field(0.3, gt=0, description="XGBoost's learning rate")
    train_huber_slope: float = Field(0.4, gt=0, description="the pseudo-Huber loss's slope")
    train_device: str = Field(
        "auto", description="auto (CUDA when the Ray cluster has a GPU, else CPU), cpu or cuda"
    )
    train_layout: str = Field(
        "auto",
        description="auto (one Ray task holding a whole node where one GPU or one node suffices; "
        "Ray Train's workers where there are several GPUs or nodes, or more data than a node "
        "holds), single or distributed",
    )
    train_workers: int | None = Field(
        None,
        description="Ray Train workers when distributed; unset: one per GPU, else one per CPU (at most 8)",
    )
    train_compare_random_split: bool = Field(
        False,
        description="also fit a model on a random 80/20 split, for the report's comparison "
        "(doubles the boosting)",
    )
    train_backtest_folds: int = Field(
        0,
        ge=0,
        description="walk-forward folds over the latest years, each trained on every row before "
        "its year (each costs about one more fit; the daily deployment asks for 4)",
    )
    seed: int = Field(42, description="seeds XGBoost and the random split")

    # The next-session forecast (compute/stages/forecast/; docs/forecast.md says why these values).
    forecast_folds: int = Field(
        4,
        ge=1,
        description="walk-forward folds, each a block of sessions after a cutoff, tested on "
        "forecasts from a model trained only on what came before it",
    )
    forecast_fold_sessions: int = Field(10, ge=1, description="sessions in each fold's block")
    forecast_train_sessions: int = Field(
        250,
        ge=5,
        description="the training window: rows whose next session is among the last this many "
        "sessions up to the cutoff (about a year; 120 cost 0.4 points of mean |log error|)",
    )
    forecast_rounds: int = Field(60, ge=1, description="the forecaster's boosting rounds")
    forecast_max_depth: int = Field(8, ge=1, description="its XGBoost max_depth")
    forecast_eta: float = Field(0.15, gt=0, description="its learning rate")

    # The model registry and its gate (compute/registry.py, compute/stages/train/gate.py).
    gate_tolerance_pct: float = Field(
        0.0,
        ge=0,
        description="a new model replaces the champion when its holdout MAE is not worse than the "
        "champion's by more than this (and it beats the baseline)",
    )
    registry_keep: int = Field(
        10, ge=1, description="model versions kept in <out>/models/, besides every former champion"
    )

    # Serving.
    serve_host: str = Field("127.0.0.1", description="where `stockpipe serve` listens")
    serve_port: int = Field(3000, description="its port")
    serve_access_log: bool = Field(
        False, description="BentoML's access log, a line per request (its cost: docs/performance.md)"
    )
    serve_tracing: bool = Field(
        False,
        description="BentoML's OpenTelemetry spans for every request, for a trace exporter configured "
        "in BentoML's configuration (they cost about a quarter of GET /predict's throughput: "
        "docs/performance.md)",
    )
    serve_follow: str | None = Field(
        None,
        description="an output whose champion the service follows, swapping models in place when "
        "it changes (`stockpipe serve` sets it to its --out)",
    )
    serve_follow_seconds: float = Field(
        10.0, gt=0, le=30, description="how often a following service checks the champion"
    )

    @field_validator("out", mode="before")
    @classmethod
    def _location(cls, out: str | Path) -> str:
        return normalize(out)  # Ray workers do not share the driver's working directory

    @field_validator("download_dir", "home")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def environment_variables(name: str) -> list[str]:
    """The environment variables that set a field, as pydantic-settings reads them."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"{ENV_PREFIX}{name.upper()}"]


def set_in_environment() -> dict[str, str]:
    """The settings' own variables (STOCKPIPE_*) that this process's environment sets."""
    names = {v for field in Settings.model_fields for v in environment_variables(field)}
    return {k: v for k, v in os.environ.items() if k.upper() in names and k.upper().startswith(ENV_PREFIX)}


def shown(value: Any) -> str:
    """A default as the docs show it: a path in the project relative to it, `unset` for None."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path | str) and Path(str(value)).is_absolute():
        path = Path(str(value))
        return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)
    return str(value)


def markdown_table() -> str:
    """docs/configuration.md's table of every setting."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        variables = ", ".join(f"`{v}`" for v in environment_variables(name))
        lines.append(f"| `{name}` | {variables} | `{shown(field.default)}` | {field.description} |")
    return "\n".join(lines) + "\n"


def write_table(page: Path) -> None:
    """Replace the settings table in a markdown page (docs/configuration.md) with the current one."""
    lines = page.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    page.write_text("".join(lines[:start]) + markdown_table() + "".join(lines[end:]))


if __name__ == "__main__":  # `python -m compute.settings [PAGE]`: print the table, or update PAGE's
    import sys

    if len(sys.argv) > 1:
        write_table(Path(sys.argv[1]))
    else:
        print(markdown_table(), end="")
