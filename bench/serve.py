"""Serving throughput and latency over loopback, measured with wrk (C, one event-loop thread), for
the champion in --out, beside a bare app, in one invocation.

    python -m bench.serve --out output [--seconds 8] [--rounds 3] [--batch-rows 10000]
    python -m bench.serve --out output --soak 60      # instead: a load test (errors, memory growth)

The servers, all with one worker process per CPU, started side by side:
  bare        bench/bare_app.py: the same booster behind a bare FastAPI app on uvicorn
  stockpipe   `stockpipe serve --out OUT`, as shipped: its metrics on, following the champion
  no-metrics  the same service without its own Prometheus series (`--arg metrics=false`)
  no-follow   the same service, not following the champion
  bento       `bentoml serve` of the Bento built for the champion
For each round, GET /predict at c=8 on each server in turn (the order rotating from round to
round), then the ratios of that round: stockpipe and bento over bare, in throughput and p99; the
cost of the metrics and of the follow, each against the service without it. Then GET /forecast
beside GET /predict on stockpipe and the Bento, alternating, and their ratio. Then POST
/predict_batch with --batch-rows rows, as instances ({"instances": [{...}, ...]}) and as one
tensor ({"inputs": [[vol_moving_avg, adj_close_rolling_med], ...]}), in rows/s. wrk shares the
cores with the servers, as a client on the same host would. wrk is Debian's package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

from harness.procs import free_port, start_server, stop
from harness.proctree import tree_pss

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


def wrk(url: str, connections: int, seconds: float, script: str = "", body: Path | None = None) -> dict:
    env = {**os.environ, "BENCH_BODY": str(body)} if body else None
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


def line(name: str, what: str, r: dict) -> str:
    return (
        f"{name:10} {what:20} {r['rps']:8,.0f} req/s  p50 {r['p50'] / 1000:6.2f} ms  "
        f"p99 {r['p99'] / 1000:7.2f} ms  p99.9 {r['p999'] / 1000:7.2f} ms  "
        f"non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}"
    )


def bodies(folder: Path, rows: int) -> dict[str, Path]:
    """The same rows as instances and as columns."""
    rng = np.random.default_rng(0)
    m, a = rng.lognormal(12, 2, rows).tolist(), rng.lognormal(3, 1, rows).tolist()
    written = {}
    for kind, body in {
        "instances": {
            "instances": [
                {"vol_moving_avg": x, "adj_close_rolling_med": y} for x, y in zip(m, a, strict=True)
            ]
        },
        "inputs": {"inputs": [[x, y] for x, y in zip(m, a, strict=True)]},
    }.items():
        written[kind] = folder / f"{kind}.json"
        written[kind].write_text(json.dumps(body))
    return written


def servers_to_start(out: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each server's command and environment."""
    from bento import package
    from compute.layout import Layout

    model = Layout(out).model
    tag = package.register_model(model)
    bento = package.build_bento(tag)
    bentoml = [sys.executable, "-m", "bentoml", "serve"]
    service = [*bentoml, "bento.service:VolumeService", "--arg", f"model_tag={tag}"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("STOCKPIPE_SERVE")}
    follow = {**base, "STOCKPIPE_SERVE_FOLLOW": str(Path(out).resolve())}
    return {
        "bare": ([sys.executable, "-m", "bench.bare_app", "--model", model, "--port"], base),
        "stockpipe": ([sys.executable, "-m", "flows.cli", "serve", "--out", out, "--port"], base),
        "no-metrics": ([*service, "--arg", "metrics=false", "--port"], follow),
        "no-follow": ([*service, "--port"], base),
        "bento": ([*bentoml, bento, "--port"], base),
    }


