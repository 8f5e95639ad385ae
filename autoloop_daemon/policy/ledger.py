"""The shared budget's arithmetic: reserve an iteration's expected cost before it starts,
settle after. Pure; `engine/budget.py` adds waiting. An iteration whose reservation
does not fit waits until every running iteration has settled; if it still does not fit, its
target stops with `stopped_budget`. Because nothing starts unless spent + reserved + estimate
stays within the cap, the total can only exceed the cap by what running iterations cost beyond
their estimates.

With a budget window (policy/windows.py) the ledger also keeps a second cap, per window: a
reservation remembers the window it was made in and its cost is charged there; when a new
window opens (`roll`), its spending starts from what is already known to belong to it.
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
    window: str | None = None  # the window it was made in (its start, ISO), if any


class Ledger:
    """Pure bookkeeping of a cap, money spent and money reserved."""

    def __init__(self, cap_usd: float, spent_usd: float = 0.0) -> None:
        """Start with `spent_usd` already spent (recovered from the targets' logs)."""
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self.open_reservations = 0
        # The window cap (inf: no window), the current window and its spending.
        self.window_cap_usd = math.inf
        self.window: str | None = None
        self.window_spent_usd = 0.0
        self.window_reserved_usd = 0.0

    @property
    def lifetime_available_usd(self) -> float:
        """Money neither spent nor reserved under the lifetime cap."""
        return self.cap_usd - self.spent_usd - self.reserved_usd

    @property
    def window_available_usd(self) -> float:
        """Money neither spent nor reserved in the current window."""
        return self.window_cap_usd - self.window_spent_usd - self.window_reserved_usd

    @property
    def available_usd(self) -> float:
        """Money neither spent nor reserved (the tighter of the lifetime and window caps)."""
        return min(self.lifetime_available_usd, self.window_available_usd)

    def roll(self, window: str, spent_usd: float = 0.0) -> bool:
        """Enter `window` (a no-op when already in it) with `spent_usd` already charged to
        it; True when the window changed."""
        if window == self.window:
            return False
        self.window = window
        self.window_spent_usd = spent_usd
        self.window_reserved_usd = 0.0
        return True

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
        self.window_reserved_usd += amount_usd
        self.open_reservations += 1
        return Reservation(owner, amount_usd, window=self.window)

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
        if reservation.window == self.window:
            self.window_reserved_usd = max(0.0, self.window_reserved_usd - reservation.amount_usd)
            if self.open_reservations == 0:
                self.window_reserved_usd = 0.0
            self.window_spent_usd += actual_usd

    def charge(self, amount_usd: float, window_usd: float | None = None) -> None:
        """Charge money spent outside a reservation (e.g. an interrupted run found at start);
        `window_usd` of it (default all) belongs to the current window."""
        self.spent_usd += amount_usd
        self.window_spent_usd += amount_usd if window_usd is None else window_usd

    def set_cap(self, cap_usd: float) -> None:
        """Apply a new cap (config reload); running reservations are kept."""
        self.cap_usd = cap_usd


FLEET_PERCENTILE = 1.0  # the maximum: one dear run anywhere raises every reservation


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
    """The reservation for a target's next iteration (`explain_estimate` says why)."""
    return explain_estimate(
        recent_costs_usd,
        configured_usd,
        fallback_usd,
        fleet_recent_usd=fleet_recent_usd,
        iteration_limit_usd=iteration_limit_usd,
    )[0]


def explain_estimate(
    recent_costs_usd: Sequence[float],
    configured_usd: float | None,
    fallback_usd: float,
    *,
    fleet_recent_usd: Sequence[float] = (),
    iteration_limit_usd: float | None = None,
) -> tuple[float, str]:
    """The reservation for a target's next iteration and the config key it comes from.

    With a per-iteration limit, the limit (a run is stopped when it reaches it, where its
    live cost can be seen). Otherwise the largest of: the target's last three costs (or,
    before it has any, the configured estimate) and the fleet's highest recent
    costs (so that a rise seen on other targets is reserved for here too); with no evidence
    at all, `fallback_usd`. The key names what a user changes to change the estimate.
    """
    if iteration_limit_usd is not None:
        return iteration_limit_usd, "max_iteration_cost_usd"
    own = [c for c in recent_costs_usd[-3:] if c > 0]
    evidence = [(c, "the target's recent runs") for c in own]
    if not own and configured_usd is not None:
        evidence.append((configured_usd, "estimated_cost_usd"))
    fleet = percentile([c for c in fleet_recent_usd if c > 0], FLEET_PERCENTILE)
    if fleet > 0:
        evidence.append((fleet, "the fleet's dearest recent run"))
    if not evidence:
        return fallback_usd, "10 min at cost_per_minute_usd, as no estimated_cost_usd is set"
    return max(evidence, key=lambda pair: pair[0])
