"""One-row predictions, straight through XGBoost's C API.

`Booster.inplace_predict` spends most of a one-row call in Python before and after the C function
it calls (checking the input's type, writing its array interface and the call's arguments as
JSON, wrapping the output): 60% of its time, a fifth of GET /predict's in a py-spy profile. Here
the input is one row of a buffer made once, whose array interface and arguments are written once;
a call writes the two numbers into it and reads the one number back. The answer is XGBoost's own,
bit for bit (tests/unit/test_service_metrics.py compares it with inplace_predict).

A OneRow belongs to one thread at a time: the service's event loop.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

import numpy as np
import xgboost as xgb
from xgboost.libpath import find_lib_path

_LIB = ctypes.cdll.LoadLibrary(find_lib_path()[0])  # the library xgboost loaded already
_LIB.XGBGetLastError.restype = ctypes.c_char_p


class OneRow:
    def __init__(self, booster: xgb.Booster, features: int) -> None:
        self.booster = booster  # kept alive: the handle below is its own
        self.row = np.zeros((1, features), dtype=np.float64)
        interface: dict[str, Any] = dict(self.row.__array_interface__)
        interface.pop("descr", None)
        interface["strides"] = None
        self.interface = json.dumps(interface).encode()
        arguments = {"type": 0, "training": False, "iteration_begin": 0, "iteration_end": 0,
                     "missing": float("nan"), "strict_shape": False, "cache_id": 0}  # fmt: skip
        self.arguments = json.dumps(arguments).encode()
        self.shape = ctypes.POINTER(ctypes.c_uint64)()
        self.dims = ctypes.c_uint64()
        self.out = ctypes.POINTER(ctypes.c_float)()

    def __call__(self, *values: float) -> float:
        """The booster's raw output for one row of feature values."""
        self.row[0] = values
        failed = _LIB.XGBoosterPredictFromDense(
            self.booster.handle, self.interface, self.arguments, ctypes.c_void_p(),
            ctypes.byref(self.shape), ctypes.byref(self.dims), ctypes.byref(self.out),
        )  # fmt: skip
        if failed:
            raise xgb.core.XGBoostError(_LIB.XGBGetLastError().decode())
        return float(self.out[0])
