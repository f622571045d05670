"""The train stage beside a plain XGBoost script on the same stage 2, in one invocation: the stage's
phases (Ray's start of its workers, read, DMatrix, boosting, predict, champion scoring, folds,
the workers' stop, and the driver's share: the card, the plots, the publish) and the plain
script's (bench/plain_train.py, its own process), alternating, with the ratio of each pair.

    python -m bench.train --source stock-market-dataset-2021.zip            # the 2021 vintage
    python -m bench.train --source data/sample --scale 250 --devices cuda,cpu --folds 0,4
    python -m bench.train --out DIR                                         # DIR/stage2 as it is

With --source, ingest and features run first (the stage protocol on a local Ray, no Prefect) into
--out, or a temporary output; `--scale N` links every file N times under new symbol names (AAPL.R1, ...),
once, into bench/.cache. The stage runs forced, so that every run trains, and each run after the
first has a champion to score, as a daily run has. Each stage run is a process of its own that
starts Ray, as `stockpipe train` is, so that its imports and its workers' are the stage's cost, as
they are a user's; its time excludes Ray's start (printed apart), as the stage's own timing does.
The plain script is timed as `time python script.py` times it. GPU utilisation is sampled every
0.1 s during each run where NVML is installed. Needs compute/'s packages only (no Prefect), so
that it runs on a GPU host given just those (bench/gpu-wheels.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compute import stop
from compute.settings import get_settings
from compute.stage import run
from compute.stages import Features, Ingest, Train

PHASES = ("start", "read", "dmatrix", "boosting", "predict", "champion", "folds", "write", "stop", "driver")


def start_ray(out: str) -> str:
    """A local Ray as the pipeline starts it, with its dashboard; without one where the dashboard's
    packages (ray[default]: opencensus, opentelemetry, aiohttp-cors, ...) are not installed, as on
    a GPU host given only what training needs. A caller's Ray is used as it is."""
    import logging

    import ray

    from compute import cluster

    if ray.is_initialized():
        return "the caller's Ray"
    try:
        import ray.dashboard.optional_deps
    except ImportError as missing:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        return f"no dashboard ({missing.name} is not installed)"
    cluster.connect(get_settings(out=out), progress=lambda _line: None)
    return f"dashboard {cluster.dashboard_url()}"


def prepare(source: Path, scale: int, out: str) -> dict[str, float]:
    """Stage 1 and 2 of `source` (scaled) in `out`; their seconds."""
    from bench.etl import scaled, unpacked

    settings = get_settings(source=str(scaled(unpacked(source.resolve()), scale)), out=out)
    seconds = {}
    for stage in (Ingest, Features):
        began = time.perf_counter()
        run(stage(settings, progress=lambda _line: None))
        seconds[stage.name] = time.perf_counter() - began
    return seconds


@contextmanager
def gpu_sampler() -> Iterator[list[int]]:
    """GPU utilisation (%) every 0.1 s while the block runs; nothing where NVML is missing."""
    samples: list[int] = []
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no NVML or no GPU: nothing to sample
        yield samples
        return
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


def busy(samples: list[int]) -> dict[str, float | None]:
    return {
        "gpu_util_peak": max(samples, default=None),
        "gpu_util_mean": round(statistics.fmean(samples), 1) if samples else None,
    }


