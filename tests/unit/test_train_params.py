"""Where training runs: the device asked for against the Ray cluster's GPUs, and the layout: one Ray
task where one worker suffices, Ray Train's workers where more help, and why."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from compute.settings import Settings
from compute.stages.train.params import Node, choose_layout, resolve_device
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


GiB = 2.0**30


def node(name: str, cpus: int, gpus: int = 0, memory: float = 16 * GiB) -> Node:
    return Node(id=name, cpus=cpus, gpus=gpus, memory=memory)


def test_one_gpu_or_one_node_trains_in_one_task_holding_the_whole_node() -> None:
    settings = Settings()
    one_gpu = choose_layout("cuda", [node("a", 16, 1)], settings, parts=100, rows=29_000_000)
    assert (one_gpu.kind, one_gpu.workers, one_gpu.resources, one_gpu.node) == (
        "single",
        1,
        {"CPU": 16, "GPU": 1},
        "a",
    )
    assert one_gpu.threads == 16 and "one GPU" in one_gpu.why
    # The GPU's node, not the larger one without a GPU.
    mixed = [node("big", 64), node("gpu", 8, 1)]
    assert choose_layout("cuda", mixed, settings, parts=10, rows=None).node == "gpu"
    cpu = choose_layout("cpu", [node("a", 2)], settings, parts=10, rows=8_600_000)
    assert (cpu.kind, cpu.resources, cpu.threads) == ("single", {"CPU": 2}, 2)


def test_several_gpus_nodes_or_more_data_than_a_node_holds_use_ray_train() -> None:
    settings = Settings()
    gpus = choose_layout("cuda", [node("a", 16, 2), node("b", 8, 1)], settings, parts=10, rows=None)
    assert (gpus.kind, gpus.workers, gpus.resources) == ("distributed", 3, {"CPU": 8, "GPU": 1})
    assert gpus.why == "3 GPUs, one worker each"
    nodes = choose_layout("cpu", [node("a", 1), node("b", 1)], settings, parts=10, rows=None)
    assert (nodes.kind, nodes.workers, nodes.resources, nodes.why) == (
        "distributed",
        2,
        {"CPU": 1},
        "2 nodes",
    )
    big = choose_layout("cpu", [node("a", 16, memory=8 * GiB)], settings, parts=10, rows=200_000_000)
    assert (big.kind, big.workers, big.resources) == ("distributed", 8, {"CPU": 2})
    assert "more than one node holds" in big.why
    # Never more workers than part files to share out.
    assert choose_layout("cpu", [node("a", 16, memory=GiB)], settings, parts=3, rows=10**9).workers == 3


def test_a_setting_forces_either_layout() -> None:
    one_node = [node("a", 16, 1)]
    forced = choose_layout("cuda", one_node, Settings(train_layout="distributed"), parts=10, rows=None)
    assert (forced.kind, forced.workers, forced.why) == ("distributed", 1, "train_layout is distributed")
    two = [node("a", 4), node("b", 4)]
    single = choose_layout("cpu", two, Settings(train_layout="single"), parts=10, rows=None)
    assert (single.kind, single.why) == ("single", "train_layout is single, though 2 nodes")
    assert choose_layout("cpu", two, Settings(train_workers=1), parts=10, rows=None).kind == "single"
    assert choose_layout("cpu", one_node, Settings(train_workers=3), parts=10, rows=None).workers == 3
    with pytest.raises(ValueError, match="train layout single runs one worker"):
        choose_layout("cpu", one_node, Settings(train_layout="single", train_workers=2), parts=10, rows=None)
    with pytest.raises(ValueError, match="train layout must be one of auto, single, distributed"):
        choose_layout("cpu", one_node, Settings(train_layout="many"), parts=10, rows=None)
    with pytest.raises(ValueError, match="no Ray node has a GPU"):
        choose_layout("cuda", [node("a", 4)], Settings(), parts=10, rows=None)


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
