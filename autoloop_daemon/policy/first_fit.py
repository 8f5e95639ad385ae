"""Can a run fit the budget at all? Pure.

A run whose cost is metered live (wall time at the rate) may start with whatever is left of
the cap: the live meter stops it there. Any other run reserves its whole estimate
(policy/ledger.py), so when that estimate exceeds what the cap can ever give (the lifetime
cap minus what is spent, or one window's cap) no run can start. Instead of a bare "budget
exhausted", `refusal` says which estimate, where it comes from and which key to change;
`first_run_problem` says it at `--check`, before anything runs.
"""

from __future__ import annotations

import math

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.ledger import explain_estimate

# Reservation for a target's first iteration when it has no history and no estimate is
# configured: ten minutes at the target's rate.
FIRST_ESTIMATE_MINUTES = 10.0

_EPSILON_USD = 1e-9
_KEYS = "set estimated_cost_usd or max_iteration_cost_usd to at most ${:.2f}, or raise {}"


def metered_live(spec: TargetSpec, reports_cost: bool | None) -> bool:
    """True when the next run's cost is watched live by wall time: not a dry run, a rate
    above zero, and the orchestrator did not report its own cost last time."""
    return not spec.dry_run and spec.cost_per_minute_usd > 0 and not reports_cost


def refusal(
    estimate_usd: float,
    source: str,
    *,
    left_usd: float,
    window_cap_usd: float = math.inf,
) -> str | None:
    """Why a reservation of `estimate_usd` can never be made (None: it could, or the cap is
    simply spent). `left_usd` is what the lifetime cap still gives with nothing running;
    `window_cap_usd` one whole window's cap."""
    if estimate_usd > window_cap_usd + _EPSILON_USD:
        return (
            f"the next run's estimate ${estimate_usd:.2f} (from {source}) exceeds the budget "
            f"window's ${window_cap_usd:.2f} cap: no run can fit in any window; "
            + _KEYS.format(window_cap_usd, "[budget] max_cost_usd (the window's cap)")
        )
    if left_usd <= _EPSILON_USD or estimate_usd <= left_usd + _EPSILON_USD:
        return None
    return (
        f"the next run's estimate ${estimate_usd:.2f} (from {source}) exceeds the "
        f"${left_usd:.2f} left of the shared budget: no run can fit; "
        + _KEYS.format(left_usd, "the [budget] cap")
    )


def first_run_problem(spec: TargetSpec, cap_usd: float, window_cap_usd: float) -> str | None:
    """At `--check`: why `spec`'s first run cannot fit a fresh budget (lifetime cap
    `cap_usd`, each window `window_cap_usd`), or None when it can."""
    if metered_live(spec, None):
        return None
    estimate, source = explain_estimate(
        [],
        spec.estimated_cost_usd,
        FIRST_ESTIMATE_MINUTES * spec.cost_per_minute_usd,
        iteration_limit_usd=spec.max_iteration_cost_usd,
    )
    return refusal(estimate, source, left_usd=cap_usd, window_cap_usd=window_cap_usd)
