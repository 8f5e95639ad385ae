"""The shared budget at run time: reservations that wait, and live meters that stop runs.

`SharedBudget.reserve` waits for running iterations to settle when a reservation does not
fit. While an iteration runs it holds a `Meter`: its live cost (wall time at the rate for a
wall-time-priced target, or the orchestrator's own progress lines). Whenever a meter opens,
reports or closes, or money settles, every meter is told when it must be stopped
(policy/live_cost.py) so that neither the shared cap nor the target's caps are passed by
more than what the runs cost during their termination grace.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import anyio

from autoloop_daemon.policy.budget import Ledger, Reservation
from autoloop_daemon.policy.live_cost import MeterView, StopAt, live_cost_usd, plan_stops

FLEET_EVIDENCE = 100  # settled costs the fleet-wide reservation estimate looks at

OnPlan = Callable[[StopAt], None]


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

    def __init__(self, cap_usd: float, spent_usd: float = 0.0) -> None:
        """Create the budget; nothing here can block or fail."""
        self.ledger = Ledger(cap_usd, spent_usd)
        self._changed = anyio.Event()
        self._meters: list[Meter] = []
        self.recent_costs: deque[float] = deque(maxlen=FLEET_EVIDENCE)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def reserve(
        self, owner: str, amount_usd: float, *, metered: bool = False
    ) -> Reservation | None:
        """Reserve `amount_usd`, waiting for running iterations to settle if needed.

        Returns None when the amount does not fit even with nothing else in flight: the
        caller stops its target with `stopped_budget`. A `metered` run may start with less
        (see `Ledger.reserve`): the live meter stops it at the cap.
        """
        while True:
            reservation = self.ledger.reserve(owner, amount_usd, metered=metered)
            if reservation is not None:
                return reservation
            if self.ledger.open_reservations == 0:
                return None
            await self._changed.wait()

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Settle `reservation` with the real cost and wake anyone waiting to reserve."""
        self.ledger.settle(reservation, actual_usd)
        if actual_usd > 0:
            self.recent_costs.append(actual_usd)
        self._notify()
        self.replan()

    def charge(self, amount_usd: float) -> None:
        """Charge money spent outside a reservation."""
        self.ledger.charge(amount_usd)
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
        plans = plan_stops(
            [m.view for m in self._meters],
            self.ledger.spent_usd,
            self.ledger.cap_usd,
            anyio.current_time(),
        )
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
        """The shared cap."""
        return self.ledger.cap_usd
