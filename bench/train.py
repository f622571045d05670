"""Cost of distribution: Ray Train's XGBoostTrainer vs plain single-process `xgboost.train`,
on the same rows (time split), the same parameters and the same weights.

    python -m bench.train --out output        # needs <out>/stage2 (run `stockpipe features` first)

The model written by the Ray run goes to a temporary folder, not to <out>/model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from compute import cluster
from compute.layout import Layout
from compute.publish import parquet_parts
from compute.settings import Settings, get_settings
from compute.stage import run
from compute.stages import Train
from compute.stages.train.params import xgb_params
from compute.stages.train.split import shared_cutoff
from compute.stages.train.worker import fit_split, load_shard, time_test


def plain_xgboost(stage2: Path, settings: Settings, threads: int) -> dict[str, float]:
    """The same per-worker code (`fit_split`), run once in this process over every row."""
    parts = [str(p) for p in parquet_parts(stage2)]
    started = time.perf_counter()
    shard = load_shard(parts, settings.holdout_fraction, settings.seed)
    load = time.perf_counter() - started
    test = time_test(shard, shared_cutoff(shard["date"], settings.holdout_fraction))
    fitted = fit_split(xgb_params(settings, "cpu", threads), settings.train_rounds, shard, test)
    return {"load_s": load, "train_s": fitted.outcome.seconds, **fitted.outcome.model.metrics()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="output", help="folder holding stage2/ (default ./output)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    stage2 = Layout(args.out).stage2
    if not parquet_parts(stage2):
        parser.error(f"no stage 2 parts in {stage2}")

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stage2").symlink_to(stage2)
        overrides = {"out": tmp, "train_compare_random_split": False, "train_rounds": args.rounds}
        settings = get_settings(**overrides)
        started = time.perf_counter()
        cluster.connect(settings)
        ray_start = time.perf_counter() - started
        ray_metrics = run(Train(settings, progress=lambda _: None))

    threads = cluster.cluster_cpus()
    plain = plain_xgboost(stage2, settings, threads)
    ray_t = ray_metrics.timing
    model = ray_metrics.time_split.model.model_dump()
    split = ray_metrics.time_split
    print(f"rows: {split.train_rows:,} train, {split.test_rows:,} test; {settings.train_rounds} rounds")
    plain_total = plain["load_s"] + plain["train_s"]
    rows = [
        ("ray.init (fixed cost)", ray_start, None),
        ("Ray XGBoostTrainer.fit, total", ray_t.ray_train_fit_seconds, model),
        ("  in workers: read + boost", ray_t.load_seconds + ray_t.boosting_seconds, None),
        (f"plain xgboost.train, {threads} threads", plain_total, plain),
    ]
    print(f"{'':36} {'seconds':>8} {'MAE':>10} {'R²':>7}")
    for name, seconds, m in rows:
        tail = f" {m['mae']:10,.0f} {m['r2']:7.4f}" if m else ""
        print(f"{name:36} {seconds:8.1f}{tail}")
    print(f"Ray fit / plain: {ray_t.ray_train_fit_seconds / plain_total:.2f}x")


if __name__ == "__main__":
    main()
