"""The shared budget at run time: reservations that wait, and live meters that stop runs.

`SharedBudget.reserve` waits for running iterations to settle when a reservation does not
fit. While an iteration runs it holds a `Meter`: its live cost (wall time at the rate for a
wall-time-priced target, or the orchestrator's own progress lines). Whenever a meter opens,
reports or closes, or money settles, every meter is told when it must be stopped
(policy/live_cost.py) so that neither the shared cap nor the target's caps are passed by
more than what the runs cost during their termination grace.

With a budget window, a reservation that does not fit the window's cap (while the lifetime
cap still has room) yields `WindowFull`: its target waits for the next window, then asks
again. The live meters stop runs at the tighter of the two caps.

`Budget` is what the engine (the supervisor and its target runners) uses of a budget: the
seam between this host's `SharedBudget` and the cluster's (cluster/budget.py), chosen once
by whoever builds the supervisor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import anyio

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.policy.allocation import RateEvidence, pooled_rate
from autoloop_daemon.policy.ledger import Ledger, Reservation
from autoloop_daemon.policy.live_cost import (
    REASON_BUDGET,
    REASON_WINDOW,
    MeterView,
    StopAt,
    live_cost_usd,
    plan_stops,
)
from autoloop_daemon.policy.windows import BudgetWindow

FLEET_EVIDENCE = 100  # settled costs the fleet-wide reservation estimate looks at

__all__ = ["Budget", "BudgetWindow", "Meter", "SharedBudget", "WindowFull"]

OnPlan = Callable[[StopAt], None]
_EPSILON_USD = 1e-9


@dataclass(frozen=True, slots=True)
class WindowFull:
    """The current window's cap is reached: ask again once the window ends at `reset_at`."""

    reset_at: datetime


class Budget(Protocol):
    """What the engine uses of a budget (`SharedBudget` here, `ClusterSharedBudget` in a
    cluster); each member is documented on `SharedBudget`."""

    @property
    def ledger(self) -> Ledger:
        """The ledger the live meters are planned on (the totals in events and snapshots)."""
        ...

    @property
    def window(self) -> BudgetWindow | None:
        """The budget window setting (None: lifetime cap only)."""
        ...

    @property
    def window_start(self) -> datetime | None:
        """The current window's start (None without a window)."""
        ...

    @property
    def window_end(self) -> datetime | None:
        """The current window's end (None without a window)."""
        ...

    @property
    def window_spent_usd(self) -> float:
        """Money charged to the current window (0 without a window)."""
        ...

    @property
    def spent_usd(self) -> float:
        """Money spent so far by every target together."""
        ...

    @property
    def cap_usd(self) -> float:
        """The shared lifetime cap."""
        ...

    @property
    def recent_costs(self) -> deque[float]:
        """The last settled costs, for the fleet-wide reservation estimate."""
        ...

    @property
    def rates(self) -> dict[str, RateEvidence]:
        """Each target's recent improvement rate (targets write their own entry)."""
        ...

    @property
    def pooled_rate(self) -> float:
        """The fleet's rate of closing headroom per iteration."""
        ...

    def roll(self, *, notify: bool = True) -> bool:
        """Enter the window of now if it changed; True if so."""
        ...

    def set_window(self, window: BudgetWindow | None, *, notify: bool = True) -> None:
        """Apply a (new) window setting."""
        ...

    def set_cap(self, cap_usd: float) -> None:
        """Apply a new lifetime cap."""
        ...

    def charge(self, amount_usd: float, window_usd: float | None = None) -> None:
        """Charge money spent outside a reservation."""
        ...

    async def reserve(
        self,
        owner: str,
        amount_usd: float,
        *,
        metered: bool = False,
        iteration: int = 0,
        rate_usd_per_s: float = 0.0,
    ) -> Reservation | WindowFull | None:
        """Reserve `amount_usd` for `owner`'s next run, waiting while it does not fit."""
        ...

    def may_start(self, owner: str) -> bool:
        """True when `owner` may start the run it reserved for now."""
        ...

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Settle `reservation` with the real cost."""
        ...

    def open_meter(
        self, *, rate_usd_per_s: float, own_limit_usd: float, own_reason: str, on_plan: OnPlan
    ) -> Meter:
        """Start metering a running iteration; `on_plan` is told when it must stop."""
        ...


class Meter:
    """One running iteration's live cost; `on_plan` learns when it must stop."""

    def __init__(
        self,
        budget: SharedBudget,
        *,
        rate_usd_per_s: float,
        own_limit_usd: float,
        own_reason: str,
        on_plan: OnPlan,
    ) -> None:
        """Opened by `SharedBudget.open_meter`."""
        self._budget = budget
        self.view = MeterView(anyio.current_time(), rate_usd_per_s, 0.0, own_limit_usd, own_reason)
        self.on_plan = on_plan

    def report(self, cost_usd: float) -> None:
        """The orchestrator said it has spent `cost_usd` so far."""
        if cost_usd > self.view.reported_usd:
            v = self.view
            self.view = MeterView(v.started_s, v.rate_usd_per_s, cost_usd, v.own_limit_usd,
                                  v.own_reason)  # fmt: skip
            self._budget.replan()

    def live_usd(self) -> float:
        """The cost so far."""
        return live_cost_usd(self.view, anyio.current_time())

    def close(self) -> None:
        """The run ended (settle its reservation next)."""
        self._budget.close_meter(self)


