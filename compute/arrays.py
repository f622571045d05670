"""numpy or CuPy: the training's numeric work runs where its arrays are. On a GPU the features,
the target and the weights are copied to the device once, and XGBoost sketches, trains and
predicts there, and the drift profiles are counted there, without a round trip through the host.
The same code runs on numpy arrays everywhere else (and in the tests)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def module_for(device: str) -> ModuleType:
    """CuPy for a CUDA device when it is installed, else numpy (XGBoost then copies host arrays
    to the GPU itself, and sketches them on the CPU)."""
    if device.startswith("cuda"):
        try:
            import cupy
        except ImportError:
            return np
        return cupy
    return np


def warm(device: str) -> None:
    """Import CuPy and make the GPU's context now (about a second in a fresh process), so that a
    worker does it while it reads rather than after."""
    xp = module_for(device)
    if xp is not np:
        xp.zeros(1)


def module_of(array: Any) -> ModuleType:
    """The module of an array: CuPy for one in a GPU's memory, else numpy."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(array: Any) -> np.ndarray:
    return np.asarray(array) if module_of(array) is np else array.get()
