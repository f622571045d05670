"""ETL benchmark: stockpipe's ingest + features through the real flow (Prefect + Ray), beside the
references (pandas the seed's way, one Polars lazy query, and the pyarrow parse floor), on the
same input in the same run, so the results are ratios, not absolute seconds on a noisy machine.

    python -m bench.etl --source stock-market-dataset-2021.zip [--scale 3]

The references need the bench extra (Polars, aiohttp): `make bench-setup`.

A zip is unpacked once (safely: only stocks/, etfs/ and the metadata) into bench/.cache/;
`--scale N` builds, once, a dataset N times larger by linking every file under new symbol names
(AAPL -> AAPL.R1, AAPL.R2, ...). Every run is its own process; memory is the peak PSS of its whole
process tree (for stockpipe: driver, Prefect's server, Ray's daemons and workers).

stockpipe runs cold first (`stockpipe run` starts everything itself), then twice warm: with
`stockpipe up`'s Prefect server and Ray cluster (`--skip warm` leaves that out). `--train` then
trains on that output (`stockpipe train`, cold, measured the same way): its time, Ray Train's
share of it, and its peak memory.

Each stockpipe command's phases come from the same run (compute/timeline.py): when its own
imports were done, Prefect's temporary server answered, Ray was up, the flow began, the first Ray
task came back, the flow ended, and everything was stopped, in seconds from the command's start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compute.schema import META_FILE, META_SYMBOL_COLUMN
from compute.settings import environment_variables
from compute.stages.ingest.sources import list_files, open_source
from harness.proctree import measure

CACHE = Path(__file__).resolve().parent / ".cache"


def unpacked(source: Path) -> Path:
    """A Kaggle-layout folder for `source` (itself, or the zip unpacked once into the cache)."""
    if source.is_dir():
        return source
    target = CACHE / source.stem
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        listing = list_files(open_source(source), 1 << 30)  # the same refusal of unsafe paths
        members = [f.member for f in listing.files] + ([listing.meta_member] if listing.meta_member else [])
        with zipfile.ZipFile(source) as archive:
            for member in members:
                path = target / "/".join(Path(member).parts[-2:]) if "/" in member else target / member
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(member))
        (target / ".complete").write_text("")
    return target


def scaled(folder: Path, scale: int) -> Path:
    if scale == 1:
        return folder
    target = CACHE / f"{folder.name}-x{scale}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for kind in ("stocks", "etfs"):
        (target / kind).mkdir(parents=True)
        for path in sorted((folder / kind).glob("*.csv")):
            os.link(path, target / kind / path.name)
            for k in range(1, scale):
                os.link(path, target / kind / f"{path.stem}.R{k}.csv")
    lines = (folder / META_FILE).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    column = header.split(",").index(META_SYMBOL_COLUMN)
    out = [header, *rows]
    for k in range(1, scale):
        for row in rows:
            cells = row.split(",")
            cells[column] = f"{cells[column]}.R{k}"
            out.append(",".join(cells))
    (target / META_FILE).write_text("\n".join(out) + "\n")
    (target / ".complete").write_text("")
    return target


@contextmanager
def warm_cluster(work: Path, settle: float = 30.0) -> Iterator[dict[str, str]]:
    """`stockpipe up`'s Prefect server and Ray cluster, private to the bench (its own STOCKPIPE_HOME
    and PREFECT_HOME); yields the environment in which stockpipe commands use them, `settle`
    seconds after they answer: in its first half minute the Prefect server still starts its
    services, and the first runs took 2-3 s longer on two cores. `stockpipe down` stops them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "RAY_ADDRESS"))}
    env.update(STOCKPIPE_HOME=str(work / "stockpipe-home"), PREFECT_HOME=str(work / "prefect-home"))
    command = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*command, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        yield env
    finally:
        subprocess.run([*command, "down"], env=env, check=True, stdout=subprocess.DEVNULL)


def timed(
    command: list[str], work: Path, env: dict[str, str] | None = None, memory: bool = True
) -> tuple[int, float, int, list[tuple[str, float]]]:
    """measure(command), and its phases: (phase, seconds from the start) in the order they ended."""
    timeline = work / f"timeline-{secrets.token_hex(4)}.jsonl"
    env = {**(env if env is not None else os.environ), environment_variables("timeline")[0]: str(timeline)}
    started = time.time()
    code, wall, peak = measure(command, env=env, memory=memory)
    marks = [json.loads(line) for line in timeline.read_text().splitlines()] if timeline.exists() else []
    return code, wall, peak, [(m["phase"], m["at"] - started) for m in marks] + [("exit", wall)]


def print_phases(title: str, phases: list[tuple[str, float]]) -> None:
    print(f"{title}: phases, seconds from the command's start (and since the phase before)")
    before = 0.0
    for phase, at in phases:
        print(f"  {phase:12} {at:6.2f}  (+{at - before:.2f})")
        before = at


