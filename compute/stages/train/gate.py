"""The gate: whether a newly trained model (the challenger) replaces the champion.

Both are scored on the same rows, the challenger's time holdout, each applying its own recorded
target transform, beside the naive baseline on those rows. The challenger is promoted when
  1. its MAE is below the baseline's, and
  2. there is no champion yet, or its MAE is not worse than the champion's by more than the
     tolerance (`gate_tolerance_pct`, 0 by default: at least as good).
Otherwise the champion stays. A first model that does not beat the baseline is not promoted
either: with no champion, nothing is served until a model beats the baseline or a person promotes
one (`stockpipe promote VERSION`), since serving a model worse than the naive answer is never
what anyone wants by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: float, baseline: float, champion: float | None, tolerance_pct: float) -> Decision:
    """The gate's decision on holdout MAEs (`champion` None: there is none that could be scored)."""
    if not math.isfinite(challenger):
        return Decision(False, "the challenger has no holdout score")
    if not challenger < baseline:
        return Decision(False, f"it does not beat the baseline ({_worse(challenger, baseline)})")
    if champion is None or not math.isfinite(champion):
        return Decision(
            True, f"it beats the baseline ({_better(challenger, baseline)}) and there is no champion"
        )
    if challenger <= champion * (1 + tolerance_pct / 100):
        how = _better(challenger, champion) if challenger <= champion else _worse(challenger, champion)
        return Decision(True, f"it is not worse than the champion by more than {tolerance_pct:g}% ({how})")
    return Decision(
        False,
        f"it is worse than the champion by more than {tolerance_pct:g}% ({_worse(challenger, champion)})",
    )


def _better(mae: float, than: float) -> str:
    return f"MAE {100 * (1 - mae / than):.1f}% lower" if than else "MAE lower"


def _worse(mae: float, than: float) -> str:
    return f"MAE {100 * (mae / than - 1):.1f}% higher" if than else "MAE higher"
