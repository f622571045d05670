"""The gate: whether a newly trained model (the challenger) replaces the champion. This module
decides (`decide`) and applies the decision (`apply`); the rest of training only reports it.

Both are scored on the same rows, the challenger's time holdout, each applying its own recorded
target transform, beside the naive baseline on those rows. The challenger is promoted when
  1. its MAE is below the baseline's, and
  2. there is no champion yet, or its MAE is not worse than the champion's by more than the
     tolerance (`gate_tolerance_pct`, 0 by default: at least as good).
Otherwise the champion stays. A champion that cannot be scored (its files are damaged, or its card
asks for other features) stays too: the gate cannot tell that the challenger is not worse, and a
person can still promote it (`stockpipe promote VERSION`). A first model that does not beat the
baseline is not promoted either: with no champion, nothing is served until a model beats the
baseline or a person promotes one, since serving a model worse than the naive answer is never
what anyone wants by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compute import registry
from compute.layout import Layout

if TYPE_CHECKING:
    from compute.model import ModelCard
    from compute.stages.train.results import Gate


@dataclass(frozen=True)
class Champion:
    """The champion as the gate finds it before training."""

    version: str
    card: ModelCard | None  # None: its files could not be read
    scorable: tuple[bytes, dict[str, object]] | None  # model.bin and card, for the workers to score
    unscorable: str = ""  # why it cannot be scored, when it cannot


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    challenger: float,
    baseline: float,
    champion: Champion | None,
    champion_mae: float | None,
    tolerance_pct: float,
) -> Decision:
    """The gate's decision on holdout MAEs; `champion_mae` is the champion's on the same rows (None
    when it was not scored)."""
    if not math.isfinite(challenger):
        return Decision(False, "the challenger has no holdout score")
    if not challenger < baseline:
        return Decision(False, f"it does not beat the baseline ({_worse(challenger, baseline)})")
    if champion is None:
        return Decision(
            True, f"it beats the baseline ({_better(challenger, baseline)}) and there is no champion"
        )
    if champion_mae is None or not math.isfinite(champion_mae):
        why = champion.unscorable or "it has no score on these rows"
        return Decision(
            False,
            f"the champion could not be scored ({why}), so the gate cannot tell that the challenger is "
            "not worse; `stockpipe promote VERSION` replaces it",
        )
    if challenger <= champion_mae * (1 + tolerance_pct / 100):
        how = (
            _better(challenger, champion_mae)
            if challenger <= champion_mae
            else _worse(challenger, champion_mae)
        )
        return Decision(True, f"it is not worse than the champion by more than {tolerance_pct:g}% ({how})")
    return Decision(
        False,
        f"it is worse than the champion by more than {tolerance_pct:g}% ({_worse(challenger, champion_mae)})",
    )


def apply(layout: Layout, version: str, gate: Gate) -> None:
    """After the version is published: it becomes the champion, or the champion stays; the history
    says which and why. A decision already recorded (a re-run reusing the version) is not applied
    again; one that a killed run never recorded is, unless the champion changed since it was made."""
    if any(c.why == "gate" and c.version == version for c in registry.history(layout)):
        return
    current = registry.champion(layout)
    before = current.version if current else None
    if gate.promote and before == gate.champion:
        registry.promote(layout, version, "gate", gate.reason)
        return
    detail = gate.reason if before == gate.champion else "the champion changed since the decision"
    change = registry.Change(when=registry.now(), why="gate", version=version, before=before, after=before,
                             detail=detail)  # fmt: skip
    registry.record(layout, change)


def _better(mae: float, than: float) -> str:
    return f"MAE {100 * (1 - mae / than):.1f}% lower" if than else "MAE lower"


def _worse(mae: float, than: float) -> str:
    return f"MAE {100 * (mae / than - 1):.1f}% higher" if than else "MAE higher"
