"""Where training runs: the device asked for against the Ray cluster's GPUs, and the worker layout."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from compute.settings import Settings
from compute.stages.train.params import resolve_device, worker_layout
from compute.stages.train.worker import booster_device


def test_auto_picks_cuda_only_where_the_cluster_has_a_gpu() -> None:
    assert resolve_device("auto", 0) == "cpu"
    assert resolve_device("auto", 1) == "cuda"
    assert resolve_device("cpu", 4) == "cpu"
    assert resolve_device("cuda", 2) == "cuda"


def test_cuda_on_a_cluster_without_a_gpu_is_refused_not_waited_for() -> None:
    with pytest.raises(ValueError, match="the Ray cluster has no GPU"):
        resolve_device("cuda", 0)
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("gpu", 1)


def test_one_worker_per_gpu_on_cuda_one_per_cpu_up_to_8_else() -> None:
    settings = Settings()
    assert worker_layout("cuda", {"CPU": 16, "GPU": 2}, settings, parts=10) == (2, {"CPU": 1, "GPU": 1})
    assert worker_layout("cpu", {"CPU": 16}, settings, parts=10) == (8, {"CPU": 2})
    assert worker_layout("cpu", {"CPU": 16}, settings, parts=3) == (3, {"CPU": 2})


def test_the_device_is_read_back_from_the_booster() -> None:
    """What XGBoost used, not what it was asked: on a machine without a GPU, cuda falls back to
    the CPU with a warning, and the booster's config says so."""
    x, y = np.random.default_rng(0).random((64, 2)), np.random.default_rng(1).random(64)
    trained = xgb.train({"device": "cpu", "tree_method": "hist"}, xgb.QuantileDMatrix(x, y), 2)
    assert booster_device(trained) == "cpu"
    if not xgb.build_info().get("USE_CUDA"):
        with pytest.warns(UserWarning, match="Device is changed from GPU to CPU"):
            fell_back = xgb.train({"device": "cuda", "tree_method": "hist"}, xgb.QuantileDMatrix(x, y), 2)
        assert booster_device(fell_back) == "cpu"
