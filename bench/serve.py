"""Serving throughput and latency over loopback, for a model trained into --out.

    python -m bench.serve --out output [--seconds 10] [--concurrency 1 8 32]
    python -m bench.serve --out output --soak 60      # load test: errors and memory growth

Starts `stockpipe serve` (BentoML) and, as the reference, a bare FastAPI + uvicorn app serving the
same booster through the same code; for each: GET /predict at each concurrency for a bounded time
(requests/s, p50, p99, errors), then POST /predict_batch with 100,000-row batches (rows/s).
The load generator (aiohttp) runs on the same 2 cores as the server, so it takes a share of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from harness.procs import free_port, start_server, stop
from harness.proctree import tree_pss

BATCH_ROWS = 100_000


async def get_load(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    params = {"vol_moving_avg": "51318", "adj_close_rolling_med": "216"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(f"{url}/predict", params=params) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
        "requests": len(latencies),
    }


async def batch_load(url: str, seconds: float) -> float:
    rng = np.random.default_rng(0)
    body = json.dumps(
        {
            "vol_moving_avg": rng.lognormal(12, 2, BATCH_ROWS).tolist(),
            "adj_close_rolling_med": rng.lognormal(3, 1, BATCH_ROWS).tolist(),
        }
    ).encode()
    headers = {"content-type": "application/json"}
    rows = 0
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            async with session.post(f"{url}/predict_batch", data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/predict_batch answered {response.status}")
            rows += BATCH_ROWS
        return rows / (time.perf_counter() - started)


def measure(name: str, url: str, concurrencies: list[int], seconds: float) -> None:
    for concurrency in concurrencies:
        r = asyncio.run(get_load(url, concurrency, seconds))
        print(
            f"{name:10} GET /predict  c={concurrency:<3} {r['rps']:8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}/{r['requests']}",
            flush=True,
        )
    print(f"{name:10} POST /predict_batch  {asyncio.run(batch_load(url, seconds)):12,.0f} rows/s", flush=True)


def soak(url: str, process: subprocess.Popen, seconds: float, concurrency: int = 32) -> None:
    """A bounded load test: GET /predict for `seconds`, in 30-second windows, with the server's
    memory after each window (growth that continues window after window would be a leak)."""
    asyncio.run(get_load(url, concurrency, 5))  # warm up: first requests allocate caches
    mib = 2**20
    memory = [tree_pss(psutil.Process(process.pid))]
    totals = {"requests": 0, "errors": 0, "p99_ms": 0.0}
    windows = max(round(seconds / 30), 1)
    for i in range(windows):
        r = asyncio.run(get_load(url, concurrency, seconds / windows))
        memory.append(tree_pss(psutil.Process(process.pid)))
        totals["requests"] += r["requests"]
        totals["errors"] += r["errors"]
        totals["p99_ms"] = max(totals["p99_ms"], r["p99_ms"])
        print(
            f"  window {i + 1}/{windows}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms, {r['errors']} errors; server memory {memory[-1] / mib:,.1f} MiB",
            flush=True,
        )
    print(
        f"soak {seconds:.0f} s, c={concurrency}: {totals['requests']:,} requests, {totals['errors']} errors, "
        f"{totals['requests'] / seconds:,.0f} req/s, worst window p99 {totals['p99_ms']:.2f} ms; server "
        f"memory (PSS) {memory[0] / mib:,.1f} MiB after warm-up, "
        + " -> ".join(f"{m / mib:,.0f}" for m in memory[1:])
        + " MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="output", help="folder holding model/ (default ./output)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--soak",
        type=float,
        default=0,
        metavar="SECONDS",
        help="instead: load-test BentoML at c=32, with memory",
    )
    args = parser.parse_args()
    model = Path(args.out) / "model"
    if not (model / "model.bin").is_file():
        parser.error(f"no model in {model}: run `stockpipe run --out {args.out}` first")

    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.soak:
        port = free_port()
        command = [sys.executable, "-m", "flows.cli", "serve", "--out", args.out, "--port", str(port)]
        url, process = start_server(command, port, logs / "soak.log")
        try:
            soak(url, process, args.soak)
        finally:
            stop(process)
        return
    servers = {
        "bentoml": [sys.executable, "-m", "flows.cli", "serve", "--out", args.out, "--port"],
        "bare": [sys.executable, "-m", "bench.bare_app", "--model", str(model), "--port"],
    }
    for name, command in servers.items():
        port = free_port()
        url, process = start_server([*command, str(port)], port, logs / f"{name}.log")
        try:
            measure(name, url, args.concurrency, args.seconds)
        finally:
            stop(process)


if __name__ == "__main__":
    main()
