"""Start-up bench: a whole `stockpipe run` on the embedded sample (where the pipeline's own work is
a few seconds, so the start and the end show), cold and with `stockpipe up`'s services, each run
its own process with its phases (compute/timeline.py).

    python -m bench.startup [--runs 5] [--source data/sample] [--args ...]

Cold: nothing running before; the command starts Prefect's temporary server and a Ray of its own.
Warm: `stockpipe up` first (its own STOCKPIPE_HOME and PREFECT_HOME), `stockpipe down` after.
Every run rebuilds everything (`--force` on a fresh output). Prints each run's phases, then the
median of each phase and of the whole command.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.etl import print_phases, timed, warm_cluster
from compute.settings import SAMPLE_SOURCE


def runs(label: str, count: int, command: list[str], work: Path, env: dict[str, str] | None = None) -> None:
    every: list[dict[str, float]] = []
    for attempt in range(count):
        out = work / f"out-{label}-{attempt}"
        code, _, _, phases = timed([*command, "--out", str(out)], work, env, memory=False)
        if code != 0:
            raise SystemExit(f"stockpipe run ({label}) failed with {code}")
        print_phases(f"{label}, run {attempt + 1}", phases)
        every.append(dict(phases))
        shutil.rmtree(out, ignore_errors=True)
    names = [name for name in every[0] if all(name in phases for phases in every)]
    print(f"{label}: median of {count} runs, seconds from the command's start")
    for name in names:
        values = sorted(phases[name] for phases in every)
        print(f"  {name:12} {statistics.median(values):6.2f}  ({values[0]:.2f}-{values[-1]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", type=Path, default=SAMPLE_SOURCE)
    parser.add_argument("--skip", nargs="*", default=[], choices=["cold", "warm"])
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="more `stockpipe run` arguments")
    args = parser.parse_args()
    command = [sys.executable, "-m", "flows.cli", "run", "--force", "--source", str(args.source), *args.args]
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        if "cold" not in args.skip:
            runs("cold", args.runs, command, work)
        if "warm" not in args.skip:
            with warm_cluster(work) as env:
                runs("with stockpipe up", args.runs, command, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
