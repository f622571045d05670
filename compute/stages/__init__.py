"""The pipeline's stages, in order, each in a package of its own: the stage class (stage.py,
which follows the protocol in compute/stage.py), its typed result (results.py) and its work.

ingest/    every symbol file into stage1/ and quarantine/
features/  rolling features from stage1/ into stage2/
train/     XGBoost on Ray Train from stage2/ into model/
forecast/  the next session's volume per symbol, from stage1/ into forecast/

The last stage, package (the Bento), lives in bento/stage.py: compute never imports bento.
"""

from __future__ import annotations

from compute.stages.features.stage import Features
from compute.stages.forecast.stage import Forecast
from compute.stages.ingest.stage import Ingest
from compute.stages.train.stage import Train

__all__ = ["Features", "Forecast", "Ingest", "Train"]
