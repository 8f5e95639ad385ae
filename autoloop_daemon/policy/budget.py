"""The shared budget's arithmetic: reserve an iteration's expected cost before it starts,
settle after. Pure; `runtime/budget.py` adds waiting. An iteration whose reservation
does not fit waits until every running iteration has settled; if it still does not fit, its
target stops with `stopped_budget`. Because nothing starts unless spent + reserved + estimate
stays within the cap, the total can only exceed the cap by what running iterations cost beyond
their estimates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Money is compared with a little slack so that float sums do not refuse an exact fit.
_EPSILON_USD = 1e-9


@dataclass(slots=True)
class Reservation:
    """Money set aside for one running iteration."""

    owner: str
    amount_usd: float
    settled: bool = False


class Ledger:
    """Pure bookkeeping of a cap, money spent and money reserved."""

    def __init__(self, cap_usd: float, spent_usd: float = 0.0) -> None:
        """Start with `spent_usd` already spent (recovered from the targets' logs)."""
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self.open_reservations = 0

    @property
    def available_usd(self) -> float:
        """Money neither spent nor reserved."""
        return self.cap_usd - self.spent_usd - self.reserved_usd

    def fits(self, amount_usd: float) -> bool:
        """True when `amount_usd` can be reserved now."""
        return amount_usd <= self.available_usd + _EPSILON_USD

    def reserve(
        self, owner: str, amount_usd: float, *, metered: bool = False
    ) -> Reservation | None:
        """Set `amount_usd` aside for `owner`, or return None when it does not fit.

        A `metered` run (its live cost is watched and it is stopped at the cap) may start with
        whatever is left when that is less than its estimate, as long as something is left.
        """
        if metered and not self.fits(amount_usd) and self.available_usd > _EPSILON_USD:
            amount_usd = self.available_usd
        if not self.fits(amount_usd):
            return None
        self.reserved_usd += amount_usd
        self.open_reservations += 1
        return Reservation(owner, amount_usd)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Release `reservation` and charge what the iteration really cost (idempotent)."""
        if reservation.settled:
            return
        reservation.settled = True
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.amount_usd)
        self.open_reservations -= 1
        if self.open_reservations == 0:
            self.reserved_usd = 0.0  # drop accumulated float dust
        self.spent_usd += actual_usd

    def charge(self, amount_usd: float) -> None:
        """Charge money spent outside a reservation (e.g. an interrupted run found at start)."""
        self.spent_usd += amount_usd

    def set_cap(self, cap_usd: float) -> None:
        """Apply a new cap (config reload); running reservations are kept."""
        self.cap_usd = cap_usd


FLEET_PERCENTILE = 0.95


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def estimate_cost(
    recent_costs_usd: Sequence[float],
    configured_usd: float | None,
    fallback_usd: float,
    *,
    fleet_recent_usd: Sequence[float] = (),
    iteration_limit_usd: float | None = None,
) -> float:
    """The reservation for a target's next iteration.

    With a per-iteration limit, the limit (a run is stopped when it reaches it, where its
    live cost can be seen). Otherwise the largest of: the target's last three costs (or,
    before it has any, the configured estimate) and the fleet's 95th percentile of recent
    costs (so that a rise seen on other targets is reserved for here too); with no evidence
    at all, `fallback_usd`.
    """
    if iteration_limit_usd is not None:
        return iteration_limit_usd
    evidence = [c for c in recent_costs_usd[-3:] if c > 0]
    if not evidence and configured_usd is not None:
        evidence.append(configured_usd)
    fleet = percentile([c for c in fleet_recent_usd if c > 0], FLEET_PERCENTILE)
    if fleet > 0:
        evidence.append(fleet)
    return max(evidence) if evidence else fallback_usd
