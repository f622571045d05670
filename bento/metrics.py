"""The service's own Prometheus series at /metrics, beside BentoML's request metrics:

    stockpipe_model_info{version}                 1 for the version that answers (0 for one swapped out)
    stockpipe_input_vol_moving_avg                histogram of the inputs, over the bins of the
    stockpipe_input_adj_close_rolling_med           training data's quantiles (from the model card)
    stockpipe_predicted_volume                    histogram of the answers, over Volume's bins
    stockpipe_batch_rows                          histogram of rows per /predict_batch request
    stockpipe_rejected_inputs_total{field,problem}  bad inputs, by field and problem
    stockpipe_input_psi{feature}                  PSI of the last few minutes' inputs against the
                                                    serving model's training data (compute/drift.py)

They are made with prometheus_client, which BentoML sets up for its several worker processes:
BentoML 1.4 deprecates its `bentoml.metrics` wrapper for this client, imported only once a worker
has set PROMETHEUS_MULTIPROC_DIR, so Meters is made in the worker (VolumeService.__init__).
Histogram buckets are fixed for a process's life: they are the bins of the model it started with.
After a model swap the PSI gauges use the new model's bins.

A request only appends its numbers to a queue; a thread of each worker adds the queue to the
series every FLUSH_SECONDS, in bulk. prometheus_client's multiprocess values check the process id
and take a lock on every increment: observed one request at a time, the six increments of a
one-row answer cost about 5% of GET /predict's throughput (docs/performance.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from compute import drift
from compute.model import ModelCard
from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN

DECADES = [10.0**k for k in range(0, 11)]  # buckets when a model's card has no bins
BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000)
WINDOW_SECONDS = 300  # the live PSI covers the last one to two such windows
MIN_INPUTS = 200  # fewer inputs in the window than this: no PSI (NaN), it would only be noise
FLUSH_SECONDS = 0.5  # how late /metrics may show a request
PSI_SECONDS = 10  # how often the PSI gauges are updated


def observe_many(histogram: Any, values: np.ndarray) -> None:
    """Histogram.observe for every value, at once: prometheus_client has no bulk observe, and one
    call per row of a 100,000-row batch took about a second. It adds each bucket's count and the
    sum through the histogram's own value objects (tests/unit/test_service_metrics.py checks that
    this equals one observe per value)."""
    if not values.size:
        return
    bounds = histogram._upper_bounds  # ascending, +Inf last: a value goes to the first bound >= it
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))


class LiveDrift:
    """Inputs of one feature counted over a model's bins, in two rotating windows."""

    def __init__(self, bins: drift.Bins) -> None:
        self.bins = bins
        self.edges = list(bins.edges)
        self.current = np.zeros(len(bins.shares), dtype=np.int64)
        self.previous = np.zeros_like(self.current)
        self.started = time.monotonic()

    def add_many(self, values: np.ndarray) -> None:
        self.current += drift.counts_in(self.bins, values)

    def psi(self) -> float:
        if time.monotonic() - self.started >= WINDOW_SECONDS:
            self.previous, self.current = self.current, np.zeros_like(self.current)
            self.started = time.monotonic()
        counts = self.current + self.previous
        return drift.psi(self.bins.shares, counts) if counts.sum() >= MIN_INPUTS else float("nan")


