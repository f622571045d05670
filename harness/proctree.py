"""Run a command and report its wall time and the peak memory of its whole process tree.

Memory is the sum of PSS (proportional set size) over the command and every descendant (Ray's
raylet, GCS, dashboard and workers included), so shared pages such as Ray's object store are
counted once, not once per process. Sampled every --interval seconds.

    python -m harness.proctree -- stockpipe run --source data.zip --out /tmp/out
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import psutil


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


def marked(name: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment holds name=value: every process that a command given that
    variable started, wherever it has been reparented since."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def measure(
    command: list[str], interval: float = 0.25, env: dict[str, str] | None = None, memory: bool = True
) -> tuple[int, float, int]:
    """Return (exit code, wall seconds, peak tree PSS in bytes; 0 without `memory`). Sampling costs
    CPU (every process's memory map, four times a second), which slows a command on two cores:
    leave it out where only time is measured."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    root = psutil.Process(child.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, tree_pss(root))
            except psutil.NoSuchProcess:
                return
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    code = child.wait()
    wall = time.perf_counter() - started
    stop.set()
    if memory:
        sampler.join()
    return code, wall, peak


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command to run after --")
    code, wall, peak = measure(command, args.interval)
    print(f"exit {code}  wall {wall:.1f} s  peak tree PSS {peak / 2**20:,.0f} MiB", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
