"""Where training runs and with what: the device, the Ray Train worker layout, XGBoost's parameters."""

from __future__ import annotations

from typing import Any

from compute.settings import Settings


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


def worker_layout(
    device: str, resources: dict[str, float], settings: Settings, parts: int
) -> tuple[int, dict[str, float]]:
    """How many Ray Train workers, and what each reserves: one per GPU on CUDA, else one per CPU
    (at most 8), never more than there are part files to share out."""
    if device == "cuda":
        workers = settings.train_workers or max(int(resources.get("GPU", 1)), 1)
        per_worker: dict[str, float] = {"CPU": 1, "GPU": 1}
    else:
        workers = settings.train_workers or max(min(int(resources.get("CPU", 1)), 8), 1)
        per_worker = {"CPU": max(int(resources.get("CPU", 1)) // workers, 1)}
    return min(workers, parts), per_worker


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
