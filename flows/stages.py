"""The pipeline's stages, in order: the one list of them, which the flows, the commands and the
line of a stopped run read."""

from __future__ import annotations

from typing import Any

from bento.stage import Package
from compute.stage import Stage
from compute.stages import Features, Forecast, Ingest, Train

STAGES: dict[str, type[Stage[Any, Any]]] = {s.name: s for s in (Ingest, Features, Forecast, Train, Package)}