def stage(
    out: str, device: str, layout: str, folds: int, rounds: int | None, in_process: bool = False
) -> dict[str, Any]:
    """The train stage in a process of its own (`once`), or in this one (`in_process`: on the
    caller's Ray, where a first run pays imports that later ones do not)."""
    if in_process:
        return once(out, device, layout, folds, rounds)
    command = [sys.executable, "-m", "bench.train", "--once", "--out", out, "--devices", device,
               "--layouts", layout, "--folds", str(folds)]  # fmt: skip
    command += ["--rounds", str(rounds)] if rounds else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the train stage failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def once(out: str, device: str, layout: str, folds: int, rounds: int | None) -> dict[str, Any]:
    """One forced run of the train stage: its phases as its metrics record them, or
    {"refused": why} where it refused the device (CUDA where Ray sees no GPU)."""
    import ray

    began, started_here = time.perf_counter(), not ray.is_initialized()
    start_ray(out)
    ray_start = time.perf_counter() - began
    settings = get_settings(out=out, train_device=device, train_layout=layout, train_backtest_folds=folds,
                            train_rounds=rounds, force=True)  # fmt: skip
    what = f"stage {device} {layout}" + (f" folds {folds}" if folds else "")
    try:
        with gpu_sampler() as samples:
            began = time.perf_counter()
            metrics = run(Train(settings, progress=lambda _line: None))
            total = time.perf_counter() - began
    except stop.Stopped as refused:  # the stage refused: CUDA where Ray sees no GPU
        return {"what": what, "asked": device, "refused": refused.reason}
    finally:
        if started_here:
            ray.shutdown()
    timing, engine, split = metrics.timing, metrics.engine, metrics.time_split
    phases = {"start": timing.start_seconds, **timing.phases, "stop": timing.stop_seconds}
    phases["driver"] = total - timing.fit_seconds
    return {
        "what": what,
        "asked": device,
        "xgboost_device": engine.xgboost_device,
        "data_on": engine.data_on,
        "layout": engine.layout,
        "why": engine.why,
        "workers": engine.workers,
        "rounds": metrics.rounds,
        "train_rows": split.train_rows,
        "test_rows": split.test_rows,
        "ray_start_s": ray_start,
        "total_s": total,
        "fit_s": timing.fit_seconds,
        "boosting_s": timing.boosting_seconds,
        "phases": phases,
        "mae": split.model.mae,
        "r2": split.model.r2,
        "baseline_mae": split.baseline.mae,
        **busy(samples),
    }


def plain(out: str, device: str, folds: int, rounds: int | None) -> dict[str, Any]:
    """bench/plain_train.py in its own process, timed from its start (imports included)."""
    command = [sys.executable, "-m", "bench.plain_train", str(Path(out) / "stage2"), "--device", device,
               "--folds", str(folds), "--rounds", str(rounds or 40)]  # fmt: skip
    with gpu_sampler() as samples:
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        process = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"the plain script failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    what = f"plain {device}" + (f" folds {folds}" if folds else "")
    return {**result, "what": what, "asked": device, "process_s": process, **busy(samples)}


def span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _gpu(run: dict[str, Any]) -> str:
    if run.get("gpu_util_peak") is None:
        return ""
    return f", GPU busy peak {run['gpu_util_peak']}% mean {run['gpu_util_mean']}%"


