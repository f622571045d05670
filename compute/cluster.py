"""Connecting to Ray and fanning work out over it, with progress reported as tasks finish."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import pyarrow as pa
import ray
from ray._raylet import Config as RayConfig
from ray.core.generated.gcs_service_pb2 import GetClusterIdRequest
from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceStub

from compute import stop, timeline
from compute.settings import Settings, set_in_environment

log = logging.getLogger(__name__)
T = TypeVar("T")

# Quiet Ray's own start-up chatter and telemetry (there is no network here to send it to).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class Progress:
    """Where a stage reports what it does: a line at a time (`progress("...")`), and how many of
    a fan-out's Ray tasks have finished (`progress.tasks(label, done, total)`), which a terminal
    progress bar or a Prefect progress artifact shows."""

    def __init__(
        self,
        say: Callable[[str], None] = log.info,
        tasks: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.say = say
        self._tasks = tasks

    def __call__(self, line: str) -> None:
        self.say(line)

    def tasks(self, label: str, done: int, total: int) -> None:
        if self._tasks:
            self._tasks(label, done, total)

    @classmethod
    def of(cls, progress: Progress | Callable[[str], None] | None) -> Progress:
        if isinstance(progress, Progress):
            return progress
        return cls(progress or log.info)


_dashboard_url: str | None = None
_logs: str | None = None  # a local cluster's log folder
_port_note = ""  # why the dashboard is not on the configured port


def dashboard_url() -> str | None:
    return _dashboard_url


def connect(settings: Settings, progress: Callable[[str], None] = log.info) -> float:
    """Join RAY_ADDRESS's cluster, or start a local one; return the seconds that took (0 when this
    process is connected already).

    Stages call this only once they have work to do, so a re-run with nothing to rebuild never
    pays Ray's start-up (8-15 s here). Call it from a thread that lives as long as the process
    (the main one): Ray's daemons get a parent-death signal tied to the thread that starts them."""
    global _dashboard_url, _logs, _port_note
    started = time.perf_counter()
    if not ray.is_initialized():
        # Ray's own logs (its workers' and actors' output) stay in its session's log folder, so a
        # successful run prints only what it has to say; our tasks' errors still reach the driver.
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        # ray.init replaces the SIGTERM handler with one that calls sys.exit: the run's own (a
        # stop in order, flows/stopping.py) is put back afterwards.
        term = (
            signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread()
            else None
        )
        if settings.ray_address:
            _check_reachable(settings.ray_address)
            _check_token(settings.ray_address, _use_token())
            # The run's settings reach its tasks there too (a local cluster's workers inherit them).
            variables = set_in_environment()
            runtime_env = {"env_vars": variables} if variables else None
            context = ray.init(address=settings.ray_address, runtime_env=runtime_env, **quiet)
            _start_workers()
        else:
            _use_token(default=True)
            lean_processes()
            port = _dashboard_port(settings)
            _state_api_at(settings.dashboard_host, port)
            # address="local" never attaches to a cluster that happens to be running on this host.
            context = ray.init(
                address="local",
                include_dashboard=True,
                dashboard_host=settings.dashboard_host,
                dashboard_port=port,
                **quiet,
            )
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        if not settings.ray_address:
            _logs = os.path.join(context.address_info.get("session_dir") or "", "logs")
            if port != settings.dashboard_port:
                _port_note = f" (port {settings.dashboard_port} is taken, by another run's Ray?)"
        url = context.dashboard_url
        _dashboard_url = url if not url or url.startswith("http") else f"http://{url}"
    seconds = time.perf_counter() - started
    if _dashboard_url:  # every stage says where to watch it
        logs = f"; Ray's own logs: {_logs}" if _logs else ""
        progress(f"Ray dashboard: {_dashboard_url}{_port_note} (token: `ray get-auth-token`){logs}")
    return seconds


def _start_workers() -> None:
    """Have an existing cluster start this job's workers now. A local cluster starts them with the
    driver; an existing one only once tasks arrive, and a worker takes about a second of a CPU
    to start (Python, Ray, pyarrow): on `stockpipe up`'s two-core cluster the first stage's tasks
    waited 1.5 s more than on a local one. One task per CPU (at most 64), whose results no one
    waits for, starts them while the flow starts."""
    remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_on_node)
    for _ in range(min(cluster_cpus(), 64)):
        remote.options(name="start-worker").remote(int, ())


def lean_processes() -> None:
    """Settings for the processes a local cluster starts (they inherit this environment; a cluster
    started with `ray start` takes them from its own, as `stockpipe up` gives them):
    - 2 glibc malloc arenas (MALLOC_ARENA_MAX). A worker has dozens of threads (Ray's and
      Arrow's), and by default each thread that allocates may get an arena of its own that keeps
      freed memory: with 2, a worker peaks at 175 MiB instead of 245 MiB on the vintage, at the
      same speed.
    - No metrics collection (RAY_enable_metrics_collection=0). Ray keeps metric series per task
      name for the life of each process, so the per-batch task names cost the driver, the
      dashboard agent and each worker 20-60 MiB more per 3,000 tasks, never given back. The
      metrics feed Prometheus and Grafana, which a local run does not have; the dashboard's
      jobs, tasks (by name), actors and logs come from task events and stay.
    """
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    os.environ.setdefault("RAY_enable_metrics_collection", "0")


