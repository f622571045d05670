"""Stage 3: distributed XGBoost on Ray Train, evaluated on a time holdout against a naive baseline.

Each Ray Train worker reads its own share of the stage-2 part files (nothing is collected on the
driver), builds its DMatrix shards, and XGBoost's collective trains one model across all workers.
Every worker computes error sums on its own test rows; the driver merges them exactly.
The same workers then train a second model on a random 80/20 split, for comparison only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import platform
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xgboost as xgb
from xgboost import collective

from compute import cluster, manifest, storage
from compute import metrics as metrics_module
from compute import model as contract
from compute.cluster import fan_out
from compute.layout import Layout, part_number
from compute.metrics import ErrorSums, merge_all
from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN
from compute.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
PLOT_SAMPLE_PER_WORKER = 5_000
SCRATCH_PREFIX = ".train-"


# --- split ----------------------------------------------------------------------------------------


def date_counts(part: str) -> dict[str, Any]:
    """Rows per date among rows with both features, plus how many rows lack them."""
    table = storage.read_parquet(part, columns=["Date", *FEATURE_COLUMNS])
    usable = pc.and_(*[pc.is_valid(table.column(c)) for c in FEATURE_COLUMNS])
    counts = pc.value_counts(table.column("Date").filter(usable))
    return {
        "dates": dict(
            zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        ),
        "null_feature_rows": table.num_rows - pc.sum(usable).as_py() if table.num_rows else 0,
        "rows": table.num_rows,
    }


def holdout_cutoff(dates: dict[str, int], holdout_fraction: float) -> str:
    """The first test date: rows dated on or after it are about the last `holdout_fraction` of rows."""
    ordered = sorted(dates)
    cumulative = np.cumsum([dates[d] for d in ordered])
    train_rows = (1.0 - holdout_fraction) * cumulative[-1]
    return ordered[min(int(np.searchsorted(cumulative, train_rows, side="right")), len(ordered) - 1)]


# --- per worker -----------------------------------------------------------------------------------


def load_shard(parts: list[str], cutoff: str, random_fraction: float, seed: int) -> dict[str, np.ndarray]:
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "volume", "date", "time_test", "random_test")}
    for part in parts:
        table = storage.read_parquet(part, columns=["Date", TARGET_COLUMN, *FEATURE_COLUMNS])
        table = table.filter(pc.and_(*[pc.is_valid(table.column(c)) for c in FEATURE_COLUMNS]))
        dates = table.column("Date").cast(pa.date32()).to_numpy()  # datetime64[D]
        arrays["x"].append(contract.feature_matrix(*[table.column(c).to_numpy() for c in FEATURE_COLUMNS]))
        arrays["volume"].append(table.column(TARGET_COLUMN).to_numpy().astype(np.float64))
        arrays["date"].append(dates)
        arrays["time_test"].append(dates >= np.datetime64(cutoff))
        # Seeded by the part's name, so the random split does not depend on the number of workers.
        rng = np.random.default_rng([seed, part_number(storage.basename(part))])
        arrays["random_test"].append(rng.random(len(dates)) < random_fraction)
    if not parts:
        return {"x": np.zeros((0, 2)), "volume": np.zeros(0), "date": np.zeros(0, "datetime64[D]"),
                "time_test": np.zeros(0, bool), "random_test": np.zeros(0, bool)}  # fmt: skip
    return {k: np.concatenate(v) for k, v in arrays.items()}


def fit_split(
    params: dict[str, Any], rounds: int, shard: dict[str, np.ndarray], test: np.ndarray
) -> dict[str, Any]:
    x, volume, m = shard["x"], shard["volume"], shard["x"][:, 0]
    target = contract.to_target(volume, m)
    # Weight by vol_moving_avg²: m²·(ratio error)² is the squared error in shares, so the loss
    # ranks rows as the volume-scale metrics do instead of treating a 100-share stock like AAPL.
    # Normalised to a mean of 1 over all workers' training rows, so that XGBoost's regularisation
    # (lambda, min_child_weight) keeps its usual scale whatever the volumes are.
    sums = collective.allreduce(
        np.array([np.sum(m[~test] ** 2), (~test).sum()], dtype=np.float64), collective.Op.SUM
    )
    weight = m**2 / max(sums[0] / max(sums[1], 1.0), 1e-12)
    names = list(FEATURE_COLUMNS)
    dtrain = xgb.QuantileDMatrix(x[~test], target[~test], weight=weight[~test], feature_names=names)
    dtest = xgb.DMatrix(x[test], target[test], weight=weight[test], feature_names=names)
    history: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    booster = xgb.train(
        params, dtrain, rounds, evals=[(dtrain, "train"), (dtest, "validation")],
        evals_result=history, verbose_eval=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    predicted = contract.to_volume(booster.inplace_predict(x[test]), m[test])
    return {
        "booster": booster,
        "history": history,
        "seconds": seconds,
        "model": ErrorSums.of(volume[test], predicted).to_dict(),
        "baseline": ErrorSums.of(volume[test], m[test]).to_dict(),
        "train_rows": int((~test).sum()),
        "test_rows": int(test.sum()),
        "predicted": predicted,
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; results go to files in config['work_dir'] (shared storage)."""
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    started = time.perf_counter()
    shard = load_shard(
        config["parts"][rank::size], config["cutoff"], config["random_fraction"], config["seed"]
    )
    load_seconds = time.perf_counter() - started

    timed = fit_split(config["params"], config["rounds"], shard, shard["time_test"])
    rand = (
        fit_split(config["params"], config["rounds"], shard, shard["random_test"])
        if config["compare_random"]
        else None
    )

    test = shard["time_test"]
    rng = np.random.default_rng([config["seed"], rank])
    pick = rng.choice(int(test.sum()), size=min(PLOT_SAMPLE_PER_WORKER, int(test.sum())), replace=False)
    work = config["work_dir"]
    result = {
        "rank": rank,
        "load_seconds": load_seconds,
        "rows": len(shard["volume"]),
        "train_dates": [str(shard["date"][~test].min()), str(shard["date"][~test].max())]
        if (~test).any()
        else None,
        "test_dates": [str(shard["date"][test].min()), str(shard["date"][test].max())]
        if test.any()
        else None,
        "time": {k: v for k, v in timed.items() if k not in ("booster", "predicted")},
        "random": None
        if rand is None
        else {k: v for k, v in rand.items() if k not in ("booster", "predicted")},
    }
    sample = io.BytesIO()
    np.savez(
        sample,
        actual=shard["volume"][test][pick],
        predicted=timed["predicted"][pick],
        baseline=shard["x"][test][pick, 0],
    )
    storage.write_bytes(sample.getvalue(), storage.join(work, f"sample-{rank}.npz"))
    if rank == 0:  # every worker holds the same model after collective training
        model_bytes = bytes(timed["booster"].save_raw(raw_format="ubj"))
        storage.write_bytes(model_bytes, storage.join(work, contract.MODEL_FILE))
    storage.write_json(result, storage.join(work, f"rank-{rank}.json"))


