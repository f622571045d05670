"""All tunables in one place; every field can be set from the environment (STOCKPIPE_<NAME>)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from compute.storage import normalize

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SOURCE = PROJECT_ROOT / "data" / "sample"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKPIPE_")

    source: str = str(SAMPLE_SOURCE)
    # A local or shared-mount path, or a pyarrow filesystem URI such as s3://bucket/prefix.
    out: str = "output"
    # An existing Ray cluster; unset starts a local one. Ray's own RAY_ADDRESS is honoured too.
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("STOCKPIPE_RAY_ADDRESS", "RAY_ADDRESS")
    )
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    # CSV bytes handled by one Ray task: big enough to amortise task overhead, small enough
    # that a worker holds only a few files' worth of rows at once.
    batch_bytes: int = 6_000_000
    # A source file larger than this is rejected unread (the largest real file is ~1 MB).
    max_file_bytes: int = 64 * 1024 * 1024
    # Rebuild every stage even when its inputs, code and settings are unchanged since the last run.
    force: bool = False
    # A second run on the same output waits for the first (True) or refuses at once (False).
    wait: bool = True

    # Where `stockpipe download` and kaggle: sources keep the dataset zip.
    download_dir: Path = Path("data/downloads")

    # Training (compute/stages/train/; docs/model.md says why these values).
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)  # the latest rows, by date, held out
    train_rounds: int = Field(default=40, ge=1)
    train_max_depth: int = Field(default=6, ge=1)
    train_eta: float = Field(default=0.3, gt=0)
    train_huber_slope: float = Field(default=0.4, gt=0)
    train_device: str = "auto"  # auto (CUDA if the Ray cluster has a GPU), cpu or cuda
    train_workers: int | None = None  # default: one per GPU, else one per CPU (at most 8)
    # Also fit a second model on a random 80/20 split, for the report's comparison (it doubles the
    # boosting time; off unless asked for).
    train_compare_random_split: bool = False
    seed: int = 42

    # Serving.
    serve_host: str = "127.0.0.1"
    serve_port: int = 3000
    # BentoML's access log, a line per request; what it costs is in docs/performance.md.
    serve_access_log: bool = False

    @field_validator("out", mode="before")
    @classmethod
    def _location(cls, out: str | Path) -> str:
        return normalize(out)  # Ray workers do not share the driver's working directory

    @field_validator("download_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