def _state_api_at(host: str, port: int) -> None:
    """Tell a local cluster's processes (they inherit this environment) where its state API is.

    Without it, Ray's state API looks the cluster up in /tmp/ray/ray_current_cluster, which the last
    `ray start` on this machine wrote and which outlives that cluster. Ray Train's placement-group
    cleaner asks the state API whether its controller is alive: pointed at a dead cluster it hung
    until its 12 s stop timeout at the end of every training (and logged a GetTimeoutError
    traceback); pointed at another live cluster it would take the controller for dead."""
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://{host}:{port}")


def _dashboard_port(settings: Settings) -> int:
    """The configured dashboard port, or a free one when another run's dashboard has it (Ray would
    otherwise give up after a minute)."""
    with socket.socket() as probe:
        try:
            probe.bind((settings.dashboard_host, settings.dashboard_port))
            return settings.dashboard_port
        except OSError:
            probe.bind((settings.dashboard_host, 0))
            return probe.getsockname()[1]


class AuthenticationFailed(RuntimeError):
    """The cluster wants a token this driver does not have (or has another): not worth a retry."""


def token() -> str | None:
    """The token a driver presents, where Ray looks for it: RAY_AUTH_TOKEN, the file named by
    RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (written by any local run or `ray start`)."""
    if token := os.environ.get("RAY_AUTH_TOKEN"):
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _use_token(default: bool = False) -> str | None:
    """Send the token whenever one is available. Ray's driver sends it only when RAY_AUTH_MODE is
    "token", while a stock `ray start --head` turns authentication on whenever a token file exists,
    so without this a driver cannot join the cluster that `ray start` just made. A local cluster
    has authentication on by default (default=True), as Ray's own ray.init would; setting the mode
    here also spares its warning that it did so."""
    found = token()
    if "RAY_AUTH_MODE" not in os.environ and (found or default):
        os.environ["RAY_AUTH_MODE"] = "token"
        RayConfig.initialize("")  # Ray reads the mode once; make this process see it now
    return found


def _check_token(address: str, token: str | None) -> None:
    """Ask the cluster whether it accepts this driver's token (a gRPC call that answers at once);
    ray.init would retry a refused one for 20 s and then say only that it cannot connect."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        try:
            NodeInfoGcsServiceStub(channel).GetClusterId(GetClusterIdRequest(), timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:  # type: ignore[attr-defined]
                problem = "refused this driver's token" if token else "requires a token and none was found"
                raise AuthenticationFailed(
                    f"the Ray cluster at {address} {problem}: set RAY_AUTH_TOKEN to the cluster's "
                    "token (`ray get-auth-token` on its head node prints it) or put it in ~/.ray/auth_token"
                ) from None
            # Anything else is for ray.init to judge and report.


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
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> FanOut[T]:
    """Run fn(*args) for every args tuple as Ray tasks, reporting progress as they finish. Each
    task shows on the Ray dashboard under its name (`names`, else `label`).

    A task whose worker dies is retried by Ray (max_retries); an exception raised by fn is a bug
    or bad input that fn did not handle, and is re-raised here.
    """
    progress = progress or Progress()
    # Spread over the cluster's nodes: Ray's default packs tasks onto the driver's node first, so
    # short tasks could all run there while other nodes sit idle.
    remote = ray.remote(max_retries=3, scheduling_strategy="SPREAD")(_on_node)
    started = time.perf_counter()
    index = {
        remote.options(name=names[i] if names else label).remote(fn, args): i for i, args in enumerate(calls)
    }
    progress.tasks(label, 0, len(calls))
    results: list[Any] = [None] * len(calls)
    nodes: Counter[str] = Counter()
    pending = list(index)
    done_count, next_report = 0, 0.0
    while pending:
        stop.checkpoint()  # half a second apart at most: a stop cuts a fan-out short
        done, pending = ray.wait(pending, num_returns=min(len(pending), 4), timeout=stop.POLL_SECONDS * 2)
        if done:
            timeline.mark("first-task")
        for ref in done:
            node, results[index[ref]] = ray.get(ref)
            nodes[node] += 1
        done_count += len(done)
        progress.tasks(label, done_count, len(calls))
        if done_count / len(calls) >= next_report or not pending:
            elapsed = time.perf_counter() - started
            progress(
                f"{label}: {done_count}/{len(calls)} tasks done in {elapsed:.1f}s on {len(nodes)} node(s)"
            )
            next_report += 0.1
    return FanOut(results=results, nodes=dict(nodes))