# --- driver ---------------------------------------------------------------------------------------


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA when the Ray cluster has a GPU, else CPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train device must be auto, cpu or cuda, not {requested!r}")
    if requested != "auto":
        return requested
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def xgb_params(settings: Settings, device: str, threads: int) -> dict[str, Any]:
    return {
        "objective": "reg:pseudohubererror",
        "huber_slope": settings.train_huber_slope,
        "tree_method": "hist",
        "device": device,
        "max_depth": settings.train_max_depth,
        "eta": settings.train_eta,
        "max_bin": 256,
        "nthread": threads,
        # Pseudo-Huber's hessian vanishes for far outliers; bounding each leaf step keeps it stable.
        "max_delta_step": 1.0,
        "seed": settings.seed,
    }


def run_train(settings: Settings, progress: Progress = log.info) -> dict[str, Any]:
    """Train, evaluate and save the model under <out>/model; return the metrics."""
    started = time.perf_counter()
    layout = Layout(settings.out)
    parts = storage.parquet_parts(layout.stage2)
    if not parts:
        raise FileNotFoundError(f"no stage 2 output in {layout.root}: run `stockpipe features` first")
    fingerprint = _fingerprint(layout, settings)
    if not settings.force and (previous := _reusable_model(layout, fingerprint)):
        progress("train: stage 2, the code and the training settings are unchanged: model reused")
        return {**previous, "reused": True}
    cluster.connect(settings, progress)
    from ray.train import RunConfig, ScalingConfig  # about 2 s to import: only when training
    from ray.train.xgboost import XGBoostTrainer

    for name in storage.children(layout.root):
        if name.startswith(SCRATCH_PREFIX):  # left by a killed run (one run per output at a time)
            storage.remove_dir(storage.join(layout.root, name))
    device = resolve_device(settings.train_device)
    counted = fan_out(date_counts, [(p,) for p in parts], label="train-split", progress=progress).results
    dates: dict[str, int] = {}
    for c in counted:
        for d, n in c["dates"].items():
            dates[d] = dates.get(d, 0) + n
    if not dates:
        raise ValueError("stage 2 has no row with both features (every symbol has fewer than 30 rows)")
    cutoff = holdout_cutoff(dates, settings.holdout_fraction)

    resources = ray.cluster_resources()
    if device == "cuda":
        workers = settings.train_workers or max(int(resources.get("GPU", 1)), 1)
        per_worker = {"CPU": 1, "GPU": 1}
    else:
        workers = settings.train_workers or max(min(int(resources.get("CPU", 1)), 8), 1)
        per_worker = {"CPU": max(int(resources.get("CPU", 1)) // workers, 1)}
    workers = min(workers, len(parts))
    params = xgb_params(settings, device, int(per_worker["CPU"]))
    progress(
        f"train: {workers} Ray Train workers on {device}, cutoff {cutoff}, {settings.train_rounds} rounds"
    )

    # Scratch space beside the model, so that it is shared storage whenever the output is.
    work = storage.join(layout.root, f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}")
    storage.make_dirs(work)
    fs, work_path = storage.resolve(work)
    try:
        config = {
            "parts": parts,
            "cutoff": cutoff,
            "params": params,
            "rounds": settings.train_rounds,
            "random_fraction": settings.holdout_fraction,
            "seed": settings.seed,
            "compare_random": settings.train_compare_random_split,
            "work_dir": work,
        }
        trainer = XGBoostTrainer(
            train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=device == "cuda", resources_per_worker=per_worker
            ),
            run_config=RunConfig(
                name=f"stockpipe-train-{uuid.uuid4().hex[:8]}",
                storage_path=work_path,
                storage_filesystem=None if storage.is_local(work) else fs,
            ),
        )
        fit_started = time.perf_counter()
        trainer.fit()
        fit_seconds = time.perf_counter() - fit_started
        results = [storage.read_json(storage.join(work, name)) for name in _names(work, "rank-")]
        metrics = _summarise(results, counted, cutoff, device, workers, params, settings)
        metrics["timing"] = {
            "ray_train_fit_seconds": round(fit_seconds, 3),
            "boosting_seconds": round(max(r["time"]["seconds"] for r in results), 3),
            "load_seconds": round(max(r["load_seconds"] for r in results), 3),
            "stage_seconds": round(time.perf_counter() - started, 3),
        }
        metrics["fingerprint"] = fingerprint
        _publish(work, layout, results, metrics, settings)
    finally:
        storage.remove_dir(work)
    return metrics


def _fingerprint(layout: Layout, settings: Settings) -> str:
    """What the model is built from: stage 2, this code, the training settings (the requested
    device: "auto" reuses a model whichever device built it)."""
    training = settings.model_dump(include={
        "holdout_fraction", "train_rounds", "train_max_depth", "train_eta", "train_huber_slope",
        "train_workers", "train_compare_random_split", "seed", "train_device",
    })  # fmt: skip
    code = manifest.code(sys.modules[__name__], contract, metrics_module)
    return manifest.digest(manifest.stage_id(layout.stage2), code, training)


def _reusable_model(layout: Layout, fingerprint: str) -> dict[str, Any] | None:
    # metrics.json is written last, so a matching one means model.bin and model.json are complete.
    metrics = storage.read_json(storage.join(layout.model, "metrics.json"))
    if not isinstance(metrics, dict):
        return None
    whole = all(
        storage.is_file(storage.join(layout.model, name))
        for name in (contract.MODEL_FILE, contract.METADATA_FILE)
    )
    return metrics if whole and metrics.get("fingerprint") == fingerprint else None


def _summarise(
    results: list[dict[str, Any]],
    counted: list[dict[str, Any]],
    cutoff: str,
    device: str,
    workers: int,
    params: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    def merged(split: str, which: str) -> dict[str, float]:
        return merge_all([ErrorSums(**r[split][which]) for r in results if r[split]]).metrics()

    train_dates = [r["train_dates"] for r in results if r["train_dates"]]
    test_dates = [r["test_dates"] for r in results if r["test_dates"]]
    model_m, base_m = merged("time", "model"), merged("time", "baseline")
    summary: dict[str, Any] = {
        "time_split": {
            "cutoff": cutoff,
            "train_dates": [min(d[0] for d in train_dates), max(d[1] for d in train_dates)]
            if train_dates
            else None,
            "test_dates": [min(d[0] for d in test_dates), max(d[1] for d in test_dates)]
            if test_dates
            else None,
            "train_rows": sum(r["time"]["train_rows"] for r in results),
            "test_rows": sum(r["time"]["test_rows"] for r in results),
            "model": model_m,
            "baseline": base_m,
            "mae_improvement_pct": 100.0 * (1 - model_m["mae"] / base_m["mae"]) if base_m["mae"] else None,
        },
        "rows": {
            "stage2": sum(c["rows"] for c in counted),
            "dropped_null_features": sum(c["null_feature_rows"] for c in counted),
            "used": sum(r["rows"] for r in results),
        },
        "engine": {"trainer": "ray.train.xgboost.XGBoostTrainer", "workers": workers, "device": device},
        "params": params,
        "rounds": settings.train_rounds,
    }
    if all(r["random"] for r in results):
        summary["random_split"] = {
            "test_fraction": settings.holdout_fraction,
            "train_rows": sum(r["random"]["train_rows"] for r in results),
            "test_rows": sum(r["random"]["test_rows"] for r in results),
            "model": merged("random", "model"),
            "baseline": merged("random", "baseline"),
        }
    return summary


def _publish(
    work: str, layout: Layout, results: list[dict[str, Any]], metrics: dict[str, Any], settings: Settings
) -> None:
    from compute import plots

    history = next(r for r in results if r["rank"] == 0)["time"]["history"]
    lines = []
    for metric in history["train"]:
        for i, (tr, va) in enumerate(
            zip(history["train"][metric], history["validation"][metric], strict=True)
        ):
            lines.append(f"round={i} train-{metric}={tr:.8g} validation-{metric}={va:.8g}")
    storage.write_bytes(("\n".join(lines) + "\n").encode(), storage.join(layout.logs, "training.log"))

    samples = [
        np.load(io.BytesIO(storage.read_bytes(storage.join(work, name)))) for name in _names(work, "sample-")
    ]
    sample = {k: np.concatenate([s[k] for s in samples]) for k in ("actual", "predicted", "baseline")}
    storage.write_bytes(plots.learning_curve(history), storage.join(layout.reports, "learning_curve.png"))
    storage.write_bytes(
        plots.predicted_vs_actual(sample), storage.join(layout.reports, "predicted_vs_actual.png")
    )
    metadata = {
        "features": list(FEATURE_COLUMNS),
        "target": TARGET_COLUMN,
        "target_transform": contract.TARGET_TRANSFORM,
        "objective": metrics["params"]["objective"],
        "training_window": metrics["time_split"]["train_dates"],
        "holdout_cutoff": metrics["time_split"]["cutoff"],
        "data_hash": _data_hash(storage.parquet_parts(layout.stage2)),
        "metrics": {
            "time_split": metrics["time_split"]["model"],
            "baseline": metrics["time_split"]["baseline"],
        },
        "versions": {
            "xgboost": xgb.__version__,
            "ray": ray.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model_bytes = storage.read_bytes(storage.join(work, contract.MODEL_FILE))
    storage.write_bytes(model_bytes, storage.join(layout.model, contract.MODEL_FILE))
    storage.write_json(metadata, storage.join(layout.model, contract.METADATA_FILE))
    storage.write_json(metrics, storage.join(layout.model, "metrics.json"))  # last: marks the model whole


def _names(folder: str, prefix: str) -> list[str]:
    return [name for name, _, _ in storage.listing(folder) if name.startswith(prefix)]


def _data_hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(storage.basename(part).encode())
        fs, path = storage.resolve(part)
        with fs.open_input_stream(path) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
