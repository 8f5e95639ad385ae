"""How many runs can be in flight at once under `[budget] guarantee = "hard"`.

Every run reserves its worst case (`max_iteration_cost_usd`), so the money that is neither
spent nor settled decides the concurrency, not only `max_concurrent_iterations`: with $1
left and a $0.40 worst case, two runs at once, whatever the slots. `status` says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from autoloop_daemon.policy.ledger import Ledger

_EPSILON_USD = 1e-9


def runs_at_once(unsettled_usd: float, worst_case_usd: float, slots: int) -> int:
    """How many worst-case runs fit in `unsettled_usd` (what is left, running runs'
    reservations included), at most `slots`. A worst case that is not a positive finite
    number shrinks nothing."""
    if not (math.isfinite(worst_case_usd) and worst_case_usd > 0):
        return slots
    if math.isnan(unsettled_usd):
        return 0
    if unsettled_usd == math.inf:
        return slots
    fit = math.floor((max(0.0, unsettled_usd) + _EPSILON_USD) / worst_case_usd)
    return max(0, min(slots, fit))


def worst_case(limits: Iterable[float | None]) -> float | None:
    """The dearest worst case among the hard-capped targets (None: none has one)."""
    known = [x for x in limits if x is not None and math.isfinite(x) and x > 0]
    return max(known) if known else None


def fit_now(limits: Iterable[float | None], ledger: Ledger, slots: int) -> dict[str, Any]:
    """The snapshot's fields for `guarantee = "hard"`: the dearest worst case among
    `limits` and how many such runs fit at once in what `ledger` holds neither spent nor
    settled; {} when no target has one."""
    worst = worst_case(limits)
    if worst is None:
        return {}
    unsettled_usd = min(
        ledger.cap_usd - ledger.spent_usd, ledger.window_cap_usd - ledger.window_spent_usd
    )
    fit = runs_at_once(unsettled_usd, worst, slots)
    return {"hard_worst_case_usd": worst, "hard_runs_at_once": fit}
