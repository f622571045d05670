"""The forecast stage beside a plain script on the same stage 1 and the same walk-forward folds, in
one invocation: the stage's phases (the inputs' fan-out, read, walk-forward, final fit, forecast),
its own time and the whole `stockpipe forecast --force` command's, beside the plain script's
(bench/plain_forecast.py, its own process), alternating, with the ratio of each pair; and the
skill of both on the folds, against the three naive forecasts.

    python -m bench.forecast --source stock-market-dataset-2021.zip        # the 2021 vintage
    python -m bench.forecast --out DIR                                      # DIR/stage1 as it is
    python -m bench.forecast --out DIR --as-issued                          # and the issue's script

With --source, ingest runs first into --out (or a temporary output). The stage runs forced, so
that every run fits; each command starts Prefect's temporary server and Ray, as a user's does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STOCKPIPE = [sys.executable, "-m", "flows.cli"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def skill_line(name: str, model: dict[str, Any], naive: dict[str, dict[str, Any]]) -> str:
    best = min(naive, key=lambda n: naive[n]["mae"])
    best_log = min(naive.values(), key=lambda s: s["mean_abs_log_error"])["mean_abs_log_error"]
    below = 100 * (1 - model["mae"] / naive[best]["mae"])
    log = model["mean_abs_log_error"]
    return (
        f"{name:22} MAE {model['mae']:>11,.0f}  {below:+5.1f}% vs {best:6}  "
        f"|log| {log:.4f} {100 * (1 - log / best_log):+5.1f}%  coverage {model.get('coverage') or 0:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", help="ingest this first")
    parser.add_argument(
        "--out", help="the output whose stage1/ the forecast reads (default: a temporary one)"
    )
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--as-issued", action="store_true", help="also the issue's script, once (slow)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-forecast-"))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    if args.source:
        seconds, _ = timed([*STOCKPIPE, "ingest", "--source", args.source, "--out", str(out)], env)
        print(f"ingest: {seconds:.1f} s into {out}")
    plain = [sys.executable, "-m", "bench.plain_forecast", str(out / "stage1")]
    stage_runs, plain_runs = [], []
    for run in range(args.runs):
        command_seconds, _ = timed([*STOCKPIPE, "forecast", "--force", "--out", str(out)], env)
        result = json.loads((out / "reports" / "forecast.json").read_text())
        stage_runs.append({"command": command_seconds, "stage": result["seconds"], **result["phases"]})
        plain_seconds, printed = timed(plain, env)
        plain_result = json.loads(printed)
        plain_runs.append({"whole": plain_seconds, **plain_result["phases"]})
        print(f"run {run + 1}: stage {result['seconds']:.1f} s (command {command_seconds:.1f} s), "
              f"plain script {plain_seconds:.1f} s: {result['seconds'] / plain_seconds:.2f}x")  # fmt: skip

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs)

    print("\nphases (median s)     stage    plain")
    pairs = [("inputs", "features"), ("read", None), ("walk-forward", "walk-forward"),
             ("final fit", "final fit"), ("forecast", None), ("stage", "whole")]  # fmt: skip
    for stage_key, plain_key in pairs:
        plain_value = f"{median(plain_runs, plain_key):8.1f}" if plain_key else "       -"
        print(f"  {stage_key:18} {median(stage_runs, stage_key):8.1f} {plain_value}")
    print(f"  {'command':18} {median(stage_runs, 'command'):8.1f}")
    ratio = median(stage_runs, "stage") / median(plain_runs, "whole")
    print(f"stage / plain script: {ratio:.2f}x (median of {args.runs})")
    walk = result["walk_forward"]
    print("\nskill on the walk-forward folds (pooled; against the best naive forecast)")
    print(skill_line("forecast stage", walk["model"], walk["naive"]))
    print(skill_line("plain script", plain_result["model"], plain_result["naive"]))
    for f in walk["folds"]:
        best = min(n["mae"] for n in f["naive"].values())
        print(f"  fold {f['first']}..{f['last']}: MAE {100 * (1 - f['model']['mae'] / best):+.1f}% below the "
              f"best naive, coverage {f['model']['coverage']:.3f}")  # fmt: skip
    if args.as_issued:
        seconds, printed = timed([*plain, "--as-issued"], env)
        issued = json.loads(printed)
        print(skill_line(f"as issued ({seconds:.0f} s)", issued["model"], issued["naive"]))
        print(
            "per fold (as issued): "
            + "; ".join(f"{f['first']} {f['seconds']:.0f} s" for f in issued["folds"])
        )
    print(json.dumps({"stage": stage_runs, "plain": plain_runs}))


if __name__ == "__main__":
    main()
