"""Where GET /predict's time goes: py-spy on `stockpipe serve` under wrk, with BentoML's tracing
spans on and off.

    python -m bench.serve_profile --out DIR [--seconds 20] [--results bench/results/serve-profile]

DIR holds a trained champion (`stockpipe run`). For each case it writes a flame graph (SVG) and
py-spy's collapsed stacks, and prints whose code the workers' request-path samples were running
(OpenTelemetry, prometheus_client, XGBoost's prediction in bento/onerow.py, ...). Needs py-spy
(`make bench-setup`), wrk, and permission to trace the server (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.serve import QUERY, wrk
from harness.procs import free_port, start_server, stop


def serve(out: str, log: Path, tracing: bool) -> tuple[str, subprocess.Popen]:
    """`stockpipe serve` on a free loopback port, BentoML's spans on or off; its URL once ready."""
    port = free_port()
    env = {**os.environ, "STOCKPIPE_SERVE_TRACING": str(tracing).lower()}
    command = [sys.executable, "-m", "flows.cli", "serve", "--out", out, "--port", str(port)]
    return start_server(command, port, log, env=env)


def package(frame: str) -> str | None:
    """Whose code a py-spy frame ("function (path:line)") is in; None for the standard library."""
    path = frame.rpartition(" (")[2].rpartition(":")[0]
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0]
    if path.startswith(f"{Path.cwd()}/"):
        return path.removeprefix(f"{Path.cwd()}/")
    return None


def self_time(collapsed: Path) -> tuple[int, Counter[str]]:
    """The workers' request-path samples, each counted for the package it was running: the
    innermost frame outside the standard library (so a socket write counts for its caller)."""
    total, owners = 0, Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "uvicorn/" not in stack:
            continue  # not a worker serving a request (start-up, the follow thread, the arbiter)
        frames = stack.split(";")
        owner = next((p for f in reversed(frames) if (p := package(f))), "python")
        total += int(count)
        owners[owner] += int(count)
    return total, owners


def record(pid: int, seconds: int, output: Path, fmt: str) -> subprocess.Popen:
    """py-spy on the server and every process it started (BentoML's workers)."""
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [py_spy or "py-spy", "record", "--pid", str(pid), "--subprocesses", "--rate", "200"]
    command += ["--duration", str(seconds), "--nonblocking", "--full-filenames"]
    command += ["--format", fmt, "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--results", type=Path, default=Path("bench/results/serve-profile"))
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    for tracing in (True, False):
        name = f"tracing-{'on' if tracing else 'off'}"
        base, server = serve(args.out, Path(tempfile.gettempdir()) / f"serve-profile-{name}.log", tracing)
        url = f"{base}{QUERY}"
        try:
            wrk(url, 8, 3)  # warm-up
            svg, raw = args.results / f"{name}.svg", args.results / f"{name}.txt"
            recorders = [record(server.pid, args.seconds, svg, "flamegraph"),
                         record(server.pid, args.seconds, raw, "raw")]  # fmt: skip
            time.sleep(1)
            load = wrk(url, 8, args.seconds)
            for recorder in recorders:
                _, error = recorder.communicate(timeout=args.seconds + 60)
                if recorder.returncode:
                    raise SystemExit(f"py-spy failed: {error.strip()}")
        finally:
            stop(server)
        total, owners = self_time(raw)
        print(f"{name}: {load['rps']:,.0f} req/s under py-spy; {total:,} request-path samples, ran:")
        for owner, samples in owners.most_common(10):
            print(f"  {samples / total:6.1%}  {owner}")


if __name__ == "__main__":
    main()
