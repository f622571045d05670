"""Where training runs and with what: the device, the layout (one Ray task, or Ray Train's workers),
and XGBoost's parameters.

One worker is the default wherever it suffices: one GPU, or one node's CPUs, with the data in that
node's memory. It runs as one Ray task that reserves the whole node (its CPUs, and a GPU for CUDA),
so XGBoost and Arrow use every core. Ray Train's XGBoostTrainer pays for its distributed start
(its controller and workers, and XGBoost's tracker: 9 s on 2 cores, 12-15 s on 16) and splits the
boosting across processes that synchronise every level; it is chosen where more than one worker
helps: several GPUs, several nodes, or more data than the largest node holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from compute.settings import Settings

LAYOUTS = ("auto", "single", "distributed")
# The peak memory of one worker per row it trains on (2021 vintage, 8.6M rows, one process: the
# columns, the training and test rows' copies, XGBoost's quantised matrix and its gradients),
# measured and rounded up; docs/performance.md.
BYTES_PER_ROW = 160
# A node's memory that one worker may fill: Ray's "memory" resource is about 70% of what the
# node had free when Ray started; the rest of the stage (the driver, Ray's daemons) needs room.
MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class Node:
    """What a live Ray node offers, from ray.nodes()."""

    id: str
    cpus: int
    gpus: int
    memory: float  # bytes: Ray's "memory" resource

    @classmethod
    def of(cls, info: dict[str, Any]) -> Node:
        resources = info.get("Resources", {})
        return cls(
            id=str(info["NodeID"]),
            cpus=int(resources.get("CPU", 0)),
            gpus=int(resources.get("GPU", 0)),
            memory=float(resources.get("memory", 0)),
        )


@dataclass(frozen=True)
class Layout:
    """How the fit runs: one Ray task on one node, or Ray Train workers; and why."""

    kind: Literal["single", "distributed"]
    workers: int
    resources: dict[str, float]  # what each worker reserves
    why: str
    node: str | None = None  # single: the node it runs on

    @property
    def threads(self) -> int:
        return max(int(self.resources.get("CPU", 1)), 1)

    def describe(self, device: str) -> str:
        if self.kind == "single":
            gpu = " and 1 GPU" if self.resources.get("GPU") else ""
            return f"one Ray task on {device} with {self.threads} CPUs{gpu} ({self.why})"
        each = ", ".join(f"{v:g} {k}" for k, v in self.resources.items())
        return f"{self.workers} Ray Train workers on {device}, each {each} ({self.why})"


def resolve_device(requested: str, cluster_gpus: float) -> str:
    """'auto' picks CUDA when the Ray cluster has a GPU, else CPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and cluster_gpus < 1:
        # Ray Train would wait for ever for a GPU to reserve.
        raise ValueError("train device cuda, but the Ray cluster has no GPU (auto uses one where there is)")
    if requested != "auto":
        return requested
    return "cuda" if cluster_gpus >= 1 else "cpu"


def choose_layout(device: str, nodes: list[Node], settings: Settings, parts: int, rows: int | None) -> Layout:
    """One worker where one suffices, Ray Train where more help (see the module's docstring);
    `train_layout` forces either, and `train_workers` sets Ray Train's worker count (1: one task).
    `rows`: stage 2's rows with features (None: not known)."""
    requested, workers = settings.train_layout, settings.train_workers
    if requested not in LAYOUTS:
        raise ValueError(f"train layout must be one of {', '.join(LAYOUTS)}, not {requested!r}")
    if requested == "single" and workers is not None and workers > 1:
        raise ValueError(f"train layout single runs one worker, but train_workers asks for {workers}")
    usable = [n for n in nodes if n.cpus >= 1 and (n.gpus >= 1 or device != "cuda")]
    if not usable:
        raise ValueError(f"no Ray node has {'a GPU' if device == 'cuda' else 'a CPU'} to train on")
    # The node a single worker gets: the one with the most CPUs (among those with a GPU, for CUDA).
    best = max(usable, key=lambda n: (n.cpus, n.memory))
    helps = _why_distributed(device, usable, settings, (rows or 0) * BYTES_PER_ROW, best)
    if requested == "distributed" or (requested == "auto" and helps and workers != 1):
        return _distributed(device, usable, workers, parts, helps or "train_layout is distributed")
    if requested == "single":
        why = "train_layout is single" + (f", though {helps}" if helps else "")
    elif workers == 1:
        why = "train_workers is 1" + (f", though {helps}" if helps else "")
    else:
        one = "one GPU" if device == "cuda" else "one node"
        why = f"{one}: a distributed start would cost more than it saves"
    resources = {"CPU": float(best.cpus), **({"GPU": 1.0} if device == "cuda" else {})}
    return Layout("single", 1, resources, why, node=best.id)


def _why_distributed(
    device: str, usable: list[Node], settings: Settings, needed: float, best: Node
) -> str | None:
    """Why more than one worker would help, or None."""
    if settings.train_workers is not None and settings.train_workers > 1:
        return f"train_workers is {settings.train_workers}"
    if device == "cuda" and sum(n.gpus for n in usable) > 1:
        return f"{sum(n.gpus for n in usable)} GPUs, one worker each"
    if device == "cpu" and len(usable) > 1:
        return f"{len(usable)} nodes"
    if best.memory and needed > MEMORY_SHARE * best.memory:
        return (
            f"stage 2 needs about {needed / 2**30:.1f} GiB to train on, more than one node holds "
            f"({best.memory / 2**30:.1f} GiB)"
        )
    return None


def _distributed(device: str, usable: list[Node], workers: int | None, parts: int, why: str) -> Layout:
    """Ray Train's layout: one worker per GPU on CUDA, each with its node's CPUs shared out among
    its GPUs (with one CPU, XGBoost and Arrow would run on one core); else one worker per CPU, at
    most 8, never more workers than there are part files to share out."""
    if device == "cuda":
        count = workers or sum(n.gpus for n in usable)
        cpus = max(min(n.cpus // n.gpus for n in usable), 1)
        resources: dict[str, float] = {"CPU": float(cpus), "GPU": 1.0}
    else:
        total = sum(n.cpus for n in usable)
        count = workers or max(min(total, 8), 1)
        resources = {"CPU": float(max(total // count, 1))}
    return Layout("distributed", min(count, parts), resources, why)


def xgb_params(settings: Settings, device: str, threads: int) -> dict[str, Any]:
    return {
        "objective": "reg:pseudohubererror",
        "huber_slope": settings.train_huber_slope,
        "tree_method": "hist",
        "device": device,
        "max_depth": settings.train_max_depth,
        "eta": settings.train_eta,
        "max_bin": 256,
        "nthread": threads,
        # Pseudo-Huber's hessian vanishes for far outliers; bounding each leaf step keeps it stable.
        "max_delta_step": 1.0,
        "seed": settings.seed,
    }
