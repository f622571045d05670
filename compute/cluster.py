"""Connecting to Ray and fanning work out over it, with progress reported as tasks finish."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pyarrow as pa
import ray

from compute.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Quiet Ray's own start-up chatter and telemetry (there is no network here to send it to).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


Progress = Callable[[str], None]  # where a stage reports what it is doing, one line at a time

_dashboard_url: str | None = None


def dashboard_url() -> str | None:
    return _dashboard_url


def connect(settings: Settings, progress: Progress = log.info) -> float:
    """Join RAY_ADDRESS's cluster, or start a local one; return the seconds that took (0 when this
    process is connected already).

    Stages call this only once they have work to do, so a re-run with nothing to rebuild never
    pays Ray's start-up (8-15 s here). Call it from a thread that lives as long as the process
    (the main one): Ray's daemons get a parent-death signal tied to the thread that starts them."""
    global _dashboard_url
    started = time.perf_counter()
    if not ray.is_initialized():
        if settings.ray_address:
            _check_reachable(settings.ray_address)
            context = ray.init(address=settings.ray_address, logging_level=logging.WARNING)
        else:
            # address="local" never attaches to a cluster that happens to be running on this host.
            context = ray.init(
                address="local",
                include_dashboard=True,
                dashboard_host=settings.dashboard_host,
                dashboard_port=settings.dashboard_port,
                logging_level=logging.WARNING,
            )
        url = context.dashboard_url
        _dashboard_url = url if not url or url.startswith("http") else f"http://{url}"
    seconds = time.perf_counter() - started
    if _dashboard_url:  # every stage says where to watch it
        progress(f"Ray dashboard: {_dashboard_url} (token: `ray get-auth-token`)")
    return seconds


def _check_reachable(address: str) -> None:
    """Refuse a HOST:PORT that nothing listens on: ray.init would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray://..., or a form Ray itself will judge
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc})") from None


def cluster_cpus() -> int:
    return max(int(ray.cluster_resources().get("CPU", 1)), 1)


@dataclass
class FanOut(Generic[T]):
    results: list[T]  # in the order of the calls
    nodes: dict[str, int]  # Ray node id -> tasks it ran


def _on_node(fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[str, T]:
    try:
        return ray.get_runtime_context().get_node_id(), fn(*args)
    finally:
        # Arrow's allocator keeps freed memory for reuse; a worker between tasks need not.
        pa.default_memory_pool().release_unused()


def fan_out(
    fn: Callable[..., T],
    calls: Sequence[tuple[Any, ...]],
    *,
    label: str,
    progress: Progress = log.info,
) -> FanOut[T]:
    """Run fn(*args) for every args tuple as Ray tasks, reporting progress as they finish.

    A task whose worker dies is retried by Ray (max_retries); an exception raised by fn is a bug
    or bad input that fn did not handle, and is re-raised here.
    """
    remote = ray.remote(_on_node).options(max_retries=3, name=label)
    started = time.perf_counter()
    index = {remote.remote(fn, args): i for i, args in enumerate(calls)}
    results: list[Any] = [None] * len(calls)
    nodes: Counter[str] = Counter()
    pending = list(index)
    done_count, next_report = 0, 0.0
    while pending:
        done, pending = ray.wait(pending, num_returns=min(len(pending), 4), timeout=5.0)
        for ref in done:
            node, results[index[ref]] = ray.get(ref)
            nodes[node] += 1
        done_count += len(done)
        if done_count / len(calls) >= next_report or not pending:
            elapsed = time.perf_counter() - started
            progress(
                f"{label}: {done_count}/{len(calls)} tasks done in {elapsed:.1f}s on {len(nodes)} node(s)"
            )
            next_report += 0.1
    return FanOut(results=results, nodes=dict(nodes))
