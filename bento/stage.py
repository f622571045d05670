"""Stage 4, package: the champion (model/) into the BentoML model store, and the Bento that serves
it (bento/package.py); with no champion yet, nothing. Its output is BentoML's own store, which
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
    omit_when_default = ("skipped",)

    model: str | None = None  # the model's tag in the model store
    bento: str | None = None  # the Bento's tag
    skipped: str | None = None  # why nothing was packaged (no champion yet)


@dataclass
class PackagePlan(Plan):
    model: str | None  # the champion's tag in the model store; None: there is no champion


class Package(Stage[PackagePlan, PackageResult]):
    name = "package"
    output_name = "the Bento"  # in BentoML's store, not a folder of the output
    result_type = PackageResult
    depends_on = "the model and the service files"
    uses_ray = False

    def plan(self, previous: Manifest | None) -> PackagePlan:
        from bento import package

        if not publish.is_published(self.layout.model):
            return PackagePlan(fingerprint="", model=None)
        model = package.model_tag(self.layout.model)
        return PackagePlan(fingerprint=package.bento_tag(model), model=model)

    def reuse(self, plan: PackagePlan, previous: Manifest | None) -> PackageResult | None:
        from bento import package

        if plan.model and package.find_model(plan.model) and package.find_bento(plan.fingerprint):
            return PackageResult(model=plan.model, bento=plan.fingerprint)
        return None

    def build(self, plan: PackagePlan, staging: list[Staging]) -> Built[PackageResult]:
        from bento import package

        if plan.model is None:  # the gate promoted nothing yet: nothing is served, nothing packaged
            return Built(PackageResult(skipped=f"no champion in {self.layout.model}"))
        model = package.register_model(self.layout.model)
        return Built(PackageResult(model=model, bento=package.build_bento(model)))

    def describe(self, result: PackageResult) -> list[str]:
        if result.skipped:
            return [
                f"package: skipped: {result.skipped} (`stockpipe models` lists the versions, "
                "`stockpipe promote VERSION` makes one the champion)"
            ]
        return [
            f"package: model {result.model} in the BentoML model store, Bento {result.bento}",
            f"  serve this run's model: {sys.argv[0]} serve --out {self.layout.root}",
            f"  serve the built Bento:  {Path(sys.argv[0]).parent / 'bentoml'} serve {result.bento}",
        ]
