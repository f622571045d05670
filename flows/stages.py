"""The pipeline's stages, in order: the one list of them, which the flows, the commands and the
line of a stopped run read. Each is named with the class that runs it, imported on first use: the
command line lists the names (`--stop-after`, `--help`) without importing Ray, pyarrow and
XGBoost, which the classes bring (2 s)."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compute.stage import Stage

WHERE = {
    "ingest": "compute.stages.ingest.stage:Ingest",
    "features": "compute.stages.features.stage:Features",
    "forecast": "compute.stages.forecast.stage:Forecast",
    "train": "compute.stages.train.stage:Train",
    "package": "bento.stage:Package",
}
NAMES = tuple(WHERE)


@cache
def stage(name: str) -> type[Stage[Any, Any]]:
    """One stage's class (importing its module, and no other stage's)."""
    module, cls = WHERE[name].split(":")
    return getattr(import_module(module), cls)


def stages() -> dict[str, type[Stage[Any, Any]]]:
    """Every stage's class by name, in order."""
    return {name: stage(name) for name in NAMES}
