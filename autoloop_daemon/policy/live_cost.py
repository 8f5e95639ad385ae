"""When running iterations must be stopped so that no cap is passed. Pure.

A running iteration's live cost is what the orchestrator last said it had spent (a progress
line with `cost_usd`), or, for a wall-time-priced target, its elapsed time at the rate,
whichever is larger. Given the money already settled and the live meters, `plan_stops`
returns for each meter the moment it must be stopped and why: the shared cap (every meter
that accrues contributes, so all of them stop together; the budget window's cap when it is
the tighter one), the target's own cap, or the per-iteration limit. Stopping takes the
termination grace, so a cap is passed by at most what the running iterations cost during
that grace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

REASON_BUDGET = "budget"
# The budget window's cap, tighter than the lifetime cap: the run is stopped but its target
# waits for the next window instead of stopping for good.
REASON_WINDOW = "budget_window"
REASON_TARGET_COST = "target_cost"
REASON_ITERATION_COST = "iteration_cost"


@dataclass(frozen=True, slots=True)
class MeterView:
    """One running iteration, as the planner sees it (times on one monotonic clock)."""

    started_s: float
    rate_usd_per_s: float  # 0 unless the target is priced by wall time
    reported_usd: float  # the latest live cost the orchestrator printed (0 if none)
    own_limit_usd: float  # min(target cap - target spent, per-iteration limit); inf if none
    own_reason: str  # REASON_TARGET_COST or REASON_ITERATION_COST


@dataclass(frozen=True, slots=True)
class StopAt:
    """When a meter must be stopped (`at_s` inf: never) and why."""

    at_s: float
    reason: str | None


def live_cost_usd(meter: MeterView, now_s: float) -> float:
    """The meter's cost so far."""
    return max(meter.reported_usd, meter.rate_usd_per_s * max(0.0, now_s - meter.started_s))


def _own_deadline(meter: MeterView, now_s: float) -> float:
    if live_cost_usd(meter, now_s) >= meter.own_limit_usd:
        return now_s
    if meter.rate_usd_per_s > 0 and math.isfinite(meter.own_limit_usd):
        return meter.started_s + meter.own_limit_usd / meter.rate_usd_per_s
    return math.inf


def fleet_deadline(
    meters: Sequence[MeterView], settled_usd: float, cap_usd: float, now_s: float
) -> float:
    """The moment settled money plus every meter's live cost reaches `cap_usd` (inf: never,
    as far as the meters show). Wall-time meters accrue linearly; counting every rate from
    now on is conservative for a meter whose reported cost is still ahead of its rate."""
    if not math.isfinite(cap_usd):
        return math.inf
    remaining = cap_usd - settled_usd - sum(live_cost_usd(m, now_s) for m in meters)
    if remaining <= 0:
        return now_s
    rate = sum(m.rate_usd_per_s for m in meters)
    return now_s + remaining / rate if rate > 0 else math.inf


def plan_stops(
    meters: Sequence[MeterView],
    settled_usd: float,
    cap_usd: float,
    now_s: float,
    shared_reason: str = REASON_BUDGET,
) -> list[StopAt]:
    """For each meter, when it must be stopped and why (the earlier of its own limit and the
    shared cap, whose reason is `shared_reason`)."""
    shared = fleet_deadline(meters, settled_usd, cap_usd, now_s)
    plans = []
    for meter in meters:
        own = _own_deadline(meter, now_s)
        if own <= shared and math.isfinite(own):
            plans.append(StopAt(own, meter.own_reason))
        elif math.isfinite(shared):
            plans.append(StopAt(shared, shared_reason))
        else:
            plans.append(StopAt(math.inf, None))
    return plans


# Under `guarantee = "hard"` a wall-time-priced run is stopped this much earlier than its
# grace alone requires: the timer's lateness, the kill, the reaping and the booking of the
# run's whole duration (from before it was spawned) all happen at the run's rate.
STOP_LATENCY_S = 0.5


def graced_limit_usd(limit_usd: float, rate_usd_per_s: float, grace_s: float) -> float:
    """The live cost at which a run priced at `rate_usd_per_s` must be stopped so that its
    termination grace still fits under `limit_usd` (`guarantee = "hard"`)."""
    return max(0.0, limit_usd - rate_usd_per_s * (grace_s + STOP_LATENCY_S))


def overage_usd(cost_usd: float, limit_usd: float | None) -> float:
    """How much a run's booked cost passes its per-iteration limit (0: within it)."""
    if limit_usd is None or not cost_usd > limit_usd:
        return 0.0
    return cost_usd - limit_usd
