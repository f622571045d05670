"""Stage 3, train: XGBoost predicting Volume from the two features, trained across Ray Train
workers (fit.py, worker.py), evaluated on a time holdout against the naive baseline
`Volume = vol_moving_avg` and against the champion on the same rows, and published as a new model
version, models/<version>/ (model.bin, model.json, metrics.json), like any other output folder.
After the publish, the gate's decision (gate.py) is applied: the version becomes the champion,
model/, or the champion stays; either way the history says so (compute/registry.py).
logs/training.log (every round's loss) and the plots in reports/ are written after the publish.

Ray Train's scratch space (each worker's results) is a `_work` folder inside the model's staging
folder, so that it is shared storage whenever the output is and goes away with the staging folder.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ray

from compute import publish, registry, storage
from compute.errors import Refused
from compute.layout import METRICS_FILE, Layout
from compute.publish import Manifest, Staging
from compute.schema import FEATURE_COLUMNS
from compute.settings import Settings
from compute.stage import Artifact, Built, Plan, Stage
from compute.stages.train import gate, params
from compute.stages.train.gate import Champion
from compute.stages.train.report import drift_line, drift_markdown, gate_line, gate_table, training_markdown
from compute.stages.train.results import Engine, TrainMetrics

# XGBoost, Ray Train and matplotlib are imported only when a model is trained: an ETL run or an
# unchanged re-run never pays for them.
WORK = "_work"
TRAINING_SETTINGS = {
    "holdout_fraction", "train_rounds", "train_max_depth", "train_eta", "train_huber_slope",
    "train_workers", "train_compare_random_split", "seed", "train_device", "train_backtest_folds",
    "train_layout",
}  # fmt: skip


@dataclass
class TrainPlan(Plan):
    parts: list[str]  # stage-2 part files
    rows_with_features: int | None  # as stage 2's manifest counts them (None: no manifest)
    stage2: str  # stage 2's fingerprint, and the code's, for the model card
    code: str


class Train(Stage[TrainPlan, TrainMetrics]):
    name = "train"
    # What a person relies on after training: the champion (a new version counts once promoted).
    output_name, output_folder = "the champion model", "model"
    result_type = TrainMetrics
    depends_on = "stage 2, the code and the training settings"
    result_file = METRICS_FILE

    def __init__(self, settings: Settings, progress: object = None) -> None:
        super().__init__(settings, progress)  # type: ignore[arg-type]
        self.version = registry.new_version()  # the name this run's model gets, if it trains one

    @classmethod
    def after_stop(cls, layout: Layout) -> str:
        """A stopped training published no version; the champion is what it was."""
        if cls.is_published(layout):
            return "no new model version is published, the champion model is unchanged"
        return "no model version is published and there is no champion model yet"

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.version(self.version),)

    def previous(self) -> Manifest | None:
        """The newest version's: a re-run with the same stage 2, code and settings reuses it."""
        return registry.latest_manifest(self.layout)

    def plan(self, previous: Manifest | None) -> TrainPlan:
        try:
            registry.check(self.layout)  # before any work: a damaged record is never written over
        except registry.RegistryDamaged as exc:
            raise Refused(str(exc), then=f"nothing was trained; {exc.then}") from None
        stage2 = publish.read_manifest(self.layout.stage2)
        parts = publish.parquet_parts(self.layout.stage2, stage2)
        if not parts:
            raise Refused(f"no stage 2 output in {self.layout.root}", then="run `stockpipe features` first")
        # The requested device, not the one used: "auto" reuses a model whichever device built it.
        training = self.settings.model_dump(include=TRAINING_SETTINGS)
        code = self.code()
        fingerprint = publish.digest(publish.content_id(self.layout.stage2, stage2), code, training)
        counts = [part.counts for part in stage2.parts.values()] if stage2 else None
        with_features = sum(c.get("rows_with_features", 0) for c in counts) if counts is not None else None
        return TrainPlan(
            fingerprint=fingerprint,
            parts=parts,
            rows_with_features=with_features,
            stage2=str(publish.content_id(self.layout.stage2, stage2)),
            code=code,
        )

    def space_needed(self, plan: TrainPlan) -> int:
        """A version is about 150 KB, its scratch space and plots a few MB: 64 MiB leaves room."""
        return 64 << 20

    def build(self, plan: TrainPlan, staging: list[Staging]) -> Built[TrainMetrics]:
        from compute import model as contract
        from compute.stages.train import plots, summary
        from compute.stages.train.fit import fit

        (model_dir,) = staging
        settings, layout = self.settings, self.layout
        if plan.rows_with_features == 0:  # else the workers would find out, less clearly
            raise Refused("stage 2 has no row with both features (every symbol has fewer than 30 rows)",
                          then="give it symbols with 30 rows or more")  # fmt: skip
        nodes = [params.Node.of(n) for n in ray.nodes() if n.get("Alive")]
        try:
            device = params.resolve_device(settings.train_device, sum(n.gpus for n in nodes))
            chosen = params.choose_layout(device, nodes, settings, len(plan.parts), plan.rows_with_features)
        except ValueError as exc:
            raise Refused(str(exc), then="run again with other training settings") from None
        xgb_params = params.xgb_params(settings, device, chosen.threads)
        self.progress(f"train: {chosen.describe(device)}, {settings.train_rounds} rounds")
        champion = self._champion()
        bins = champion.card.feature_bins if champion and champion.card else None
        reference = {c: b.model_dump() for c, b in bins.items()} if bins else None
        # The fit is one blocking call: its progress is its workers, none done, then all.
        self.progress.tasks("train", 0, chosen.workers)
        work = model_dir.join(WORK)
        scorable = champion.scorable if champion else None
        # While the workers train, the driver, which only waits, hashes stage 2 for the model card
        # and imports matplotlib for the plots (about 0.6 s on the 2021 vintage).
        background = ThreadPoolExecutor(1, thread_name_prefix="train-driver")
        try:
            hashed = background.submit(summary.data_hash, plan.parts)
            background.submit(plots.prepare)
            fitted = fit(plan.parts, settings, xgb_params, chosen, work, scorable, reference)
            data_hash = hashed.result()
        finally:
            background.shutdown(wait=False, cancel_futures=True)
        self.progress.tasks("train", chosen.workers, chosen.workers)
        storage.remove_dir(work)

        first = fitted.workers[0]
        used = first.time.device or None
        if device == "cuda" and used and not used.startswith("cuda"):
            self.progress(f"train: XGBoost fell back from CUDA to {used} (it found no usable GPU)")
        if device == "cuda" and first.data_on != "gpu":
            self.progress("train: CuPy is not installed where the workers run, so XGBoost sketched the "
                          "data on the CPU (the gpu extra installs it)")  # fmt: skip
        engine = Engine(
            trainer="ray task" if chosen.kind == "single" else "ray.train.xgboost.XGBoostTrainer",
            layout=chosen.kind,
            why=chosen.why,
            workers=chosen.workers,
            resources_per_worker=chosen.resources,
            device=device,
            xgboost_device=used,
            data_on=first.data_on,
        )
        result = summary.summarise(
            fitted,
            version=self.version,
            champion=champion,
            engine=engine,
            params=xgb_params,
            settings=settings,
            fingerprint=plan.fingerprint,
        )
        card = summary.model_card(result, fitted, data_hash, plan.stage2, plan.code)
        contract.write(model_dir.location, fitted.model, card)
        history = summary.history(fitted)
        reports = {
            layout.training_log: lambda: summary.training_log(history).encode(),
            layout.learning_curve: lambda: plots.learning_curve(history),
            layout.predicted_vs_actual: lambda: plots.predicted_vs_actual(fitted.sample),
        }
        if result.backtest:
            reports[layout.backtest_plot] = lambda: plots.backtest(result.backtest or [])
        reports[layout.drift_report] = lambda: (result.drift.model_dump_json(indent=2) + "\n").encode()
        if result.drift.columns:
            reports[layout.drift_plot] = lambda: plots.drift(result.drift)
        return Built(result, reports=reports)

    def _champion(self) -> Champion | None:
        """The champion, and its files for the workers to score when they can: one whose files are
        damaged or whose card asks for other features is not scored, and the gate then keeps it."""
        from compute import model as contract

        current = registry.champion(self.layout)
        if current is None:
            return None
        try:
            model, card = contract.read_published(self.layout.model)
        except contract.ModelNotWhole as exc:
            return Champion(current.version, None, None, f"its files are damaged: {exc}")
        if card.features != list(FEATURE_COLUMNS) or card.target_transform != contract.TARGET_TRANSFORM:
            why = f"it takes {card.features} with the target transform {card.target_transform}"
            return Champion(current.version, card, None, why)
        return Champion(current.version, card, (model, card.model_dump(mode="json")))

    def report(self, result: TrainMetrics) -> None:
        """After the publish: the gate's decision applied (gate.py), old versions pruned."""
        gate.apply(self.layout, result.version, result.gate)
        registry.prune(self.layout, self.settings.registry_keep)
        self.progress(gate_line(result))
        self.progress(drift_line(result).strip())

    def artifacts(self, result: TrainMetrics) -> list[Artifact]:
        plots = {
            "Learning curve": storage.read_bytes(self.layout.learning_curve),
            "Predicted vs actual volume": storage.read_bytes(self.layout.predicted_vs_actual),
        }
        if result.backtest:
            plots["Backtest: MAE per walk-forward fold"] = storage.read_bytes(self.layout.backtest_plot)
        drift_plot = storage.read_bytes(self.layout.drift_plot) if result.drift.columns else None
        return [
            Artifact("training-metrics", "Model vs baseline", markdown=training_markdown(result, plots)),
            Artifact("training-gate", gate_line(result), table=gate_table(result)),
            Artifact(
                "training-drift", drift_line(result).strip(), markdown=drift_markdown(result, drift_plot)
            ),
        ]

    def describe(self, result: TrainMetrics) -> list[str]:
        split_, model, base = result.time_split, result.time_split.model, result.time_split.baseline
        return [
            f"train: time holdout from {split_.cutoff}: MAE {model.mae:,.0f} vs baseline "
            f"{base.mae:,.0f} ({split_.mae_improvement_pct:+.1f}%), R² {model.r2:.3f} vs {base.r2:.3f}",
            gate_line(result),
            drift_line(result),
            f"  version:    {self.layout.version(result.version)}/ (model.bin, model.json, metrics.json)",
            f"  champion:   {self.layout.model}/ (what serve and package read; `stockpipe models` lists all)",
            *(
                [
                    "  backtest:   "
                    + ", ".join(f"{f.year} {f.mae_improvement_pct or 0:+.1f}%" for f in result.backtest)
                    + " (MAE against the baseline's, by test year)"
                ]
                if result.backtest
                else []
            ),
            f"  log:        {self.layout.training_log}",
            f"  plots:      {self.layout.reports}/{storage.basename(self.layout.learning_curve)}, "
            f"{storage.basename(self.layout.predicted_vs_actual)}",
        ]