def report(runs: list[dict[str, Any]]) -> None:
    """A line per configuration (medians and ranges), each stage's ratio to the plain script on
    the same device and folds, and CPU against CUDA."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "refused" not in r:
            by.setdefault(r["what"], []).append(r)
    for what, group in by.items():
        first = group[0]
        if what.startswith("stage"):
            phases = " ".join(f"{p} {statistics.median(g['phases'].get(p, 0.0) for g in group):.2f}"
                              for p in PHASES)  # fmt: skip
            print(f"{what}: {span([g['total_s'] for g in group])} s; XGBoost on {first['xgboost_device']}, "
                  f"data on {first['data_on']}, {first['workers']} worker(s) ({first['why']}); "
                  f"MAE {first['mae']:,.0f}{_gpu(first)}")  # fmt: skip
            print(f"    phases (medians, s): {phases}")
        else:
            print(f"{what}: {span([g['process_s'] for g in group])} s (read {first['read_s']:.2f}, DMatrix "
                  f"{first['dmatrix_s']:.2f}, boosting {first['boosting_s']:.2f}, predict "
                  f"{first['predict_s']:.2f}, folds {first['folds_s']:.2f}); MAE {first['mae']:,.0f}"
                  f"{_gpu(first)}")  # fmt: skip
    for what, group in by.items():
        if not what.startswith("stage"):
            continue
        folds = what.split(" folds ")[1] if " folds " in what else None
        yardstick = by.get(f"plain {group[0]['asked']}" + (f" folds {folds}" if folds else ""))
        if yardstick:
            pairs = list(zip(group, yardstick, strict=False))
            ratios = [s["total_s"] / p["process_s"] for s, p in pairs]
            extra = [s["total_s"] - p["process_s"] for s, p in pairs]
            mae = 100 * (group[0]["mae"] / yardstick[0]["mae"] - 1)
            print(f"{what} / plain: {span(ratios)}x, {span(extra)} s more; MAE {mae:+.2f}%")
        if what.startswith("stage cuda") and (cpu := by.get(what.replace("stage cuda", "stage cpu"))):
            ratios = [c["total_s"] / g["total_s"] for g, c in zip(group, cpu, strict=False)]
            print(f"{what}: the CPU's stage / the GPU's on the same host: {span(ratios)}x")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", type=Path, help="a Kaggle-layout folder or zip: ingest and features first"
    )
    parser.add_argument("--scale", type=int, default=1, help="replicate the source's files N times")
    parser.add_argument("--out", help="train on its stage2/ (with --source: built there first)")
    parser.add_argument("--devices", default="cpu", help="comma-separated, of cpu and cuda")
    parser.add_argument("--layouts", default="auto", help="comma-separated, of auto, single, distributed")
    parser.add_argument("--folds", default="0", help="comma-separated backtest fold counts")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain script")
    parser.add_argument(
        "--in-process", action="store_true", help="train in this process (on the caller's Ray)"
    )
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one stage run, as JSON
    args = parser.parse_args(argv)
    if args.once:
        print(json.dumps(once(args.out, args.devices, args.layouts, int(args.folds), args.rounds)))
        return []
    if not args.source and not args.out:
        parser.error("give --source, --out or both")
    devices, layouts = args.devices.split(","), args.layouts.split(",")
    folds = [int(f) for f in args.folds.split(",")]

    import ray
    import xgboost

    print(f"xgboost {xgboost.__version__} (CUDA in this build: {xgboost.build_info().get('USE_CUDA')}), "
          f"ray {ray.__version__}, python {sys.version.split()[0]}", flush=True)  # fmt: skip
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stockpipe-bench-") as tmp:
        out = args.out or tmp
        started_here = not ray.is_initialized()
        if args.source:
            began = time.perf_counter()
            how = start_ray(out)
            resources = ray.cluster_resources()
            print(f"ray: started in {time.perf_counter() - began:.1f} s, {resources.get('CPU', 0):.0f} CPUs, "
                  f"{resources.get('GPU', 0):.0f} GPUs, {how}", flush=True)  # fmt: skip
            seconds = prepare(args.source, args.scale, out)
            print("etl: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), flush=True)
            if started_here and not args.in_process:
                ray.shutdown()
        for i in range(args.repeat):
            for device in devices:
                for n in folds:
                    for layout in layouts:
                        r = stage(out, device, layout, n, args.rounds, args.in_process)
                        runs.append(r)
                        if "refused" in r:
                            print(f"{device:>4}: refused: {r['refused']}", flush=True)
                            continue
                        phases = " ".join(f"{p} {r['phases'].get(p, 0):.2f}" for p in PHASES)
                        print(f"  [{i + 1}] {r['what']}: {r['total_s']:.2f} s (Ray start "
                              f"{r['ray_start_s']:.1f} s apart); {phases}", flush=True)  # fmt: skip
                    if not args.no_plain and not any(r.get("refused") and r["asked"] == device for r in runs):
                        runs.append(plain(out, device, n, args.rounds))
                        print(f"  [{i + 1}] {runs[-1]['what']}: {runs[-1]['process_s']:.2f} s", flush=True)
        if started_here and ray.is_initialized():
            ray.shutdown()
    report(runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return runs


if __name__ == "__main__":
    main()
