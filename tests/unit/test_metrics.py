"""Metric code against values computed by hand, and the model contract's transforms."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from compute import model as contract
from compute.metrics import ErrorSums, merge_all
from compute.stages.train.split import cutoff_date, fold_years, rows_per_day

ACTUAL = np.array([100.0, 200.0, 0.0, 400.0])
PREDICTED = np.array([110.0, 180.0, 10.0, 400.0])
# errors: -10, 20, -10, 0 -> |e| = 10, 20, 10, 0; e² = 100, 400, 100, 0
# mean(actual) = 175; SST = 75² + 25² + 175² + 225² = 5625 + 625 + 30625 + 50625 = 87500
HAND = {"mae": 10.0, "rmse": math.sqrt(150.0), "r2": 1 - 600 / 87500, "mape_pct": 100 * (0.1 + 0.1 + 0) / 3}


def test_metrics_match_hand_computed_values() -> None:
    assert ErrorSums.of(ACTUAL, PREDICTED).metrics() == pytest.approx(HAND, rel=1e-12)


def test_merging_shards_gives_the_same_metrics_as_one_pass() -> None:
    shards = [ErrorSums.of(ACTUAL[:1], PREDICTED[:1]), ErrorSums.of(ACTUAL[1:3], PREDICTED[1:3])]
    shards += [ErrorSums(), ErrorSums.of(ACTUAL[3:], PREDICTED[3:])]
    assert merge_all(shards).metrics() == pytest.approx(HAND, rel=1e-12)


def test_large_shards_merge_without_cancellation() -> None:
    rng = np.random.default_rng(0)
    y = rng.lognormal(15, 3, 100_000)  # volumes spanning many orders of magnitude
    p = y * rng.uniform(0.5, 1.5, y.size)
    whole = ErrorSums.of(y, p).metrics()
    merged = merge_all([ErrorSums.of(y[i::7], p[i::7]) for i in range(7)]).metrics()
    assert merged == pytest.approx(whole, rel=1e-9)


def test_empty_metrics_are_nan_not_an_error() -> None:
    assert all(math.isnan(v) for v in ErrorSums().metrics().values())


def holdout_cutoff(dates: dict[str, int], holdout_fraction: float) -> str:
    """The reference: the first date at which the rows counted so far, in date order, are more
    than the training share."""
    total, seen = sum(dates.values()), 0
    for day in sorted(dates):
        seen += dates[day]
        if seen > (1 - holdout_fraction) * total:
            return day
    return max(dates)


def cutoff_of(dates: np.ndarray, fraction: float, reduce: object = None) -> str:
    """What a worker runs: rows per day across workers, then the cutoff date."""
    first, per_day = rows_per_day(dates, reduce) if reduce else rows_per_day(dates)  # type: ignore[arg-type]
    return cutoff_date(first, per_day, fraction)


def test_holdout_cutoff_holds_out_the_latest_rows() -> None:
    days = np.repeat(np.array(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"], "datetime64[D]"),
                     [50, 30, 10, 10])  # fmt: skip
    assert cutoff_of(days, 0.2) == "2020-01-03"  # 80 rows before it, 20 on or after
    assert cutoff_of(days, 0.5) == "2020-01-02"


def cutoffs_across_workers(shards: list[np.ndarray], fraction: float) -> list[str]:
    """The workers' cutoff on one thread per worker, each with its own rows, combined in lockstep as
    XGBoost's collective.allreduce combines them."""
    barrier, slots = threading.Barrier(len(shards)), [np.zeros(0)] * len(shards)

    def worker(rank: int) -> str:
        def allreduce(array: np.ndarray, op: str) -> np.ndarray:
            slots[rank] = array
            barrier.wait()
            combined = np.minimum.reduce(slots) if op == "MIN" else np.sum(slots, axis=0)
            barrier.wait()
            return combined

        return cutoff_of(shards[rank], fraction, allreduce)

    with ThreadPoolExecutor(len(shards)) as pool:
        return list(pool.map(worker, range(len(shards))))


def test_workers_agree_on_the_cutoff_that_all_rows_give() -> None:
    """Each Ray Train worker holds some rows (one none); summing rows per day across workers gives
    every worker the cutoff of all rows' counts per date."""
    rng = np.random.default_rng(7)
    offsets = rng.integers(0, 400, 5_000) ** 2 // 400  # uneven, with days that have no rows
    days = (np.datetime64("2019-12-25") + offsets).astype("datetime64[D]")
    shards = [days[:1_000], days[1_000:1_001], days[1_001:], days[:0]]
    per_date: dict[str, int] = {}
    for day in days.astype(str):
        per_date[day] = per_date.get(day, 0) + 1
    for fraction in (0.05, 0.2, 0.5, 0.9):
        expected = holdout_cutoff(per_date, fraction)
        assert cutoffs_across_workers(shards, fraction) == [expected] * len(shards)
        assert cutoff_of(days, fraction) == expected  # one process, all rows


def test_target_transform_round_trips_and_never_goes_negative() -> None:
    volume = np.array([0.0, 150.0, 7_421_640_800.0])
    m = np.array([0.5, 100.0, 1e9])
    ratio = contract.to_target(volume, m)
    np.testing.assert_allclose(contract.to_volume(ratio, m), volume)
    assert (contract.to_volume(np.array([-3.0, 0.5, 2.0]), m) >= 0).all()
    with pytest.raises(ValueError, match="unknown target transform"):
        contract.to_volume(ratio, m, "log1p")


def test_backtest_folds_are_the_latest_full_years_each_after_an_earlier_one() -> None:
    """Rows grow year on year, as in the vintage; the last year is four weeks: no fold."""
    days = np.arange(np.datetime64("1990-01-01"), np.datetime64("2021-01-28"))
    growing = (days.astype("datetime64[Y]").astype(int) - 19).astype(
        np.int64
    )  # 1 row a day in 1990, then more
    first, per_day = rows_per_day(np.repeat(days, growing))
    assert fold_years(first, per_day, 4) == [2017, 2018, 2019, 2020]
    assert fold_years(first, per_day, 100)[0] == 1991  # never the first year: nothing to train on
    assert fold_years(first, per_day, 0) == []
    one_year = np.arange(np.datetime64("2020-01-01"), np.datetime64("2021-01-01"))
    assert fold_years(*rows_per_day(one_year), 4) == []
