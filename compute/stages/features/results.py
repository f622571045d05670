"""What features returns, typed: reports/features.json."""

from __future__ import annotations

from pydantic import BaseModel

from compute.stage import StageResult


class FeaturesIncremental(BaseModel):
    parts_carried_over: int
    parts_built: int


class FeaturesReport(StageResult):
    parts: int
    rows: int
    symbols: int
    rows_with_features: int
    incremental: FeaturesIncremental
    seconds: float = 0.0
    ray_nodes: dict[str, int]
