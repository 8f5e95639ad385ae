"""The shared budget in cluster mode: every reservation is a transaction on the cluster's
budget row, and this host's ledger mirrors the cluster's totals for its live meters.

`ClusterSharedBudget` is the engine's `Budget` (engine/budget.py), so a target runner cannot
tell the difference. It holds a `SharedBudget` as its local mirror (the ledger the live
meters are planned on, the window, the fleet's recent costs and rates) and hands it what it
does not change. `reserve` reserves in the database under the target's lease (the cap holds
for any number of hosts; storage/postgres/ledger.py); while the database cannot be reached
nothing new starts (the reservation is retried); a lost lease stops the target. `settle`
is synchronous for the runner: the mirror settles at once and the database settles in
the background, retried until it succeeds (idempotent; the record of a run usually settled
it already, in the same transaction as its log entry). The mirror: its spent money is the
cluster's, and its cap is the cluster's cap less what other hosts hold reserved, so the live
meters stop this host's runs where the cluster's money ends. It is read again as soon as a
reservation is granted, before its run starts: a mirror read while other hosts held the
whole cap would cut the run at once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from datetime import datetime

import anyio
import anyio.lowlevel
import structlog

from autoloop_daemon.clock import now_utc
from autoloop_daemon.engine.budget import (
    Budget,
    BudgetWindow,
    Meter,
    OnPlan,
    SharedBudget,
    WindowFull,
)
from autoloop_daemon.policy.allocation import RateEvidence
from autoloop_daemon.policy.ledger import Ledger, Reservation
from autoloop_daemon.storage.postgres.db import ClusterError
from autoloop_daemon.storage.postgres.leases import Lease
from autoloop_daemon.storage.postgres.ledger import (
    POLL_S,
    ClusterBudget,
    ClusterReservation,
    Totals,
)
from autoloop_daemon.storage.postgres.ledger import FencedError as LeaseFencedError

log = structlog.get_logger("autoloopd.cluster")

RETRY_S = 1.0  # a database call that failed is tried again after this


class ClusterSharedBudget:
    """The engine's `Budget` on the cluster's budget row (see the module docstring)."""

    def __init__(
        self,
        cluster: ClusterBudget,
        cap_usd: float,
        *,
        lease_of: Callable[[str], Lease | None],
        may_start: Callable[[], bool],
        on_lost: Callable[[str], None],
        on_change: Callable[[], None] | None = None,
        window: BudgetWindow | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        """`lease_of(target)` is the lease held on it (None: not held); `may_start()` is
        False while the leases are not known good (no new run starts); `on_lost(target)`
        stops a target whose lease turned out lost. `on_change` and `window` are the
        mirror's (`SharedBudget`); its window is read on `clock` (the database's)."""
        self.mirror = SharedBudget(cap_usd, on_change=on_change, window=window, clock=clock)
        self.cluster = cluster
        self._lease_of = lease_of
        self._may_start = may_start
        self._on_lost = on_lost
        self._unsettled: list[tuple[ClusterReservation, float]] = []
        self._work = anyio.Event()
        self._cap_wanted: float | None = None
        self._configured_cap = cap_usd
        self.reachable = True
        self._syncing = anyio.Lock()

    # ----------------------------------------------------------------- the mirror's own

    @property
    def ledger(self) -> Ledger:
        """The mirror's ledger: the cluster's totals as this host's meters may spend them."""
        return self.mirror.ledger

    @property
    def window(self) -> BudgetWindow | None:
        """The budget window setting (None: lifetime cap only)."""
        return self.mirror.window

    @property
    def window_start(self) -> datetime | None:
        """The current window's start (None without a window)."""
        return self.mirror.window_start

    @property
    def window_end(self) -> datetime | None:
        """The current window's end (None without a window)."""
        return self.mirror.window_end

    @property
    def window_spent_usd(self) -> float:
        """Money charged to the current window, cluster-wide as last mirrored."""
        return self.mirror.window_spent_usd

    @property
    def spent_usd(self) -> float:
        """Money spent by the whole cluster, as last mirrored."""
        return self.mirror.spent_usd

    @property
    def recent_costs(self) -> deque[float]:
        """The costs settled on this host, for the reservation estimate."""
        return self.mirror.recent_costs

    @property
    def rates(self) -> dict[str, RateEvidence]:
        """The recent improvement rates of the targets run here."""
        return self.mirror.rates

    @property
    def pooled_rate(self) -> float:
        """The pooled rate of the targets run here (policy/allocation.py)."""
        return self.mirror.pooled_rate

    def roll(self, *, notify: bool = True) -> bool:
        """Enter the window of now if it changed (the mirror's window); True if so."""
        return self.mirror.roll(notify=notify)

    def set_window(self, window: BudgetWindow | None, *, notify: bool = True) -> None:
        """Apply a (new) window setting to the mirror."""
        self.mirror.set_window(window, notify=notify)

    def charge(self, amount_usd: float, window_usd: float | None = None) -> None:
        """Charge the mirror money spent outside a reservation (the cluster's row holds
        every pushed entry already)."""
        self.mirror.charge(amount_usd, window_usd)

    def open_meter(
        self, *, rate_usd_per_s: float, own_limit_usd: float, own_reason: str, on_plan: OnPlan
    ) -> Meter:
        """Start metering a running iteration on the mirror."""
        return self.mirror.open_meter(
            rate_usd_per_s=rate_usd_per_s,
            own_limit_usd=own_limit_usd,
            own_reason=own_reason,
            on_plan=on_plan,
        )

    # ----------------------------------------------------------------- the cluster's

    async def reserve(
        self,
        owner: str,
        amount_usd: float,
        *,
        metered: bool = False,
        iteration: int = 0,
        rate_usd_per_s: float = 0.0,
    ) -> Reservation | WindowFull | None:
        """Reserve in the database (waiting while other hosts' reservations are open);
        None when it cannot fit even with none open anywhere. Waits while the database is
        unreachable or the leases are stale; a lost lease stops the target (`on_lost`) and
        waits for the stop to cancel this call. `rate_usd_per_s` prices the run if its host
        dies: a takeover charges its wall time so far at that rate, up to the reservation."""
        while True:
            lease = self._lease_of(owner)
            if lease is None:
                self._on_lost(owner)
                await anyio.sleep_forever()
                continue
            if not self._may_start():
                await anyio.sleep(POLL_S)
                continue
            self.roll()
            window = None
            if self.window is not None and self.window_start is not None:
                window = (self.window_start, self.window.cap_usd)
            try:
                # Shielded: a reservation made must come back to the caller, or it would stay
                # open with no one to settle it (the caller settles it if it was stopped).
                with anyio.CancelScope(shield=True):
                    result = await self.cluster.attempt(
                        lease, iteration, amount_usd, metered=metered,
                        rate_usd_per_s=rate_usd_per_s, window=window,
                    )  # fmt: skip
                    if isinstance(result, ClusterReservation):
                        self._book_local(result)
                        await self._refresh()
            except LeaseFencedError:
                self._on_lost(owner)
                await anyio.sleep_forever()
            except ClusterError as exc:
                self._unreachable(exc)
                await anyio.sleep(RETRY_S)
                continue
            self.reachable = True
            if isinstance(result, ClusterReservation):
                return result
            if result == "never":
                return None
            if result == "window_full":
                assert self.window_end is not None
                return WindowFull(self.window_end)
            await anyio.sleep(POLL_S)

    def _book_local(self, reservation: ClusterReservation) -> None:
        ledger = self.ledger
        ledger.reserved_usd += reservation.amount_usd
        ledger.window_reserved_usd += reservation.amount_usd
        ledger.open_reservations += 1
        reservation.window = ledger.window
        self._wake_refresh()

    def may_start(self, owner: str) -> bool:
        """The lease is still held and known good: checked again just before the run
        starts (a host frozen between its reservation and its run must not start it)."""
        return self._lease_of(owner) is not None and self._may_start()

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Settle the mirror now; the database in the background (see the module docstring)."""
        if reservation.settled:
            return
        self.mirror.settle(reservation, actual_usd)
        if isinstance(reservation, ClusterReservation):
            self._unsettled.append((reservation, actual_usd))
            self._wake_refresh()

    def set_cap(self, cap_usd: float) -> None:
        """A reload's new cap: the cluster's row takes it at the next refresh."""
        self._cap_wanted = self._configured_cap = cap_usd
        self._wake_refresh()

    def _wake_refresh(self) -> None:
        self._work.set()

    async def _refresh(self) -> None:
        """Mirror the cluster's totals now, after a reservation and before its run starts:
        the run's meter must not be planned on a mirror read before the reservation (when
        other hosts may have held the whole cap: it would cut the run at once). Best effort,
        bounded: otherwise the background loop, woken by the booking, does it."""
        with anyio.move_on_after(RETRY_S):
            async with self._syncing:  # not in the middle of a round: `pending` would be off
                try:
                    window_start = self.window_start if self.window else None
                    totals = await self.cluster.totals(window_start, timeout_s=RETRY_S)
                except ClusterError as exc:
                    self._unreachable(exc)
                    return
                self._mirror(totals)

    def _unreachable(self, exc: ClusterError) -> None:
        if self.reachable:
            log.warning("cluster_database_unreachable", error=str(exc))
        self.reachable = False

    async def run(self, every_s: float) -> None:
        """Settle what waits, apply a new cap and refresh the mirror, at least every
        `every_s` and whenever something changed; until cancelled."""
        while True:
            with anyio.move_on_after(every_s):
                await self._work.wait()
            self._work = anyio.Event()
            try:
                await self.sync()
            except ClusterError as exc:
                self._unreachable(exc)
                await anyio.sleep(RETRY_S)

    async def sync(self) -> None:
        """One round of `run` (also the last one at shutdown). Raises ClusterError."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        if self._cap_wanted is not None:
            await self.cluster.set_cap(self._cap_wanted)
            self._cap_wanted = None
        while self._unsettled:
            reservation, actual = self._unsettled[0]
            if actual > 0:
                await self.cluster.settle(reservation, actual)
            else:  # nothing ran (a stop came first): give it back, the number may be reused
                await self.cluster.cancel(reservation)
            self._unsettled.pop(0)
        self.roll(notify=False)
        totals = await self.cluster.totals(self.window_start if self.window else None)
        self.reachable = True
        self._mirror(totals)

    @property
    def unsettled(self) -> int:
        """Settlements not yet written to the database."""
        return len(self._unsettled)

    def _mirror(self, totals: Totals) -> None:
        """This host's ledger from the cluster's totals: spent is the cluster's (plus what
        was settled here and not yet there), the caps less what other hosts hold reserved."""
        ledger = self.ledger
        # Settled here but not yet there: still open there, and this host's, not another's.
        pending_usd = math.fsum(r.amount_usd for r, _ in self._unsettled)
        mine = (ledger.reserved_usd if ledger.open_reservations else 0.0) + pending_usd
        pending = math.fsum(a for _, a in self._unsettled)
        mirrored = (
            float(totals.cap) - max(0.0, float(totals.reserved) - mine),
            float(totals.spent) + pending,
        )
        before = (ledger.cap_usd, ledger.spent_usd, ledger.window_cap_usd, ledger.window_spent_usd)
        ledger.cap_usd, ledger.spent_usd = mirrored
        if totals.window is not None and self.window is not None:
            window_spent, window_reserved = totals.window
            mine_here = (ledger.window_reserved_usd if ledger.open_reservations else 0.0) + (
                math.fsum(r.amount_usd for r, _ in self._unsettled if r.window == ledger.window)
            )
            others = max(0.0, float(window_reserved) - mine_here)
            ledger.window_cap_usd = self.window.cap_usd - others
            ledger.window_spent_usd = float(window_spent) + math.fsum(
                a for r, a in self._unsettled if r.window == ledger.window
            )
        after = (ledger.cap_usd, ledger.spent_usd, ledger.window_cap_usd, ledger.window_spent_usd)
        if after != before:
            self.mirror.ledger_changed()

    @property
    def cap_usd(self) -> float:
        """The cluster's cap (the mirror's is less what other hosts hold reserved)."""
        return self._configured_cap

    async def start(self, cap_usd: float) -> None:
        """Create the budget row if absent, apply the configured cap, read the totals."""
        self._configured_cap = cap_usd
        await self.cluster.ensure(cap_usd)
        self._cap_wanted = cap_usd
        await self.sync()


async def settle_remaining(budget: ClusterSharedBudget, timeout_s: float) -> int:
    """Write the settlements still waiting (shutdown), within `timeout_s`; how many are left
    (they are then settled by the next claim of the targets: never lost, at worst charged)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(timeout_s):
        try:
            await budget.sync()
        except ClusterError as exc:
            log.warning("cluster_settlements_left", error=str(exc), left=budget.unsettled)
    await anyio.lowlevel.checkpoint()
    return budget.unsettled


_CLUSTER_BUDGET_IS_A_BUDGET: type[Budget] = ClusterSharedBudget  # mypy checks the seam here
