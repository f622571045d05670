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
def stages() -> dict[str, type[Stage[Any, Any]]]:
    """The stage classes by name, in order."""
    found = {}
    for name, where in WHERE.items():
        module, cls = where.split(":")
        found[name] = getattr(import_module(module), cls)
    return found