class SharedBudget:
    """The ledger shared by every target of a supervisor, with waiting and live meters."""

    def __init__(
        self,
        cap_usd: float,
        spent_usd: float = 0.0,
        on_change: Callable[[], None] | None = None,
        *,
        window: BudgetWindow | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        """Create the budget; `on_change` is called after every settlement, charge and new
        cap (it must not block). `cap_usd` is the lifetime cap; `window` adds a cap per
        window, read on `clock`. Nothing here can block or fail."""
        self.ledger = Ledger(cap_usd, spent_usd)
        self._changed = anyio.Event()
        self._meters: list[Meter] = []
        self.recent_costs: deque[float] = deque(maxlen=FLEET_EVIDENCE)
        self._on_change = on_change
        self._clock = clock
        # Each target's recent improvement rate, for the fleet's pooled rate (allocation).
        self.rates: dict[str, RateEvidence] = {}
        self.window: BudgetWindow | None = None
        self.window_start: datetime | None = None
        self.window_end: datetime | None = None
        self.set_window(window, notify=False)

    def set_window(self, window: BudgetWindow | None, *, notify: bool = True) -> None:
        """Apply a (new) window setting; the current window's spending is kept when the
        window itself stays the same."""
        self.window = window
        self.ledger.window_cap_usd = math.inf if window is None else window.cap_usd
        if window is None:
            self.ledger.window = None
            self.window_start = self.window_end = None
        else:
            self.roll(notify=notify)
        if notify:
            self._notify()
            self.replan()

    def roll(self, *, notify: bool = True) -> bool:
        """Enter the window of now if it changed (spending starts from zero); True if so."""
        if self.window is None:
            return False
        start, end = self.window.window.bounds(self._clock())
        self.window_start, self.window_end = start, end
        if not self.ledger.roll(to_iso(start)):
            return False
        if notify:
            self._notify()
            self.replan()
        return True

    def window_full(self, amount_usd: float, *, metered: bool) -> WindowFull | None:
        """`WindowFull` when `amount_usd` fails only for the window's cap and would fit a
        fresh window; None otherwise."""
        ledger = self.ledger
        if self.window is None or self.window_end is None:
            return None
        if metered:
            lifetime_ok = ledger.lifetime_available_usd > _EPSILON_USD
            window_short = ledger.window_available_usd <= _EPSILON_USD
            fits_fresh = True
        else:
            lifetime_ok = amount_usd <= ledger.lifetime_available_usd + _EPSILON_USD
            window_short = amount_usd > ledger.window_available_usd + _EPSILON_USD
            fits_fresh = amount_usd <= ledger.window_cap_usd + _EPSILON_USD
        if lifetime_ok and window_short and fits_fresh:
            return WindowFull(self.window_end)
        return None

    def ledger_changed(self) -> None:
        """The ledger was changed from outside (a cluster's mirror of its totals): wake the
        waiting reservations, tell `on_change` and replan the meters."""
        self._notify()
        self.replan()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if self._on_change is not None:
            self._on_change()

    async def reserve(
        self,
        owner: str,
        amount_usd: float,
        *,
        metered: bool = False,
        iteration: int = 0,
        rate_usd_per_s: float = 0.0,
    ) -> Reservation | WindowFull | None:
        """Reserve `amount_usd`, waiting for running iterations to settle if needed.
        (`iteration` and `rate_usd_per_s` matter to the cluster's budget only.)

        Returns None when the amount does not fit even with nothing else in flight: the
        caller stops its target with `stopped_budget`; `WindowFull` when only the window's
        cap is in the way (the caller waits for the next window). A `metered` run may start
        with less (see `Ledger.reserve`): the live meter stops it at the cap.
        """
        while True:
            self.roll()
            reservation = self.ledger.reserve(owner, amount_usd, metered=metered)
            if reservation is not None:
                return reservation
            if self.ledger.open_reservations == 0:
                return self.window_full(amount_usd, metered=metered)
            timeout = math.inf
            if self.window_end is not None:
                timeout = max(0.0, (self.window_end - self._clock()).total_seconds()) + 0.01
            with anyio.move_on_after(timeout):
                await self._changed.wait()

    def may_start(self, owner: str) -> bool:
        """True when `owner` may start the run it reserved for now (always, on one host)."""
        return True

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Settle `reservation` with the real cost and wake anyone waiting to reserve."""
        self.ledger.settle(reservation, actual_usd)
        if actual_usd > 0:
            self.recent_costs.append(actual_usd)
        self._notify()
        self.replan()

    def charge(self, amount_usd: float, window_usd: float | None = None) -> None:
        """Charge money spent outside a reservation (`window_usd` of it in this window)."""
        self.roll(notify=False)
        self.ledger.charge(amount_usd, window_usd)
        self._notify()
        self.replan()

    def set_cap(self, cap_usd: float) -> None:
        """Apply a new cap and wake waiters (they may fit now, or must give up)."""
        self.ledger.set_cap(cap_usd)
        self._notify()
        self.replan()

    def open_meter(
        self, *, rate_usd_per_s: float, own_limit_usd: float, own_reason: str, on_plan: OnPlan
    ) -> Meter:
        """Start metering a running iteration; `on_plan` is told when it must stop."""
        meter = Meter(
            self,
            rate_usd_per_s=rate_usd_per_s,
            own_limit_usd=own_limit_usd,
            own_reason=own_reason,
            on_plan=on_plan,
        )
        self._meters.append(meter)
        self.replan()
        return meter

    def close_meter(self, meter: Meter) -> None:
        """Stop metering (idempotent)."""
        if meter in self._meters:
            self._meters.remove(meter)

    def replan(self) -> None:
        """Tell every meter when it must stop, given the money settled and live now."""
        if not self._meters:
            return
        ledger = self.ledger
        # The meters may use what is left under the tighter of the two caps; a cut by the
        # window's cap only makes the targets wait for the next window.
        lifetime_left = ledger.cap_usd - ledger.spent_usd
        window_left = ledger.window_cap_usd - ledger.window_spent_usd
        reason = REASON_WINDOW if window_left < lifetime_left else REASON_BUDGET
        views = [m.view for m in self._meters]
        left = min(lifetime_left, window_left)
        plans = plan_stops(views, 0.0, left, anyio.current_time(), reason)
        for meter, plan in zip(list(self._meters), plans, strict=True):
            meter.on_plan(plan)

    @property
    def live_usd(self) -> float:
        """What the running iterations have cost so far."""
        now = anyio.current_time()
        return math.fsum(live_cost_usd(m.view, now) for m in self._meters)

    @property
    def spent_usd(self) -> float:
        """Money spent so far by every target together."""
        return self.ledger.spent_usd

    @property
    def cap_usd(self) -> float:
        """The shared lifetime cap."""
        return self.ledger.cap_usd

    @property
    def pooled_rate(self) -> float:
        """The fleet's rate of closing headroom per iteration (policy/allocation.py)."""
        return pooled_rate(self.rates.values())

    @property
    def window_spent_usd(self) -> float:
        """Money charged to the current window (0 without a window)."""
        return self.ledger.window_spent_usd if self.window is not None else 0.0


_SHARED_BUDGET_IS_A_BUDGET: type[Budget] = SharedBudget  # mypy checks the seam here
