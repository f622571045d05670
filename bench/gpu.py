"""The CUDA training path, checked and timed without Prefect: ingest and features (the stage
protocol on a local Ray), then the train stage on each device beside a plain XGBoost script on the
same rows (bench/train.py), printing for each run the device XGBoost really used (read back from
the trained booster's config: XGBoost without a usable GPU warns and trains on the CPU), where its
input was (the GPU's memory or the host's), the layout and why, every phase and the holdout MAE;
then the CPU's stage time over the GPU's.

    python -m bench.gpu                                    # the embedded sample, cuda then cpu
    python -m bench.gpu --scale 250 --folds 0,4            # about the full Kaggle dataset's rows
    python -m bench.gpu --devices cpu                      # the CPU half alone (the test suite runs it)

It exits 1 when a device was refused or was not the one XGBoost used (a silent fall-back to the
CPU fails it), 2 on bad arguments. It needs compute/'s packages (ray, xgboost, pyarrow, pandas,
pydantic-settings), and CuPy for the data on the GPU, not Prefect, BentoML or the CLI: what an
offline GPU host can be given (bench/gpu-wheels.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import train
from compute.settings import SAMPLE_SOURCE

DEVICES = ("cuda", "cpu")


def used_as_asked(result: dict[str, Any]) -> bool:
    return str(result.get("xgboost_device") or "").split(":")[0] == result["asked"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default=",".join(DEVICES), help="comma-separated, of cuda and cpu")
    parser.add_argument("--source", default=str(SAMPLE_SOURCE), help="a Kaggle-layout folder or zip")
    parser.add_argument("--scale", default="1", help="replicate the source's files N times")
    parser.add_argument(
        "--out", help="keep stage 1 and 2 (and the models) here instead of a temporary folder"
    )
    parser.add_argument("--folds", default="0", help="comma-separated backtest fold counts")
    parser.add_argument("--layouts", default="auto", help="comma-separated, of auto, single, distributed")
    parser.add_argument("--repeat", default="1")
    parser.add_argument("--rounds", help="boosting rounds (default: the setting's)")
    parser.add_argument(
        "--in-process", action="store_true", help="train in this process (on the caller's Ray)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if not devices or set(devices) - set(DEVICES):
        parser.error(f"--devices takes {' and '.join(DEVICES)}, not {args.devices!r}")

    forward = ["--source", args.source, "--scale", args.scale, "--devices", ",".join(devices),
               "--folds", args.folds, "--layouts", args.layouts, "--repeat", args.repeat]  # fmt: skip
    forward += ["--out", args.out] if args.out else []
    forward += ["--rounds", args.rounds] if args.rounds else []
    forward += ["--in-process"] if args.in_process else []
    forward += ["--json", str(args.json)] if args.json else []
    runs = [r for r in train.main(forward) if r["what"].startswith("stage")]

    failed = not runs
    for r in runs:
        if "refused" in r:
            failed = True
            continue
        ok = used_as_asked(r)
        failed |= not ok
        how = "as asked" if ok else "NOT as asked"
        print(f"{r['asked']:>4}: XGBoost used {r['xgboost_device']} ({how}), data on the {r['data_on']};"
              f" {r['workers']} worker(s), {r['layout']}; {r['rounds']} rounds on "
              f"{r['train_rows']:,} rows; holdout MAE {r['mae']:,.0f} (baseline {r['baseline_mae']:,.0f}), "
              f"R² {r['r2']:.4f}")  # fmt: skip
    if failed:
        print("gpu check: FAILED: XGBoost did not train on every device asked for", file=sys.stderr)
        return 1
    print("gpu check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