def csv_stats(folder: Path) -> tuple[int, int]:
    files = [*folder.glob("stocks/*.csv"), *folder.glob("etfs/*.csv")]
    return len(files), sum(f.stat().st_size for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, required=True, help="Kaggle-layout folder or zip")
    parser.add_argument("--scale", type=int, default=1, help="replicate the files N times (default 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["warm", "pandas", "polars", "floor"])
    parser.add_argument("--train", action="store_true", help="also train on the cold run's stage 2")
    args = parser.parse_args()
    folder = scaled(unpacked(args.source.resolve()), args.scale)
    files, csv_bytes = csv_stats(folder)
    print(f"input: {folder} ({files:,} files, {csv_bytes / 1e6:,.0f} MB of CSV)", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-etl-"))
    env_python = sys.executable
    rows: list[tuple[str, float, int, str]] = []
    try:
        out = work / "stockpipe"
        command = [env_python, "-m", "flows.cli", "run", "--stop-after", "features"]
        code, wall, peak, cold_phases = timed([*command, "--source", str(folder), "--out", str(out)], work)
        if code != 0:
            raise SystemExit(f"stockpipe run failed with {code}")
        ingest = json.loads((out / "reports" / "ingest.json").read_text())
        features = json.loads((out / "reports" / "features.json").read_text())
        kept = ingest["rows"]["kept"]
        compute_s = ingest["seconds"] + features["seconds"]
        rows.append(("stockpipe: ingest stage", ingest["seconds"], 0, ""))
        rows.append(("stockpipe: features stage", features["seconds"], 0, ""))
        rows.append(("stockpipe: compute (ingest + features)", compute_s, 0, ""))
        rows.append(("stockpipe: start-up (Prefect, Ray) + rest", wall - compute_s, 0, ""))
        rows.append(("stockpipe run, cold, whole command", wall, peak, ""))
        if args.train:
            training = train(env_python, out)
        warm_phases: list[tuple[str, float]] = []
        if "warm" not in args.skip:
            with warm_cluster(work) as env:
                # Twice: on a cluster nothing ran on yet, then after one run (each run is a new
                # Ray job, with new worker processes, so the second is not warmer by much).
                for attempt in ("first", "second"):
                    code, wall, _, warm_phases = timed(
                        [*command, "--force", "--source", str(folder), "--out", str(out)], work, env
                    )
                    if code != 0:
                        raise SystemExit(f"stockpipe run (warm) failed with {code}")
                    warm = sum(json.loads((out / "reports" / f"{r}.json").read_text())["seconds"]
                               for r in ("ingest", "features"))  # fmt: skip
                    rows.append((f"warm, {attempt} run: compute", warm, 0, ""))
                    rows.append((f"warm, {attempt} run: whole command", wall, 0, ""))
        for name in ("pandas", "polars", "floor"):
            if name in args.skip:
                continue
            ref = [
                env_python,
                "-m",
                "bench.references",
                name,
                "--source",
                str(folder),
                "--out",
                str(work / name),
            ]
            code, wall_ref, peak_ref = measure(ref)
            if code != 0:  # a ratio against a reference that did not run would be a lie
                raise SystemExit(
                    f"reference {name} failed with exit {code} (its output is above); the references "
                    "need the bench extra: pip install -c constraints.txt -e '.[cpu,dev,bench]'"
                )
            rows.append((f"reference: {name}", wall_ref, peak_ref, ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_phases("stockpipe run, cold", cold_phases)
    if warm_phases:
        print_phases("stockpipe run, warm (second run)", warm_phases)
    by_name = {name: seconds for name, seconds, _, _ in rows}
    cold = by_name["stockpipe run, cold, whole command"]
    print(f"{'':42} {'seconds':>8} {'rows/s':>12} {'MB/s':>7} {'peak MiB':>9}")
    for name, seconds, peak, note in rows:
        peak_text = f"{peak / 2**20:9,.0f}" if peak else " " * 9
        mb_s = csv_bytes / 1e6 / seconds
        print(f"{name:42} {seconds:8.1f} {kept / seconds:12,.0f} {mb_s:7.1f} {peak_text} {note}")
    print(f"rows kept: {kept:,}")
    if "reference: floor" in by_name:
        print(f"compute / parse floor: {compute_s / by_name['reference: floor']:.2f}x")
    if "reference: polars" in by_name:
        print(f"cold run / polars: {cold / by_name['reference: polars']:.2f}x")
        print(f"compute / polars (a warm run's share): {compute_s / by_name['reference: polars']:.2f}x")
        if "warm, second run: compute" in by_name:
            warm_s = by_name["warm, second run: compute"]
            print(f"warm run (second) compute / polars: {warm_s / by_name['reference: polars']:.2f}x")
    if "reference: pandas" in by_name:
        print(f"cold run / pandas: {cold / by_name['reference: pandas']:.2f}x")
    if args.train:
        for name, value in training.items():
            print(f"train: {name}: {value}")


def train(python: str, out: Path) -> dict[str, str]:
    """`stockpipe train` on `out`'s stage 2, as a cold command of its own."""
    code, wall, peak = measure([python, "-m", "flows.cli", "train", "--out", str(out)])
    if code != 0:
        raise SystemExit(f"stockpipe train failed with {code}")
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    timing, rows = metrics["timing"], metrics["rows"]["used"]
    overhead = timing["stage_seconds"] - timing["load_seconds"] - timing["boosting_seconds"]
    return {
        "rows (train + test)": f"{rows:,}",
        "whole command": f"{wall:.1f} s",
        "stage": f"{timing['stage_seconds']:.1f} s",
        "fit": f"{timing['fit_seconds']:.1f} s ({metrics['engine']['layout']})",
        "of which start / load / boost / stop": "{start_seconds:.1f} / {load_seconds:.1f} / "
        "{boosting_seconds:.1f} / {stop_seconds:.1f} s".format(**timing),
        "overhead (stage - load - boost)": f"{overhead:.1f} s",
        "peak memory (process tree, PSS)": f"{peak / 2**20:,.0f} MiB",
    }


if __name__ == "__main__":
    main()
