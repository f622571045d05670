"""A Ray task that holds a node's CPUs for one fit, and uses them all.

A Ray worker process outlives its tasks and keeps what the first of them left: OMP_NUM_THREADS at
1 after a fan-out's one-CPU task, which XGBoost heeds in part whatever `nthread` says (a quantile
fit took 0.36 s a round instead of 0.24), and Arrow's pool sized from it. `all_cpus` sets both
for the fit: XGBoost's global thread count and Arrow's pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import xgboost as xgb


@contextmanager
def all_cpus(threads: int) -> Iterator[None]:
    pa.set_cpu_count(threads)
    with xgb.config_context(nthread=threads):
        yield
