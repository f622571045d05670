"""The service's metrics helpers: a batch observed at once counts exactly as one observe per value
(it uses prometheus_client's histogram internals, so a change there fails here), and bad fields
are counted without their item numbers."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from bento.metrics import LiveDrift, _without_items, observe_many
from compute import drift


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for m in histogram.collect()
        for s in m.samples
        if "created" not in s.name
    }


def test_a_batch_observed_at_once_counts_as_one_observe_per_value() -> None:
    values = np.array([0.0, 0.5, 1.0, 1.0, 9.9, 10.0, 10.1, 1e9, 5.0])
    one = Histogram("one", "", buckets=(1, 5, 10), registry=CollectorRegistry())
    many = Histogram("many", "", buckets=(1, 5, 10), registry=CollectorRegistry())
    for value in values:
        one.observe(float(value))
    observe_many(many, values)
    observe_many(many, np.zeros(0))
    assert {k[1:]: v for k, v in samples(one).items()} == {k[1:]: v for k, v in samples(many).items()}
    assert samples(many)[("many_bucket", "1.0")] == 4 and samples(many)[("many_count", "")] == 9


def test_bad_fields_are_counted_without_their_item_numbers() -> None:
    assert _without_items("instances[3].vol_moving_avg") == "instances[].vol_moving_avg"
    assert _without_items("instances[12]") == "instances[]" and _without_items("body") == "body"


def test_live_drift_is_none_on_the_training_shares_and_large_on_a_shift() -> None:
    bins = drift.Bins(edges=[1.0, 2.0, 3.0], shares=[0.25, 0.25, 0.25, 0.25], low=0.0, high=4.0)
    live = LiveDrift(bins)
    assert np.isnan(live.psi())  # too few inputs to say
    live.add_many(np.repeat([0.5, 1.5, 2.5, 3.5], 100))
    assert live.psi() == 0.0
    for _ in range(400):
        live.add_one(3.9)
    assert live.psi() > drift.SIGNIFICANT
