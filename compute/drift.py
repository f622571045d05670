"""How far new data is from what a model was trained on: quantile bins of its stage 2, and the
population stability index (PSI) of new data over those bins.

A model's card records, for each of its inputs and for Volume, the edges of ten quantile bins of
the stage-2 rows it was trained and evaluated on, the share of those rows in each bin and their
range. Training finds the quantiles without collecting the rows anywhere: each Ray Train worker
counts its rows in a fine histogram (FINE_BINS bins of log10(1 + x), about 0.7% wide), the driver
adds the workers' counts, and the edges are read off the sum.

PSI = sum over bins of (actual - expected) * ln(actual / expected), each share floored at 1e-4 so
that an empty bin counts without an infinity: the definition Evidently uses. Below 0.1 the data
has not moved; 0.1 to 0.2 is a moderate shift; 0.2 or more a significant one (the common
thresholds). The service counts live inputs over the same bins and exports their PSI.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel

from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN

COLUMNS = (*FEATURE_COLUMNS, TARGET_COLUMN)  # what is profiled: both inputs, and the target
QUANTILES = 10
FINE_BINS = 2048
FINE_TOP = 13.0  # log10(1 + x) up to 1e13: every volume and price
FLOOR = 1e-4
MODERATE, SIGNIFICANT = 0.1, 0.2
Level = Literal["none", "moderate", "significant"]


class Bins(BaseModel):
    """One column's quantile bins in a model's training data."""

    edges: list[float]  # the QUANTILES - 1 inner edges; a value v is in bin searchsorted(edges, v, "right")
    shares: list[float]  # of the training rows in each of the QUANTILES bins
    low: float  # the training rows' range
    high: float


def fine_histogram(values: np.ndarray) -> np.ndarray:
    """Counts of `values` in FINE_BINS bins of log10(1 + x) over [0, FINE_TOP] (a worker's part)."""
    scaled = np.log10(1.0 + np.maximum(values, 0.0)) / FINE_TOP * FINE_BINS
    return np.bincount(np.clip(scaled.astype(np.int64), 0, FINE_BINS - 1), minlength=FINE_BINS)


def bins_from(counts: np.ndarray, low: float, high: float) -> Bins:
    """Quantile bins from the workers' fine histograms, added up."""
    cumulative = np.cumsum(counts) / max(counts.sum(), 1)
    uppers = 10 ** (np.arange(1, FINE_BINS + 1) / FINE_BINS * FINE_TOP) - 1.0  # each fine bin's upper end
    targets = np.arange(1, QUANTILES) / QUANTILES
    edges = [float(uppers[min(int(np.searchsorted(cumulative, q)), FINE_BINS - 1)]) for q in targets]
    edges = sorted(set(edges))  # a heavy value (zero volumes) can take several quantiles
    # The shares of the bins these edges make, from the same fine counts.
    fine_bin_of_edge = [int(np.searchsorted(uppers, e)) for e in edges]
    splits = np.split(counts, [i + 1 for i in fine_bin_of_edge])
    total = max(counts.sum(), 1)
    return Bins(edges=edges, shares=[float(part.sum() / total) for part in splits], low=low, high=high)


def counts_in(bins: Bins, values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each of the bins."""
    return np.bincount(np.searchsorted(bins.edges, values, side="right"), minlength=len(bins.shares))


def psi(expected: list[float] | np.ndarray, actual_counts: np.ndarray) -> float:
    expected_share = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    actual = np.maximum(actual_counts / max(actual_counts.sum(), 1), FLOOR)
    return float(np.sum((actual - expected_share) * np.log(actual / expected_share)))


def level(value: float) -> Level:
    return "significant" if value >= SIGNIFICANT else "moderate" if value >= MODERATE else "none"


class Profile(BaseModel):
    """One column of one worker's rows: its fine histogram and range."""

    fine: list[int]
    low: float
    high: float

    @classmethod
    def of(cls, values: np.ndarray) -> Profile:
        if not values.size:
            return cls(fine=[0] * FINE_BINS, low=float("inf"), high=float("-inf"))
        return cls(fine=fine_histogram(values).tolist(), low=float(values.min()), high=float(values.max()))

    @classmethod
    def merged(cls, profiles: list[Profile]) -> Profile:
        """The profile of several parts' rows together (a histogram adds up)."""
        return cls(
            fine=np.sum([p.fine for p in profiles], axis=0, dtype=np.int64).tolist(),
            low=min(p.low for p in profiles),
            high=max(p.high for p in profiles),
        )


class Counts(BaseModel):
    """One column of one worker's rows, over a reference model's bins."""

    counts: list[int]
    outside: int  # below or above the reference rows' range

    @classmethod
    def of(cls, reference: Bins, values: np.ndarray) -> Counts:
        outside = int(np.count_nonzero((values < reference.low) | (values > reference.high)))
        return cls(counts=counts_in(reference, values).tolist(), outside=outside)

    @classmethod
    def merged(cls, counts: list[Counts]) -> Counts:
        return cls(
            counts=np.sum([c.counts for c in counts], axis=0, dtype=np.int64).tolist(),
            outside=sum(c.outside for c in counts),
        )


def merged_bins(profiles: list[Profile]) -> Bins:
    """A column's quantile bins over every worker's rows."""
    fine = np.sum([p.fine for p in profiles], axis=0)
    return bins_from(fine, min(p.low for p in profiles), max(p.high for p in profiles))


class ColumnDrift(BaseModel):
    column: str
    psi: float
    level: Level
    outside_range_share: float  # of the new rows below or above the training rows' range
    expected_shares: list[float]  # per bin: the training data's
    actual_shares: list[float]  # and the new data's


class DriftReport(BaseModel):
    """reports/drift.json: the new stage 2 against the data the serving model was trained on."""

    reference: str | None  # the champion's version; None when there was none to compare with
    reference_rows: int | None
    rows: int  # new stage-2 rows with both features
    columns: list[ColumnDrift]
    symbols_new: list[str]
    symbols_gone: list[str]
    note: str = ""

    def worst(self) -> ColumnDrift | None:
        return max(self.columns, key=lambda c: c.psi, default=None)


def column_drift(column: str, reference: Bins, counts: np.ndarray, outside: int) -> ColumnDrift:
    value = psi(reference.shares, counts)
    total = max(int(counts.sum()), 1)
    return ColumnDrift(
        column=column,
        psi=round(value, 6),
        level=level(value),
        outside_range_share=round(outside / total, 6),
        expected_shares=[round(s, 6) for s in reference.shares],
        actual_shares=[round(c / total, 6) for c in counts.tolist()],
    )
