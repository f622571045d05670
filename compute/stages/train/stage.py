"""Stage 3, train: XGBoost predicting Volume from the two features, trained across Ray Train
workers (fit.py, worker.py), evaluated on a time holdout against the naive baseline
`Volume = vol_moving_avg`, and published as model/ (model.bin, model.json, metrics.json) like any
other output folder: a reader sees the previous model or the new one, never a mix.
logs/training.log (every round's loss) and the plots in reports/ are written after the publish.

Ray Train's scratch space (each worker's results) is a `_work` folder inside the model's staging
folder, so that it is shared storage whenever the output is and goes away with the staging folder.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from compute import publish, storage
from compute.layout import METRICS_FILE, MODEL_FILE
from compute.publish import Manifest, Staging
from compute.stage import Artifact, Built, Plan, Stage
from compute.stages.train import params
from compute.stages.train.report import training_markdown
from compute.stages.train.results import Engine, Timing, TrainMetrics

# What shapes the model. XGBoost, Ray Train and matplotlib are imported only when a model is
# trained: an ETL run or an unchanged re-run never pays for them.
CODE = (
    __name__, "compute.stages.train.params", "compute.stages.train.split", "compute.stages.train.summary",
    "compute.stages.train.worker", "compute.model", "compute.metrics",
)  # fmt: skip

WORK = "_work"
TRAINING_SETTINGS = {
    "holdout_fraction", "train_rounds", "train_max_depth", "train_eta", "train_huber_slope",
    "train_workers", "train_compare_random_split", "seed", "train_device",
}  # fmt: skip


@dataclass
class TrainPlan(Plan):
    parts: list[str]  # stage-2 part files
    rows_with_features: int | None  # as stage 2's manifest counts them (None: no manifest)


class Train(Stage[TrainPlan, TrainMetrics]):
    name = "train"
    result_type = TrainMetrics
    depends_on = "stage 2, the code and the training settings"
    result_file = METRICS_FILE

    def outputs(self) -> tuple[str, ...]:
        return (self.layout.model,)

    def plan(self, previous: Manifest | None) -> TrainPlan:
        stage2 = publish.read_manifest(self.layout.stage2)
        parts = publish.parquet_parts(self.layout.stage2, stage2)
        if not parts:
            raise FileNotFoundError(
                f"no stage 2 output in {self.layout.root}: run `stockpipe features` first"
            )
        # The requested device, not the one used: "auto" reuses a model whichever device built it.
        training = self.settings.model_dump(include=TRAINING_SETTINGS)
        code = publish.code_digest(*CODE)
        fingerprint = publish.digest(publish.content_id(self.layout.stage2, stage2), code, training)
        counts = [part.counts for part in stage2.parts.values()] if stage2 else None
        with_features = sum(c.get("rows_with_features", 0) for c in counts) if counts is not None else None
        return TrainPlan(fingerprint=fingerprint, parts=parts, rows_with_features=with_features)

    def build(self, plan: TrainPlan, staging: list[Staging]) -> Built[TrainMetrics]:
        from ray.train import RunConfig, ScalingConfig  # about 2 s to import
        from ray.train.xgboost import XGBoostTrainer

        # Ray Train's own settings (read from the driver's environment, passed on to its
        # controller): poll the workers every 0.25 s instead of 2 s, so that a short fit is not
        # seen finished seconds late; no preemption watcher (one actor less to start), since a
        # lost worker fails the stage and Prefect retries it (compute/errors.py).
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

        from compute import model as contract
        from compute.stages.train import summary, worker

        (model_dir,) = staging
        settings = self.settings
        resources = ray.cluster_resources()
        device = params.resolve_device(settings.train_device, resources.get("GPU", 0))
        if plan.rows_with_features == 0:  # else the workers would find out, less clearly
            raise ValueError("stage 2 has no row with both features (every symbol has fewer than 30 rows)")
        workers, per_worker = params.worker_layout(device, resources, settings, len(plan.parts))
        xgb_params = params.xgb_params(settings, device, int(per_worker["CPU"]))
        self.progress(f"train: {workers} Ray Train workers on {device}, {settings.train_rounds} rounds")

        work = model_dir.join(WORK)
        storage.make_dirs(work)
        fs, work_path = storage.resolve(work)
        trainer = XGBoostTrainer(
            worker.train_loop_per_worker,
            train_loop_config={
                "parts": plan.parts,
                "params": xgb_params,
                "rounds": settings.train_rounds,
                "holdout_fraction": settings.holdout_fraction,
                "seed": settings.seed,
                "compare_random": settings.train_compare_random_split,
                "work_dir": work,
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=device == "cuda", resources_per_worker=per_worker
            ),
            run_config=RunConfig(
                name=f"stockpipe-train-{uuid.uuid4().hex[:8]}",
                storage_path=work_path,
                storage_filesystem=None if storage.is_local(work) else fs,
            ),
        )
        # The fit is one blocking call: its progress is its workers, none done, then all.
        self.progress.tasks("train", 0, workers)
        fit_started, fit_began = time.perf_counter(), time.time()
        trainer.fit()
        fit_seconds, fit_ended = time.perf_counter() - fit_started, time.time()
        self.progress.tasks("train", workers, workers)

        results = [storage.read_json(storage.join(work, name)) for name in _names(work, "rank-")]
        result = summary.summarise(
            results,
            engine=Engine(trainer="ray.train.xgboost.XGBoostTrainer", workers=workers, device=device),
            params=xgb_params,
            settings=settings,
            timing=Timing(
                ray_train_fit_seconds=round(fit_seconds, 3),
                boosting_seconds=round(max(r["time"]["seconds"] for r in results), 3),
                load_seconds=round(max(r["load_seconds"] for r in results), 3),
                # Ray Train's own time: starting its controller and workers, and after the last
                # worker is done, stopping them.
                ray_train_start_seconds=round(min(r["began"] for r in results) - fit_began, 3),
                ray_train_stop_seconds=round(fit_ended - max(r["ended"] for r in results), 3),
            ),
            fingerprint=plan.fingerprint,
        )
        model = storage.read_bytes(storage.join(work, MODEL_FILE))
        contract.write(model_dir.location, model, summary.model_metadata(result, plan.parts))
        self._history = next(r for r in results if r["rank"] == 0)["time"]["history"]
        self._sample = _plot_sample(work)
        storage.remove_dir(work)
        return Built(result)

    def report(self, result: TrainMetrics) -> None:
        if result.reused:  # the log and plots of the published model are there already
            return
        from compute.stages.train import plots, summary

        storage.write_bytes(summary.training_log(self._history).encode(), self.layout.training_log)
        storage.write_bytes(plots.learning_curve(self._history), self.layout.learning_curve)
        storage.write_bytes(plots.predicted_vs_actual(self._sample), self.layout.predicted_vs_actual)

    def artifacts(self, result: TrainMetrics) -> list[Artifact]:
        plots = {
            "Learning curve": storage.read_bytes(self.layout.learning_curve),
            "Predicted vs actual volume": storage.read_bytes(self.layout.predicted_vs_actual),
        }
        return [Artifact("training-metrics", "Model vs baseline", markdown=training_markdown(result, plots))]

    def describe(self, result: TrainMetrics) -> list[str]:
        split_, model, base = result.time_split, result.time_split.model, result.time_split.baseline
        return [
            f"train: time holdout from {split_.cutoff}: MAE {model.mae:,.0f} vs baseline "
            f"{base.mae:,.0f} ({split_.mae_improvement_pct:+.1f}%), R² {model.r2:.3f} vs {base.r2:.3f}",
            f"  model:      {self.layout.model}/ (model.bin, model.json, metrics.json)",
            f"  log:        {self.layout.training_log}",
            f"  plots:      {self.layout.reports}/{storage.basename(self.layout.learning_curve)}, "
            f"{storage.basename(self.layout.predicted_vs_actual)}",
        ]


def _names(folder: str, prefix: str) -> list[str]:
    return [name for name, _, _ in storage.listing(folder) if name.startswith(prefix)]


def _plot_sample(work: str) -> dict[str, Any]:
    """The holdout rows each worker sampled for the predicted-vs-actual plot, together."""
    samples = [
        np.load(io.BytesIO(storage.read_bytes(storage.join(work, n)))) for n in _names(work, "sample-")
    ]
    return {k: np.concatenate([s[k] for s in samples]) for k in ("actual", "predicted", "baseline")}
