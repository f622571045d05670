"""All tunables in one place; every field can be set from the environment (STOCKPIPE_<NAME>)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SOURCE = PROJECT_ROOT / "data" / "sample"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKPIPE_")

    source: str = str(SAMPLE_SOURCE)
    out: Path = Path("output")
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


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
