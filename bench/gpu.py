"""The CUDA training path, checked without Prefect: ingest and features on the embedded sample
through the stage protocol (compute/stage.py), then the train stage on a local Ray, once per
device, printing for each the device XGBoost really used (read back from the trained booster's
config: XGBoost without a usable GPU warns and trains on the CPU), the workers, Ray Train's
start-up, the fit and boosting seconds and the holdout metrics.

    python -m bench.gpu                          # cuda, then cpu; the speed-up
    python -m bench.gpu --devices cpu            # the CPU half alone (the test suite runs it)
    python -m bench.gpu --source data/big --json out.json

It exits 1 when a device was not the one XGBoost used (a silent fall-back to the CPU fails it),
2 on bad arguments. It needs compute/'s packages (ray[train], xgboost, pyarrow, pandas,
pydantic-settings), not Prefect, BentoML or the CLI: what an offline GPU host can be given as
wheels (bench/gpu-wheels.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from compute import cluster
from compute.settings import SAMPLE_SOURCE, get_settings
from compute.stage import run
from compute.stages import Features, Ingest, Train

DEVICES = ("cuda", "cpu")


def train_on(device: str, out: str, rounds: int | None) -> dict[str, Any]:
    """The train stage on `device` over <out>/stage2, forced (each device trains its own version)."""
    settings = get_settings(out=out, train_device=device, train_rounds=rounds, force=True)
    started = time.perf_counter()
    metrics = run(Train(settings, progress=lambda line: print(f"  {line}", flush=True)))
    split = metrics.time_split
    return {
        "asked": device,
        "xgboost_device": metrics.engine.xgboost_device,
        "workers": metrics.engine.workers,
        "rounds": metrics.rounds,
        "train_rows": split.train_rows,
        "test_rows": split.test_rows,
        "ray_train_start_s": metrics.timing.ray_train_start_seconds,
        "fit_s": metrics.timing.ray_train_fit_seconds,
        "boosting_s": metrics.timing.boosting_seconds,
        "stage_s": round(time.perf_counter() - started, 3),
        "mae": split.model.mae,
        "r2": split.model.r2,
        "baseline_mae": split.baseline.mae,
        "mae_improvement_pct": split.mae_improvement_pct,
    }


def start_ray(settings: Any) -> str:
    """A local Ray as the pipeline starts it, with its dashboard; without one where the dashboard's
    packages (ray[default]: opencensus, opentelemetry, aiohttp-cors, ...) are not installed, as on
    a GPU host given only what training needs. The stages then find Ray started."""
    import logging

    import ray

    if ray.is_initialized():  # a caller's (the tests')
        return "the caller's Ray"
    try:
        import ray.dashboard.optional_deps
    except ImportError as missing:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        return f"no dashboard ({missing.name} is not installed)"
    cluster.connect(settings)
    return f"dashboard {cluster.dashboard_url()}"


def used_as_asked(result: dict[str, Any]) -> bool:
    return str(result["xgboost_device"] or "").split(":")[0] == result["asked"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default=",".join(DEVICES), help="comma-separated, of cuda and cpu")
    parser.add_argument("--source", default=str(SAMPLE_SOURCE), help="a Kaggle-layout folder or zip")
    parser.add_argument("--rounds", type=int, default=None, help="boosting rounds (default: the setting's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or set(devices) - set(DEVICES):
        parser.error(f"--devices takes {' and '.join(DEVICES)}, not {args.devices!r}")

    import ray
    import xgboost

    print(f"xgboost {xgboost.__version__} (CUDA in this build: {xgboost.build_info().get('USE_CUDA')}), "
          f"ray {ray.__version__}, python {sys.version.split()[0]}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="stockpipe-gpu-") as out:
        settings = get_settings(source=args.source, out=out)
        started, started_here = time.perf_counter(), not ray.is_initialized()
        dashboard = start_ray(settings)
        resources = ray.cluster_resources()
        print(f"ray: started in {time.perf_counter() - started:.1f} s, {resources.get('CPU', 0):.0f} CPUs, "
              f"{resources.get('GPU', 0):.0f} GPUs, {dashboard}", flush=True)  # fmt: skip
        for stage in (Ingest, Features):
            began = time.perf_counter()
            result = run(stage(settings, progress=lambda _line: None))
            print(f"{stage.name}: {result.model_dump_json(include={'rows'})} in "
                  f"{time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
        results, failed = [], False
        for device in devices:
            print(f"train on {device}:", flush=True)
            try:
                results.append(train_on(device, out, args.rounds))
            except ValueError as exc:  # cuda where Ray sees no GPU
                print(f"{device:>4}: refused: {exc}", flush=True)
                failed = True
        if started_here:
            ray.shutdown()

    for r in results:
        ok = used_as_asked(r)
        failed |= not ok
        print(
            f"{r['asked']:>4}: XGBoost used {r['xgboost_device']} ({'as asked' if ok else 'NOT as asked'}); "
            f"{r['workers']} workers, {r['rounds']} rounds on {r['train_rows']:,} rows; Ray Train start "
            f"{r['ray_train_start_s']:.2f} s, fit {r['fit_s']:.2f} s, boosting {r['boosting_s']:.2f} s; "
            f"holdout MAE {r['mae']:,.0f} (baseline {r['baseline_mae']:,.0f}), R² {r['r2']:.4f}"
        )
    by = {r["asked"]: r for r in results}
    if {"cuda", "cpu"} <= by.keys() and by["cuda"]["boosting_s"] > 0:
        print(f"speed-up, CPU over CUDA: boosting {by['cpu']['boosting_s'] / by['cuda']['boosting_s']:.2f}x, "
              f"fit {by['cpu']['fit_s'] / by['cuda']['fit_s']:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        print("gpu check: FAILED: XGBoost did not train on the device asked for", file=sys.stderr)
        return 1
    print("gpu check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
