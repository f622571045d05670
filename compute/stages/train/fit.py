"""The fit, run from the driver in the layout chosen (params.py): one Ray task running
worker.train_alone on one node, or Ray Train's XGBoostTrainer with every worker running
worker.train_loop_per_worker on its share of the stage-2 parts. Either way the workers write their
results into `work` (shared storage whenever the output is), which this reads back, typed.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from compute import stop, storage
from compute.layout import MODEL_FILE
from compute.settings import Settings
from compute.stages.train import worker
from compute.stages.train.params import Layout
from compute.stages.train.results import WorkerResult

T = TypeVar("T")

# Ray Train's own settings, read from the driver's environment and passed on to its controller:
# poll the workers every 0.25 s instead of 2 s, so that a short fit is not seen finished seconds
# late; no preemption watcher (one actor less to start), since a lost worker fails the stage and
# Prefect retries it (compute/errors.py).
RAY_TRAIN_ENVIRONMENT = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


@dataclass
class Fitted:
    workers: list[WorkerResult]  # by rank
    model: bytes  # model.bin: every worker holds the same model after collective training
    sample: dict[str, np.ndarray]  # holdout rows for the predicted-vs-actual plot
    seconds: float  # the whole fit call
    began: float  # wall clock of the call's start and end
    ended: float


def fit(
    parts: list[str],
    settings: Settings,
    xgb_params: dict[str, Any],
    layout: Layout,
    work: str,
    champion: tuple[bytes, dict[str, Any]] | None = None,
    reference_bins: dict[str, Any] | None = None,
) -> Fitted:
    """Train in `layout`; `work` is scratch space. Each worker also scores `champion` (model.bin
    and its card), when given, on its test rows, and counts its rows over `reference_bins` (the
    champion's card's) for the drift report."""
    storage.make_dirs(work)
    config = {
        "parts": parts,
        "params": xgb_params,
        "rounds": settings.train_rounds,
        "holdout_fraction": settings.holdout_fraction,
        "seed": settings.seed,
        "compare_random": settings.train_compare_random_split,
        "work_dir": work,
        "champion": champion,
        "reference_bins": reference_bins,
        "backtest_folds": settings.train_backtest_folds,
    }
    started, began = time.perf_counter(), time.time()
    if layout.kind == "single":
        run_alone(worker.train_alone, config, layout, name="train")
    else:
        _run_ray_train(config, layout, work)
    seconds, ended = time.perf_counter() - started, time.time()
    results = [
        WorkerResult.model_validate_json(storage.read_bytes(storage.join(work, name)))
        for name in _names(work, "rank-")
    ]
    return Fitted(
        workers=sorted(results, key=lambda r: r.rank),
        model=storage.read_bytes(storage.join(work, MODEL_FILE)),
        sample=_plot_sample(work),
        seconds=seconds,
        began=began,
        ended=ended,
    )


def run_alone(work: Callable[[dict[str, Any]], T], config: dict[str, Any], layout: Layout, name: str) -> T:
    """`work(config)` as one Ray task holding its node's CPUs (and a GPU): it shows on the
    dashboard as `name`. The work itself uses every CPU the task holds (compute/cpus.py: the
    worker process may be one that a fan-out's one-CPU tasks left). Pinned to its node and not
    retried by Ray: a lost node fails the stage, which Prefect retries (compute/errors.py) on the
    nodes left."""
    remote = ray.remote(work).options(
        name=name,
        num_cpus=layout.resources.get("CPU", 1),
        num_gpus=layout.resources.get("GPU", 0),
        max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(layout.node, soft=False) if layout.node else None,
    )
    ref = remote.remote(config)
    try:
        while not ray.wait([ref], timeout=stop.POLL_SECONDS)[0]:
            stop.checkpoint()
        stop.checkpoint()
        return ray.get(ref)
    except stop.Stopped:
        ray.cancel(ref, force=True)
        raise


def _run_ray_train(config: dict[str, Any], layout: Layout, work: str) -> None:
    from ray.train import RunConfig, ScalingConfig  # about 2 s to import
    from ray.train.xgboost import XGBoostTrainer

    for name, value in RAY_TRAIN_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    fs, work_path = storage.resolve(work)
    trainer = XGBoostTrainer(
        worker.train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=layout.workers,
            use_gpu=bool(layout.resources.get("GPU")),
            resources_per_worker=layout.resources,
        ),
        run_config=RunConfig(
            name=f"stockpipe-train-{uuid.uuid4().hex[:8]}",
            storage_path=work_path,
            storage_filesystem=None if storage.is_local(work) else fs,
        ),
    )
    # On a thread of its own, which a stop does not wait for (compute/stop.py); off the main thread
    # Ray Train also leaves the process's Ctrl-C handler alone, which it would replace for good.
    stop.wait(trainer.fit, name="ray-train-fit")


def _names(folder: str, prefix: str) -> list[str]:
    return [name for name, _, _ in storage.listing(folder) if name.startswith(prefix)]


def _plot_sample(work: str) -> dict[str, np.ndarray]:
    """The holdout rows each worker sampled for the predicted-vs-actual plot, together."""
    samples = [
        np.load(io.BytesIO(storage.read_bytes(storage.join(work, n)))) for n in _names(work, "sample-")
    ]
    return {k: np.concatenate([s[k] for s in samples]) for k in ("actual", "predicted", "baseline")}
