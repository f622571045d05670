"""Serving throughput and latency over loopback, measured with wrk (C, one event-loop thread), for
a model trained into --out.

    python -m bench.serve --out output [--seconds 10] [--concurrency 1 8 32] [--repeat 1]
    python -m bench.serve --out output --soak 60      # load test: errors and memory growth

Starts `stockpipe serve` (BentoML) and, as the reference, a bare FastAPI + uvicorn app serving the
same booster through the same code (bench/bare_app.py), both with one worker per CPU. For each
concurrency, GET /predict on one server and then the other, for a bounded time: requests/s, p50,
p99, p99.9, errors, and BentoML's ratio to the bare app. Then POST /predict_batch with
100,000-row batches (rows/s). wrk runs on the same cores as the servers, as a client on the same
host would. wrk is Debian's package; the bench installs it (apt-get) where it can.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from harness.procs import free_port, start_server, stop
from harness.proctree import tree_pss

BATCH_ROWS = 100_000
QUERY = "/predict?vol_moving_avg=51318&adj_close_rolling_med=216"
# wrk's Lua hook: the numbers as one JSON line, latencies in microseconds.
REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %f, "p50": %f, "p99": %f, "p999": %f, ' ..
    '"max": %f, "non_2xx": %d, "socket_errors": %d}\\n', summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""
POST_BODY = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = file:read("*a")
file:close()
"""


def require_wrk() -> str:
    """wrk, installed from Debian's packages if it is missing and this is root."""
    if not shutil.which("wrk") and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench.serve needs wrk: apt-get install wrk")
    return found


def wrk(url: str, connections: int, seconds: float, script: str, env: dict[str, str] | None = None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script + REPORT)
        lua.flush()
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--timeout",
            "10s",
            "-s",
            lua.name,
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    stats["rps"] = stats["requests"] / stats["seconds"]
    return stats


def line(name: str, what: str, r: dict, reference: dict | None = None) -> str:
    ratio = f"  {r['rps'] / reference['rps']:.2f}x bare" if reference else ""
    return (
        f"{name:8} {what:22} {r['rps']:8,.0f} req/s  p50 {r['p50'] / 1000:6.2f} ms  "
        f"p99 {r['p99'] / 1000:7.2f} ms  p99.9 {r['p999'] / 1000:7.2f} ms  "
        f"non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}{ratio}"
    )


def batch_body(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    body = folder / "batch.json"
    m, a = rng.lognormal(12, 2, BATCH_ROWS).tolist(), rng.lognormal(3, 1, BATCH_ROWS).tolist()
    rows = [{"vol_moving_avg": x, "adj_close_rolling_med": y} for x, y in zip(m, a, strict=True)]
    body.write_text(json.dumps({"instances": rows}))
    return body


def soak(url: str, process: subprocess.Popen, seconds: float, connections: int = 32) -> None:
    """A bounded load test with wrk: GET /predict at c=32 for `seconds`, in 30-second windows,
    with the server's memory (PSS of its process tree) after warm-up and after each window."""
    wrk(url + QUERY, connections, 10, "")  # warm-up: the first requests allocate caches
    mib = 2**20
    memory = [tree_pss(psutil.Process(process.pid))]
    totals = {"requests": 0, "non_2xx": 0, "socket_errors": 0}
    worst = 0.0
    windows = max(round(seconds / 30), 1)
    for i in range(windows):
        r = wrk(url + QUERY, connections, seconds / windows, "")
        memory.append(tree_pss(psutil.Process(process.pid)))
        for key in totals:
            totals[key] += r[key]
        worst = max(worst, r["p99"])
        print(f"  window {i + 1}/{windows}: {line('bentoml', '', r)}; memory {memory[-1] / mib:,.1f} MiB")
    growth = 100 * (max(memory[1:]) - memory[0]) / memory[0]
    print(
        f"soak {seconds:.0f} s, c={connections}: {totals['requests']:,} requests, "
        f"{totals['non_2xx']} non-2xx, {totals['socket_errors']} socket errors, "
        f"worst window p99 {worst / 1000:.2f} ms; server memory (PSS) "
        f"{memory[0] / mib:,.1f} MiB after warm-up, then "
        + " -> ".join(f"{m / mib:,.1f}" for m in memory[1:])
        + f" MiB ({growth:+.1f}%)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="output", help="folder holding model/ (default ./output)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeat", type=int, default=1, help="measure every level this many times")
    parser.add_argument(
        "--soak", type=float, default=0, metavar="SECONDS", help="instead: a load test at c=32"
    )
    parser.add_argument("--access-log", action="store_true", help="serve with BentoML's access log on")
    args = parser.parse_args()
    require_wrk()
    model = Path(args.out) / "model"
    if not (model / "model.bin").is_file():
        parser.error(f"no model in {model}: run `stockpipe run --out {args.out}` first")

    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    commands = {
        "bentoml": [
            sys.executable,
            "-m",
            "flows.cli",
            "serve",
            "--out",
            args.out,
            *(["--access-log"] if args.access_log else []),
            "--port",
        ],
        "bare": [sys.executable, "-m", "bench.bare_app", "--model", str(model), "--port"],
    }
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    try:
        for name, command in commands.items():
            port = free_port()
            servers[name] = start_server([*command, str(port)], port, logs / f"{name}.log")
        if args.soak:
            url, process = servers["bentoml"]
            soak(url, process, args.soak)
            return
        time.sleep(2)
        for _ in range(args.repeat):
            for c in args.concurrency:
                results = {name: wrk(url + QUERY, c, args.seconds, "") for name, (url, _) in servers.items()}
                print(line("bare", f"GET /predict c={c}", results["bare"]), flush=True)
                print(line("bentoml", f"GET /predict c={c}", results["bentoml"], results["bare"]), flush=True)
        env = {"BENCH_BODY": str(batch_body(logs))}
        for name, (url, _) in servers.items():
            r = wrk(url + "/predict_batch", 1, args.seconds, POST_BODY, env)
            rows = r["rps"] * BATCH_ROWS
            print(f"{name:8} POST /predict_batch      {rows:12,.0f} rows/s  non-2xx {r['non_2xx']}")
    finally:
        for _, process in servers.values():
            stop(process)


if __name__ == "__main__":
    main()