class Meters:
    def __init__(self, card: ModelCard) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        bins = card.feature_bins or {}

        def buckets(column: str) -> list[float]:
            return list(bins[column].edges) if column in bins else DECADES

        self.model_info = Gauge(
            "stockpipe_model_info", "The model that answers: 1 for its version", ["version"],
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.inputs = {
            name: Histogram(
                f"stockpipe_input_{name}",
                f"{name} of each row asked about, over its training quantile bins",
                buckets=buckets(name),
            )
            for name in FEATURE_COLUMNS
        }
        self.predicted = Histogram(
            "stockpipe_predicted_volume", "Each predicted volume, over Volume's training quantile bins",
            buckets=buckets(TARGET_COLUMN),
        )  # fmt: skip
        self.batch_rows = Histogram(
            "stockpipe_batch_rows", "Rows per /predict_batch request", buckets=BATCH_BUCKETS
        )
        self.rejected = Counter(
            "stockpipe_rejected_inputs",
            "Bad inputs refused with a 400, by field and problem",
            ["field", "problem"],
        )
        self.psi = Gauge(
            "stockpipe_input_psi", "PSI of the recent inputs against the serving model's training data",
            ["feature"], multiprocess_mode="livemax",
        )  # fmt: skip
        self.version: str | None = None
        self.live: dict[str, LiveDrift] = {}
        self.pending: deque[tuple[float, float, int]] = deque()  # one-row answers not yet observed
        self.serving(card)
        threading.Thread(target=self._keep, name="meters", daemon=True).start()

    def serving(self, card: ModelCard) -> None:
        """The model that answers from now on: its version, and its bins for the live PSI."""
        if self.version is not None:
            self.model_info.labels(version=self.version).set(0)
        self.version = card.version or "unversioned"
        self.model_info.labels(version=self.version).set(1)
        bins = card.feature_bins or {}
        self.live = {name: LiveDrift(bins[name]) for name in FEATURE_COLUMNS if name in bins}

    def one(self, vol_moving_avg: float, adj_close_rolling_med: float, predicted: int) -> None:
        """A one-row answer, observed at the next flush (deque.append is safe across threads)."""
        self.pending.append((vol_moving_avg, adj_close_rolling_med, predicted))

    def flush(self) -> None:
        """Observe the one-row answers queued so far, at once."""
        rows = [self.pending.popleft() for _ in range(len(self.pending))]
        if rows:
            table = np.array(rows, dtype=np.float64)
            self._observe(table[:, :2], table[:, 2])

    def many(self, features: np.ndarray, predicted: np.ndarray) -> None:
        self.batch_rows.observe(len(features))
        self._observe(features, predicted)

    def _observe(self, features: np.ndarray, predicted: np.ndarray) -> None:
        for i, name in enumerate(FEATURE_COLUMNS):
            observe_many(self.inputs[name], features[:, i])
            if name in self.live:
                self.live[name].add_many(features[:, i])
        observe_many(self.predicted, predicted)

    def refused(self, problems: list[tuple[str, str]]) -> None:
        """Count bad inputs: (field, problem) with item numbers taken out of the field, so that
        `instances[3].vol_moving_avg` and `instances[7].vol_moving_avg` are one series, and any
        name the service does not know as `other`: a client's own key must not become a series
        (a fuzzer's thousands of keys once made the page too big to scrape)."""
        for field, problem in problems:
            self.rejected.labels(field=_series_field(field), problem=problem).inc()

    def _keep(self) -> None:
        """Flush every FLUSH_SECONDS; update the PSI gauges every PSI_SECONDS."""
        psi_due = time.monotonic() + PSI_SECONDS
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()
            if time.monotonic() >= psi_due:
                psi_due += PSI_SECONDS
                for name, live in list(self.live.items()):
                    self.psi.labels(feature=name).set(live.psi())


class NoMeters:
    """Meters turned off (the service's `metrics` argument false): the same calls, doing nothing."""

    def serving(self, card: ModelCard) -> None: ...

    def one(self, vol_moving_avg: float, adj_close_rolling_med: float, predicted: int) -> None: ...

    def many(self, features: np.ndarray, predicted: np.ndarray) -> None: ...

    def refused(self, problems: list[tuple[str, str]]) -> None: ...


FIELD_NAMES = {"body", "instances", "inputs", *FEATURE_COLUMNS}  # what the routes take


def _series_field(field: str) -> str:
    """`instances[7].vol_moving_avg` -> `instances[].vol_moving_avg`; `instances[0].colour` ->
    `instances[].other`."""
    parts = []
    for part in _without_items(field).split("."):
        name = part.split("[")[0]
        parts.append((name if name in FIELD_NAMES else "other") + part[len(name) :])
    return ".".join(parts)


def _without_items(field: str) -> str:
    out, depth = [], 0
    for char in field:
        if char == "[":
            depth += 1
            out.append("[]")
        elif char == "]":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)
