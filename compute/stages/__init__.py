"""The pipeline's stages, in order, each in a package of its own: the stage class (stage.py,
which follows the protocol in compute/stage.py), its typed result (results.py) and its work.

ingest/    every symbol file into stage1/ and quarantine/
features/  rolling features from stage1/ into stage2/
train/     XGBoost on Ray Train from stage2/ into model/
forecast/  the next session's volume per symbol, from stage1/ into forecast/

The last stage, package (the Bento), lives in bento/stage.py: compute never imports bento.

`from compute.stages import Ingest` imports that stage's module when asked (PEP 562), so that a
light module of a stage's package (ingest/sources.py, which the command line checks a source
with) does not bring every stage's Ray and XGBoost with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PACKAGES = {"Features": "features", "Forecast": "forecast", "Ingest": "ingest", "Train": "train"}
__all__ = ["Features", "Forecast", "Ingest", "Train"]


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return getattr(import_module(f"compute.stages.{_PACKAGES[name]}.stage"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
