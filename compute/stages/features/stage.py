"""Stage 2, features: per symbol, the 30-row rolling mean of Volume and median of Adj Close, from
stage1/ into stage2/; reports/features.json counts the rows.

Each Ray task maps one stage-1 part to the stage-2 part of the same name (rolling.py).
Incremental: a stage-2 part is carried over when its stage-1 part was built from the same inputs
and the code is unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from compute import publish, storage
from compute.cluster import fan_out
from compute.publish import Manifest, Part, Staging
from compute.stage import Built, Plan, Stage, unchanged_parts
from compute.stages.features.results import FeaturesIncremental, FeaturesReport
from compute.stages.features.rolling import features_part
from compute.storage import write_json


@dataclass
class FeaturesPlan(Plan):
    parts: list[str]  # stage-1 part files
    inputs: dict[str, str]  # part name -> what its stage-2 part is built from
    carried: dict[str, Part]


class Features(Stage[FeaturesPlan, FeaturesReport]):
    name = "features"
    output_name, output_folder = "stage 2", "stage2"
    result_type = FeaturesReport
    depends_on = "stage 1 and the code"

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.stage2,)

    def plan(self, previous: Manifest | None) -> FeaturesPlan:
        stage1 = self.layout.stage1
        if not storage.is_dir(stage1):
            raise FileNotFoundError(f"no stage 1 output in {self.layout.root}: run `stockpipe ingest` first")
        code = self.code()
        built_from = publish.read_manifest(stage1)  # about 1 MB on the vintage: read it once
        stage1_id = publish.content_id(stage1, built_from)
        parts = publish.parquet_parts(stage1, built_from)
        # A stage 1 this pipeline did not write has no part inputs: every part is then rebuilt.
        stage1_parts = built_from.parts if built_from else {}
        inputs = {
            name: publish.digest(code, stage1_parts[name].inputs)
            for name in map(storage.basename, parts)
            if name in stage1_parts
        }
        return FeaturesPlan(
            fingerprint=publish.digest(stage1_id, code),
            parts=parts,
            inputs=inputs,
            carried=unchanged_parts(previous, inputs),
        )

    def space_needed(self, plan: FeaturesPlan) -> int:
        """A stage-2 part is 1.33 times its stage-1 part (on the vintage and on the sample): 1.5
        times the stage-1 parts to roll; carried-over parts are hard links."""
        todo = [p for p in plan.parts if storage.basename(p) not in plan.carried]
        return int(1.5 * sum(os.path.getsize(p) for p in todo if storage.is_local(p)))

    def build(self, plan: FeaturesPlan, staging: list[Staging]) -> Built[FeaturesReport]:
        (stage2,) = staging
        todo = [p for p in plan.parts if storage.basename(p) not in plan.carried]
        self.progress(f"features: {len(todo)} of {len(plan.parts)} stage-1 parts in {len(todo)} Ray tasks")
        stage2.carry_over(list(plan.carried))
        fanned = fan_out(
            features_part,
            [(p, stage2.location) for p in todo],
            label="features",
            names=[f"features {storage.basename(p)}" for p in todo],
            progress=self.progress,
        )
        built = {
            storage.basename(p): Part(inputs=plan.inputs.get(storage.basename(p), ""), counts=counts)
            for p, counts in zip(todo, fanned.results, strict=True)
        }
        every = {**plan.carried, **built}

        def total(key: str) -> int:
            return sum(part.counts[key] for part in every.values())

        report = FeaturesReport(
            parts=len(plan.parts),
            rows=total("rows"),
            symbols=total("symbols"),
            rows_with_features=total("rows_with_features"),
            incremental=FeaturesIncremental(parts_carried_over=len(plan.carried), parts_built=len(built)),
            ray_nodes=fanned.nodes,
        )
        return Built(report, every)

    def report(self, result: FeaturesReport) -> None:
        write_json(result.to_json(), self.layout.features_report)

    def describe(self, result: FeaturesReport) -> list[str]:
        return [
            f"features: {result.rows:,} rows, {result.symbols} symbols, "
            f"{result.rows_with_features:,} with features",
            f"  stage 2:    {self.layout.stage2}/",
        ]
