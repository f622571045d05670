"""The gate's decision table: a challenger is promoted only when it beats the baseline and is not
worse than the champion by more than the tolerance; a champion that could not be scored stays."""

from __future__ import annotations

import math

import pytest

from compute.stages.train.gate import Champion, decide

NAN = math.nan


@pytest.mark.parametrize(
    ("challenger", "baseline", "champion", "tolerance", "promote", "says"),
    [
        # No champion yet: the baseline decides.
        (90.0, 100.0, None, 0.0, True, "no champion"),
        (110.0, 100.0, None, 0.0, False, "does not beat the baseline (MAE 10.0% higher)"),
        (100.0, 100.0, None, 0.0, False, "does not beat the baseline"),
        # A champion: not worse than it by more than the tolerance.
        (90.0, 100.0, 95.0, 0.0, True, "not worse than the champion by more than 0% (MAE 5.3% lower)"),
        (95.0, 100.0, 95.0, 0.0, True, "not worse"),  # as good is enough
        (96.0, 100.0, 95.0, 0.0, False, "worse than the champion by more than 0% (MAE 1.1% higher)"),
        (96.0, 100.0, 95.0, 2.0, True, "not worse than the champion by more than 2% (MAE 1.1% higher)"),
        (98.0, 100.0, 95.0, 2.0, False, "worse than the champion by more than 2%"),
        # Beating the champion is not enough without beating the baseline.
        (101.0, 100.0, 200.0, 0.0, False, "does not beat the baseline"),
        # A challenger without a score is never promoted; nor is one against a champion without one.
        (NAN, 100.0, 95.0, 0.0, False, "no holdout score"),
        (90.0, 100.0, NAN, 0.0, False, "the champion could not be scored"),
    ],
)
def test_the_gates_decision_table(
    challenger: float, baseline: float, champion: float | None, tolerance: float, promote: bool, says: str
) -> None:
    standing = None if champion is None else Champion("C", None, None)
    decision = decide(challenger, baseline, standing, champion, tolerance)
    assert decision.promote is promote
    assert says in decision.reason, decision.reason


def test_a_champion_that_cannot_be_scored_stays_and_the_reason_says_why() -> None:
    damaged = Champion("C", None, None, "its files are damaged: model.bin does not match")
    decision = decide(90.0, 100.0, damaged, None, 0.0)
    assert not decision.promote
    assert decision.reason.startswith("the champion could not be scored (its files are damaged: model.bin")
    assert "`stockpipe promote VERSION` replaces it" in decision.reason
