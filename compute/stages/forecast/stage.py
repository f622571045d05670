"""The forecast stage, after features (the product's fifth): each symbol's volume in the next
NYSE session, with its 10-90% range, from stage1/ into forecast_inputs/ (the per-part inputs,
market shares and histories, fanned out over Ray) and forecast/ (the table `serve` answers from,
the walk-forward, the model).

The forecaster is published only when it beats the best naive forecast on the walk-forward, in
both MAE and mean |log error|; otherwise the table holds that naive forecast, named as such, with a
range from its own walk-forward errors, and the result says why. Incremental: an inputs part is
carried over when its stage-1 part was built from the same inputs and the code is unchanged; the
walk-forward and the fit run again whenever anything did.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from compute import publish, storage
from compute.cluster import fan_out
from compute.errors import Refused
from compute.layout import (
    FORECAST_RESULT,
    FORECAST_TABLE,
    MODEL_FILE,
    NOT_FORECAST_TABLE,
    WALK_FORWARD_TABLE,
)
from compute.publish import Manifest, Part, Staging
from compute.stage import Artifact, Built, Plan, Stage, unchanged_parts
from compute.stages.forecast import gate, inputs
from compute.stages.forecast.market import combine
from compute.stages.forecast.results import ForecastIncremental, ForecastReport
from compute.stages.train import plots as train_plots
from compute.storage import write_json

# What the fingerprint holds besides stage 1 and the code.
SETTINGS = ("forecast_folds", "forecast_fold_sessions", "forecast_train_sessions", "forecast_rounds",
            "forecast_max_depth", "forecast_eta", "seed", "train_device")  # fmt: skip


@dataclass
class ForecastPlan(Plan):
    parts: list[str]  # stage-1 part files
    inputs: dict[str, str]  # part name -> what its inputs are built from
    carried: dict[str, Part]
    keep: int  # rows per symbol the inputs keep


def keep_rows(settings: Any) -> int:
    """The rows of each symbol the inputs keep: the training window and every fold, with room."""
    return settings.forecast_train_sessions + settings.forecast_folds * settings.forecast_fold_sessions + 10


class Forecast(Stage[ForecastPlan, ForecastReport]):
    name = "forecast"
    output_name, output_folder = "the forecast", "forecast"
    result_type = ForecastReport
    depends_on = "stage 1 and the code"
    result_file = FORECAST_RESULT

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.forecast, self.layout.forecast_inputs)

    def plan(self, previous: Manifest | None) -> ForecastPlan:
        stage1 = self.layout.stage1
        if not storage.is_dir(stage1):
            raise Refused(f"no stage 1 output in {self.layout.root}", then="run `stockpipe ingest` first")
        code, keep = self.code(), keep_rows(self.settings)
        built_from = publish.read_manifest(stage1)
        parts = publish.parquet_parts(stage1, built_from)
        stage1_parts = built_from.parts if built_from else {}
        part_inputs = {
            name: publish.digest(code, keep, stage1_parts[name].inputs)
            for name in map(storage.basename, parts)
            if name in stage1_parts
        }
        chosen = {name: getattr(self.settings, name) for name in SETTINGS}
        return ForecastPlan(
            fingerprint=publish.digest(
                publish.content_id(stage1, built_from), code, chosen, version("exchange-calendars")
            ),
            parts=parts,
            inputs=part_inputs,
            carried=unchanged_parts(previous, part_inputs),
            keep=keep,
        )

    def space_needed(self, plan: ForecastPlan) -> int:
        """The inputs keep the last rows of each symbol: at most a third of stage 1's size."""
        todo = [p for p in plan.parts if storage.basename(p) not in plan.carried]
        return int(0.4 * sum(os.path.getsize(p) for p in todo if storage.is_local(p))) + (16 << 20)

    def build(self, plan: ForecastPlan, staging: list[Staging]) -> Built[ForecastReport]:
        import ray

        from compute.stages.forecast import plots, tables
        from compute.stages.forecast.worker import forecast_alone
        from compute.stages.train import params
        from compute.stages.train.fit import run_alone

        table_dir, inputs_dir = staging
        settings = self.settings
        todo = [p for p in plan.parts if storage.basename(p) not in plan.carried]
        self.progress(
            f"forecast: inputs of {len(todo)} of {len(plan.parts)} stage-1 parts in {len(todo)} Ray tasks"
        )
        carried = list(plan.carried)
        inputs_dir.carry_over(
            [n for name in carried for n in (name, inputs.market_name(name), inputs.history_name(name))]
        )
        started = time.perf_counter()
        fanned = fan_out(
            inputs.inputs_part,
            [(p, inputs_dir.location, plan.keep) for p in todo],
            label="forecast",
            names=[f"forecast {storage.basename(p)}" for p in todo],
            progress=self.progress,
        )
        fanned_seconds = time.perf_counter() - started
        built = {
            storage.basename(p): Part(inputs=plan.inputs.get(storage.basename(p), ""), counts=counts)
            for p, counts in zip(todo, fanned.results, strict=True)
        }
        every = {**plan.carried, **built}
        names = sorted(every)
        # The reduce: every part's market share and symbol histories, combined once.
        shares = [storage.read_parquet(inputs_dir.join(inputs.market_name(n))) for n in names]
        histories = pa.concat_tables(
            [storage.read_parquet(inputs_dir.join(inputs.history_name(n))) for n in names]
        )
        market = combine(shares)
        if histories.num_rows == 0:
            raise Refused(
                "stage 1 has no rows to forecast from", then="run `stockpipe ingest` on a source with rows"
            )
        last_session = str(pc.max(histories.column("last")).as_py())
        not_forecast = tables.not_forecast(histories, last_session, inputs.LOOK_BACK)
        if len(not_forecast) == histories.num_rows:
            raise Refused(
                f"no symbol has the {inputs.LOOK_BACK} sessions of history a forecast needs up to "
                f"{last_session}", then="give it symbols with more history",
            )  # fmt: skip

        nodes = [params.Node.of(n) for n in ray.nodes() if n.get("Alive")]
        try:
            device = params.resolve_device(settings.train_device, sum(n.gpus for n in nodes))
        except ValueError as exc:
            raise Refused(str(exc), then="run again with other training settings") from None
        # The forecaster's rows (1.3M on the 2021 vintage, a few hundred MB) fit one node: one Ray
        # task holding the node with the most CPUs (and a GPU for CUDA), as the volume model's
        # single layout; Ray Train's workers would only add their start.
        node = max((n for n in nodes if n.gpus >= 1 or device != "cuda"), key=lambda n: (n.cpus, n.memory))
        resources = {"CPU": float(max(node.cpus, 1)), **({"GPU": 1.0} if device == "cuda" else {})}
        chosen = params.Layout("single", 1, resources, "its rows fit one node", node=node.id)
        from compute.stages.forecast import model

        config = {
            "parts": [inputs_dir.join(n) for n in names],
            "params": model.params(settings, device, chosen.threads),
            "rounds": settings.forecast_rounds,
            "folds": settings.forecast_folds,
            "fold_sessions": settings.forecast_fold_sessions,
            "train_sessions": settings.forecast_train_sessions,
            "last_session": last_session,
            "market_dates": market.column("Date").to_numpy().astype("datetime64[D]"),
            "market_relative": market.column("relative").to_numpy(),
        }
        self.progress(
            f"forecast: {chosen.describe(device)}: {settings.forecast_folds} walk-forward folds of "
            f"{settings.forecast_fold_sessions} sessions and the final fit, "
            f"{settings.forecast_rounds} rounds each"
        )
        self.progress.tasks("forecaster", 0, 1)
        # While the forecaster runs, the driver only waits: matplotlib's import and first figure
        # (about 0.5 s, for the plot) happen meanwhile.
        background = ThreadPoolExecutor(1, thread_name_prefix="forecast-driver")
        try:
            background.submit(train_plots.prepare)
            outcome = run_alone(forecast_alone, config, chosen, name="forecaster")
        finally:
            background.shutdown(wait=False, cancel_futures=True)
        self.progress.tasks("forecaster", 1, 1)

        walk = gate.walk_forward(outcome.folds)
        decision = gate.decide(walk, plan.fingerprint, last_session, outcome.folds)
        table = tables.forecast(outcome, decision)
        storage.write_parquet(table, table_dir.join(FORECAST_TABLE))
        storage.write_parquet(not_forecast, table_dir.join(NOT_FORECAST_TABLE))
        storage.write_parquet(tables.walk_forward(outcome.folds), table_dir.join(WALK_FORWARD_TABLE))
        storage.write_parquet(market, table_dir.join("market.parquet"))
        if decision.published_model:
            storage.write_bytes(outcome.final, table_dir.join(MODEL_FILE))
        reasons = not_forecast.column("reason").to_pylist()
        result = ForecastReport(
            as_of=last_session,
            date=str(table.column("date")[0].as_py()) if table.num_rows else "",
            answers=decision.answers,
            published_model=decision.published_model,
            why=decision.why,
            symbols=table.num_rows,
            not_forecast={kind: sum(r.startswith(kind) for r in reasons) for kind in tables.REASONS},
            walk_forward=walk,
            train_rows=outcome.final_train_rows,
            device=outcome.device,
            layout=chosen.describe(device),
            phases={"inputs": round(fanned_seconds, 3), **outcome.phases},
            peak_mib=outcome.peak_mib,
            incremental=ForecastIncremental(parts_carried_over=len(plan.carried), parts_built=len(built)),
            ray_nodes=fanned.nodes,
        )
        folds = outcome.folds
        return Built(result, every, reports={self.layout.forecast_plot: lambda: plots.last_fold(folds[-1])})

    def report(self, result: ForecastReport) -> None:
        write_json(result.to_json(), self.layout.forecast_report)

    def artifacts(self, result: ForecastReport) -> list[Artifact]:
        from compute.stages.forecast import tables

        table = storage.read_parquet(storage.join(publish.data_dir(self.layout.forecast), FORECAST_TABLE))
        return [
            Artifact("forecast-walk-forward", gate.headline(result), table=gate.table(result.walk_forward)),
            Artifact(
                "forecast-furthest-above-normal",
                f"next session {result.date}: furthest above their 30-session mean",
                markdown=tables.furthest_above_markdown(table, result),
            ),
        ]

    def describe(self, result: ForecastReport) -> list[str]:
        missing = ", ".join(f"{n} {why}" for why, n in result.not_forecast.items() if n)
        return [
            f"forecast: {result.symbols} symbols for {result.date} (as of {result.as_of})"
            + (f"; none for {missing}" if missing else ""),
            gate.headline(result),
            f"  forecast:   {self.layout.forecast}/ (forecast.parquet; walkforward.parquet: the "
            "walk-forward's forecasts and actuals)",
        ]