def soak(url: str, process: subprocess.Popen, seconds: float, connections: int = 32) -> None:
    """A bounded load test with wrk: GET /predict at c=32 for `seconds`, in 30-second windows,
    with the server's memory (PSS of its process tree) after warm-up and after each window."""
    wrk(url + QUERY, connections, 10)  # warm-up: the first requests allocate caches
    mib = 2**20
    memory = [tree_pss(psutil.Process(process.pid))]
    totals = {"requests": 0, "non_2xx": 0, "socket_errors": 0}
    worst = 0.0
    windows = max(round(seconds / 30), 1)
    for i in range(windows):
        r = wrk(url + QUERY, connections, seconds / windows)
        memory.append(tree_pss(psutil.Process(process.pid)))
        for key in totals:
            totals[key] += r[key]
        worst = max(worst, r["p99"])
        print(f"  window {i + 1}/{windows}: {line('stockpipe', '', r)}; memory {memory[-1] / mib:,.1f} MiB")
    growth = 100 * (max(memory[1:]) - memory[0]) / memory[0]
    after = " -> ".join(f"{m / mib:,.1f}" for m in memory[1:])
    print(f"soak {seconds:.0f} s, c={connections}: {totals['requests']:,} requests, {totals['non_2xx']} "
          f"non-2xx, {totals['socket_errors']} socket errors, worst window p99 {worst / 1000:.2f} ms; "
          f"server memory (PSS) {memory[0] / mib:,.1f} MiB after warm-up, then {after} MiB ({growth:+.1f}%)",
          flush=True)  # fmt: skip


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default="output", help="the output whose champion to serve (default ./output)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--only", nargs="+", help="these servers alone (of bare, stockpipe, no-metrics, ...)")
    parser.add_argument(
        "--soak", type=float, default=0, metavar="SECONDS", help="instead: a load test at c=32"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        parser.error("bench.serve needs wrk: apt-get install wrk")
    if not (Path(args.out) / "model" / "model.bin").exists() and "://" not in args.out:
        parser.error(f"no champion in {args.out}/model: run `stockpipe run --out {args.out}` first")

    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    wanted = servers_to_start(args.out)
    if args.soak:
        wanted = {"stockpipe": wanted["stockpipe"]}
    elif args.only:
        wanted = {k: v for k, v in wanted.items() if k in args.only}
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    measured: list[dict] = []
    try:
        for name, (command, env) in wanted.items():
            port = free_port()
            servers[name] = start_server([*command, str(port)], port, logs / f"{name}.log", env=env)
        if args.soak:
            url, process = servers["stockpipe"]
            soak(url, process, args.soak)
            return
        names = list(servers)
        for name in names:  # warm-up: each worker's first requests
            wrk(servers[name][0] + QUERY, args.concurrency, 2)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            got = {}
            for name in order:
                got[name] = wrk(servers[name][0] + QUERY, args.concurrency, args.seconds)
                print(f"[{r + 1}] " + line(name, f"GET /predict c={args.concurrency}", got[name]), flush=True)
            measured.append({"round": r + 1, **got})
        report(measured, names)
        forecast_against_predict(servers, args, measured)
        files = bodies(logs, args.batch_rows)
        for name in [n for n in ("bare", "stockpipe") if n in servers]:
            for kind, body in files.items():
                result = wrk(servers[name][0] + "/predict_batch", 2, args.seconds, POST_BODY, body)
                print(f"{name:10} POST /predict_batch {args.batch_rows:,} rows as {kind:9} "
                      f"{result['rps'] * args.batch_rows:12,.0f} rows/s  p99 {result['p99'] / 1000:7.2f} ms  "
                      f"non-2xx {result['non_2xx']}", flush=True)  # fmt: skip
                measured.append({"batch": kind, "server": name, "rows": args.batch_rows, **result})
    finally:
        for _, process in servers.values():
            stop(process)
    if args.json:
        args.json.write_text(json.dumps(measured, indent=2) + "\n")


def forecast_against_predict(servers: dict, args: argparse.Namespace, measured: list[dict]) -> None:
    """GET /forecast beside GET /predict on the same server, alternating, at the same concurrency:
    the forecast is a lookup in a precomputed table."""
    import pyarrow.parquet as pq

    table = Path(args.out) / "forecast" / "forecast.parquet"
    if not table.exists():
        print("no forecast in --out: GET /forecast not measured")
        return
    query = f"/forecast?symbol={pq.read_table(table, columns=['symbol']).column('symbol')[0]}"
    for name in [n for n in ("stockpipe", "bento") if n in servers]:
        url, ratios = servers[name][0], []
        wrk(url + query, args.concurrency, 2)
        for r in range(args.rounds):
            predict = wrk(url + QUERY, args.concurrency, args.seconds)
            forecast = wrk(url + query, args.concurrency, args.seconds)
            ratios.append(forecast["rps"] / predict["rps"])
            print(f"[{r + 1}] " + line(name, f"GET {query} c={args.concurrency}", forecast), flush=True)
            measured.append({"server": name, "round": r + 1, "predict": predict, "forecast": forecast})
        print(f"{name}: GET /forecast / GET /predict throughput {span(ratios)}x", flush=True)


def report(rounds: list[dict], names: list[str]) -> None:
    """Medians and ranges of each round's ratios."""

    def ratios(a: str, b: str, key: str) -> list[float]:
        return [r[a][key] / r[b][key] for r in rounds if a in r and b in r]

    for name in names:
        print(f"{name:10} {span([r[name]['rps'] for r in rounds], '{:,.0f}')} req/s, "
              f"p99 {span([r[name]['p99'] / 1000 for r in rounds])} ms")  # fmt: skip
    for name in ("stockpipe", "bento"):
        if name in names and "bare" in names:
            print(f"{name} / bare: throughput {span(ratios(name, 'bare', 'rps'))}x, "
                  f"p99 {span(ratios(name, 'bare', 'p99'))}x")  # fmt: skip
    for without, what in (("no-metrics", "the service's metrics"), ("no-follow", "following the champion")):
        if without in names and "stockpipe" in names:
            cost = [100 * (1 - x) for x in ratios("stockpipe", without, "rps")]
            print(f"cost of {what}: {span(cost, '{:+.1f}')}% of throughput (stockpipe against {without})")


if __name__ == "__main__":
    main()
