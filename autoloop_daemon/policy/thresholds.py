"""Budget thresholds as pure functions: which fractions of a cap a spend has reached.

A crossing is named by a stable key (`budget:0.8:100`, `target:<name>:0.8:50`, or for a
budget window `window:<window start>:0.8:20`, so each window crosses afresh) that
includes the cap, so raising a cap makes its fractions new crossings, while a restart with
the same cap finds the keys already fired and stays quiet.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass

# Money is rounded to the micro-dollar in the files: do not miss a crossing by a rounding.
_EPSILON_USD = 1e-9


@dataclass(frozen=True, slots=True)
class Crossing:
    """A spend that reached `fraction` of `cap_usd`, for the shared budget or one target."""

    scope: str  # "budget" (the shared cap), "window" (its window) or "target"
    target: str | None
    fraction: float
    spent_usd: float
    cap_usd: float
    window: str | None = None  # the budget window's start (ISO) for scope "window"

    @property
    def key(self) -> str:
        """The name this crossing is remembered by across restarts."""
        if self.window is not None:
            where = f"window:{self.window}"
        else:
            where = "budget" if self.target is None else f"target:{self.target}"
        return f"{where}:{self.fraction:g}:{self.cap_usd:g}"


def crossings(
    spent_usd: float,
    cap_usd: float | None,
    fractions: Iterable[float],
    *,
    target: str | None = None,
    window: str | None = None,
) -> list[Crossing]:
    """Every fraction of `cap_usd` that `spent_usd` has reached, smallest first; `window`
    (its start) makes them the crossings of one budget window.

    No cap (None, infinite, zero or negative) has no thresholds.
    """
    if cap_usd is None or not math.isfinite(cap_usd) or cap_usd <= 0:
        return []
    scope = "window" if window is not None else "budget" if target is None else "target"
    return [
        Crossing(scope, target, f, spent_usd, cap_usd, window)
        for f in sorted(set(fractions))
        if spent_usd + _EPSILON_USD >= f * cap_usd
    ]


def new_crossings(found: Iterable[Crossing], fired: Collection[str]) -> list[Crossing]:
    """The crossings in `found` whose key is not in `fired` (each reported once)."""
    return [c for c in found if c.key not in fired]
