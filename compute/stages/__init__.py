"""The pipeline's stages, in order; each follows the protocol in compute/stage.py."""

from __future__ import annotations

from compute.stages.features import Features
from compute.stages.ingest import Ingest
from compute.stages.package import Package
from compute.stages.train import Train

STAGES = {stage.name: stage for stage in (Ingest, Features, Train, Package)}

__all__ = ["STAGES", "Features", "Ingest", "Package", "Train"]
