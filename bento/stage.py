"""Stage 4, package: the champion (model/) and the forecast (forecast/, when there is one) into the
BentoML model store, and the Bento that serves them (bento/package.py); with no champion yet,
nothing. Its output is BentoML's own store, which
publishes atomically and is content-addressed, so the fingerprint is the Bento's tag: an unchanged
model and service reuse it.

It follows compute's stage protocol from here, so that compute never imports bento: bento/
depends on compute, never the other way round. BentoML itself (bento/package.py) is imported by
the methods that use it, so that flows/ can import this module while an ETL run never loads it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from compute import publish
from compute.publish import Manifest, Staging
from compute.stage import Built, Plan, Stage, StageResult


class PackageResult(StageResult):
    omit_when_default = ("skipped", "forecast")

    model: str | None = None  # the model's tag in the model store
    forecast: str | None = None  # the forecast table's tag there, when there is a forecast
    bento: str | None = None  # the Bento's tag
    skipped: str | None = None  # why nothing was packaged (no champion yet)


@dataclass
class PackagePlan(Plan):
    model: str | None  # the champion's tag in the model store; None: there is no champion
    forecast: str | None  # the forecast's tag there; None: no forecast is published


class Package(Stage[PackagePlan, PackageResult]):
    name = "package"
    output_name = "the Bento"  # in BentoML's store, not a folder of the output
    result_type = PackageResult
    depends_on = "the model, the forecast and the service files"
    uses_ray = False

    def plan(self, previous: Manifest | None) -> PackagePlan:
        from bento import package

        if not publish.is_published(self.layout.model):
            return PackagePlan(fingerprint="", model=None, forecast=None)
        model, forecast = package.model_tag(self.layout.model), package.forecast_tag(self.layout.root)
        return PackagePlan(fingerprint=package.bento_tag(model, forecast), model=model, forecast=forecast)

    def reuse(self, plan: PackagePlan, previous: Manifest | None) -> PackageResult | None:
        from bento import package

        stored = plan.model and package.find_model(plan.model)
        stored = stored and (plan.forecast is None or package.find_model(plan.forecast))
        if stored and package.find_bento(plan.fingerprint):
            return PackageResult(model=plan.model, forecast=plan.forecast, bento=plan.fingerprint)
        return None

    def build(self, plan: PackagePlan, staging: list[Staging]) -> Built[PackageResult]:
        from bento import package

        if plan.model is None:  # the gate promoted nothing yet: nothing is served, nothing packaged
            return Built(PackageResult(skipped=f"no champion in {self.layout.model}"))
        model = package.register_model(self.layout.model)
        forecast = package.register_forecast(self.layout.root)
        return Built(
            PackageResult(model=model, forecast=forecast, bento=package.build_bento(model, forecast))
        )

    def describe(self, result: PackageResult) -> list[str]:
        if result.skipped:
            return [
                f"package: skipped: {result.skipped} (`stockpipe models` lists the versions, "
                "`stockpipe promote VERSION` makes one the champion)"
            ]
        return [
            f"package: model {result.model}"
            + (f" and forecast {result.forecast}" if result.forecast else "")
            + f" in the BentoML model store, Bento {result.bento}",
            f"  serve this run's model: {sys.argv[0]} serve --out {self.layout.root}",
            f"  serve the built Bento:  {Path(sys.argv[0]).parent / 'bentoml'} serve {result.bento}",
        ]
