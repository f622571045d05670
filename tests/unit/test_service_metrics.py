"""The service's metrics helpers: a batch observed at once counts exactly as one observe per value
(it uses prometheus_client's histogram internals, so a change there fails here), and bad fields
are counted without their item numbers."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from bento.metrics import LiveDrift, _series_field, observe_many
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


def test_bad_fields_are_counted_without_their_item_numbers_or_a_clients_own_names() -> None:
    assert _series_field("instances[3].vol_moving_avg") == "instances[].vol_moving_avg"
    assert _series_field("instances[12]") == "instances[]" and _series_field("body") == "body"
    assert _series_field("inputs[4][1]") == "inputs[][]"
    # A key the client made up is not a series of its own.
    assert _series_field("instances[0].colour") == "instances[].other"
    assert _series_field("\ud800x[1].y") == "other[].other"


def test_live_drift_is_none_on_the_training_shares_and_large_on_a_shift() -> None:
    bins = drift.Bins(edges=[1.0, 2.0, 3.0], shares=[0.25, 0.25, 0.25, 0.25], low=0.0, high=4.0)
    live = LiveDrift(bins)
    assert np.isnan(live.psi())  # too few inputs to say
    live.add_many(np.repeat([0.5, 1.5, 2.5, 3.5], 100))
    assert live.psi() == 0.0
    live.add_many(np.full(400, 3.9))
    assert live.psi() > drift.SIGNIFICANT


def test_one_row_through_the_c_api_is_xgboosts_own_answer() -> None:
    """bento/onerow.py against Booster.inplace_predict on the same rows: bit for bit."""
    import xgboost as xgb

    from bento.onerow import OneRow

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.lognormal(12, 2, 2000), rng.lognormal(3, 1, 2000)])
    y = rng.lognormal(0, 0.5, 2000)
    booster = xgb.train({"tree_method": "hist", "max_depth": 6, "nthread": 1}, xgb.QuantileDMatrix(x, y), 20)
    one_row = OneRow(booster, 2)
    rows = np.vstack([x[:200], [[0.0, 0.0], [51318.0, 216.0], [1e12, 1e7], [0.5, 1e-9]]])
    expected = booster.inplace_predict(rows)
    got = np.array([one_row(*row) for row in rows], dtype=np.float32)
    assert np.array_equal(got, expected)
