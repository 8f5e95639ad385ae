"""One budget for every host: reservations and settlement as transactions on the budget row.

Each reserve and settle locks the budget row (`SELECT ... FOR UPDATE`), so the check
"spent + reserved + estimate <= cap" and the booking are one step for all hosts together:
the cap holds for any number of hosts (reading the row without the lock overspent in the
measurements of the design notes). A reservation is made under a lease (its fencing token
must still be the target's); settling is idempotent (a retry after a lost commit
acknowledgement changes nothing) and a settlement under a stale token books only the real
cost, replacing what the claim charged when it expired the reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal

import anyio

from autoloop_daemon.policy.ledger import Reservation
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.leases import Lease

DEFAULT_BUDGET = "default"
POLL_S = 0.2  # waiting for other hosts' reservations to settle (no notification is relied on)
_EPSILON = Decimal("0.000000001")

Settled = Literal["settled", "duplicate", "late"]


def money(value: float) -> Decimal:
    """A float amount as the exact decimal of its shortest repr (what the user sees)."""
    return Decimal(repr(float(value)))


@dataclass(slots=True)
class ClusterReservation(Reservation):
    """A reservation row: its id, and the lease it was made under."""

    id: int = 0
    token: int = 0


async def settle_in(
    conn: Any, budget_id: str, target: str, iteration: int, token: int, actual_usd: float
) -> Settled | None:
    """Settle the reservation of (`target`, `iteration`, `token`) with its real cost inside
    the caller's transaction (see `ClusterBudget.settle`); None when there is none (money
    spent without a reservation: the caller charges it). Locks the reservation row, then the
    budget row: the claim's lock order."""
    cur = await conn.execute(
        """SELECT id, budget, state, amount_usd, charged_usd, window_start FROM reservations
           WHERE target = %s AND iteration = %s AND fencing_token = %s FOR UPDATE""",
        (target, iteration, token),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    rid, budget, state, amount, charged, window = row
    await conn.execute("SELECT 1 FROM budgets WHERE id = %s FOR UPDATE", (budget,))
    actual = money(actual_usd)
    if state in ("settled", "late_settled"):
        return "duplicate"
    if state == "open":
        spent, released, new_state = actual, amount, "settled"
    else:  # expired by a takeover: it was charged then; book the real cost instead
        spent, released, new_state = actual - charged, Decimal(0), "late_settled"
    await _book_money(conn, budget, window, spent=spent, released=released)
    await conn.execute(
        "UPDATE reservations SET state = %s, charged_usd = %s WHERE id = %s",
        (new_state, actual, rid),
    )
    return "settled" if new_state == "settled" else "late"


async def _book_money(
    conn: Any, budget: str, window: datetime | None, *, spent: Decimal, released: Decimal
) -> None:
    """Add `spent` to the budget (and its window's row) and release `released` of what was
    reserved. The budget row must be locked already; the window row is locked here (the
    lock order: target, reservation, budget, window)."""
    await conn.execute(
        """UPDATE budgets SET spent_usd = spent_usd + %s, reserved_usd = reserved_usd - %s
           WHERE id = %s""",
        (spent, released, budget),
    )
    if window is not None:
        await conn.execute(
            """UPDATE budget_windows SET spent_usd = spent_usd + %s,
                      reserved_usd = reserved_usd - %s WHERE budget = %s AND starts_at = %s""",
            (spent, released, budget, window),
        )


async def charge_in(conn: Any, budget_id: str, amount_usd: float, reason: str) -> None:
    """Book money spent outside a reservation, inside the caller's transaction (a budget
    row that does not exist yet is created with a zero cap: the daemon sets its cap)."""
    await conn.execute(
        "INSERT INTO budgets (id, cap_usd) VALUES (%s, 0) ON CONFLICT DO NOTHING", (budget_id,)
    )
    await conn.execute(
        "INSERT INTO charges (budget, amount_usd, reason) VALUES (%s, %s, %s)",
        (budget_id, money(amount_usd), reason),
    )
    await conn.execute(
        "UPDATE budgets SET spent_usd = spent_usd + %s WHERE id = %s",
        (money(amount_usd), budget_id),
    )


class FencedError(Exception):
    """The lease was lost: this host may not start an iteration of the target."""


class ClusterBudget:
    """The budget row `budget_id`, shared by every host (SharedBudget's operations, async)."""

    def __init__(self, db: Database, budget_id: str = DEFAULT_BUDGET) -> None:
        """Bind to the row; `ensure` creates it."""
        self._db = db
        self.budget_id = budget_id

    async def ensure(self, cap_usd: float) -> None:
        """Create the budget row with `cap_usd` if absent (an existing cap is kept)."""

        async def work(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO budgets (id, cap_usd) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (self.budget_id, money(cap_usd)),
            )

        await self._db.run(work)

    async def reserve(
        self,
        lease: Lease,
        iteration: int,
        amount_usd: float,
        *,
        metered: bool = False,
        rate_usd_per_s: float = 0.0,
    ) -> ClusterReservation | None:
        """Reserve `amount_usd` for `iteration` of the lease's target, waiting while other
        reservations are open; None when it cannot fit even with none open. A retry for the
        same (target, iteration) returns the reservation already made. FencedError when the
        lease is no longer this host's."""
        while True:
            result = await self.attempt(
                lease, iteration, amount_usd, metered=metered, rate_usd_per_s=rate_usd_per_s
            )
            if isinstance(result, ClusterReservation):
                return result
            if result != "wait":
                return None
            await anyio.sleep(POLL_S)

    async def attempt(
        self,
        lease: Lease,
        iteration: int,
        amount_usd: float,
        *,
        metered: bool = False,
        rate_usd_per_s: float = 0.0,
        window: tuple[datetime, float] | None = None,
    ) -> ClusterReservation | Literal["wait", "never", "window_full"]:
        """One try of `reserve`: the reservation, or "wait" (other reservations are open),
        "window_full" (only the cap of the budget window starting at `window[0]`, whose cap
        is `window[1]`, is in the way: ask again in the next window), or "never" (it cannot
        fit even with none open)."""
        return await self._db.run(
            partial(
                self._try_reserve,
                lease=lease,
                iteration=iteration,
                amount_usd=amount_usd,
                metered=metered,
                rate=rate_usd_per_s,
                window=window,
            )
        )

    async def _try_reserve(
        self,
        conn: Any,
        *,
        lease: Lease,
        iteration: int,
        amount_usd: float,
        metered: bool,
        rate: float,
        window: tuple[datetime, float] | None,
    ) -> ClusterReservation | Literal["wait", "never", "window_full"]:
        existing = await _held_and_open(conn, lease, iteration)
        if existing is not None:  # a retry whose acknowledgement was lost
            return existing
        cur = await conn.execute(
            """SELECT cap_usd - spent_usd - reserved_usd, reserved_usd FROM budgets
               WHERE id = %s FOR UPDATE""",
            (self.budget_id,),
        )
        lifetime, reserved = await cur.fetchone()
        in_window = None if window is None else await self._window_left(conn, *window)
        available = lifetime if in_window is None else min(lifetime, in_window)
        amount = money(amount_usd)
        if amount > available + _EPSILON:
            if reserved > 0 or await _any_open(conn, self.budget_id):
                # Wait, even for a metered run: started with a sliver beside other hosts'
                # reservations, its meter (which counts them) would cut it at once.
                return "wait"
            if metered and available > _EPSILON:
                amount = available  # the last money: its live meter stops it at the cap
            elif window is not None and in_window is not None:
                return _full_or_never(amount, lifetime, in_window, money(window[1]), metered)
            else:
                return "never"
        start = None if window is None else window[0]
        cur = await conn.execute(
            """INSERT INTO reservations (budget, target, iteration, fencing_token, host,
                   amount_usd, rate_usd_per_s, window_start)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (self.budget_id, lease.target, iteration, lease.token, lease.host, amount,
             money(rate), start),
        )  # fmt: skip
        (rid,) = await cur.fetchone()
        await _book_money(conn, self.budget_id, start, spent=Decimal(0), released=-amount)
        return ClusterReservation(lease.target, float(amount), id=rid, token=lease.token)

    async def _window_left(self, conn: Any, start: datetime, cap_usd: float) -> Decimal:
        """Lock the window's row (created, or its cap set to the configured one) and return
        what is left in it."""
        await conn.execute(
            """INSERT INTO budget_windows (budget, starts_at, cap_usd) VALUES (%s, %s, %s)
               ON CONFLICT (budget, starts_at) DO UPDATE SET cap_usd = excluded.cap_usd""",
            (self.budget_id, start, money(cap_usd)),
        )
        cur = await conn.execute(
            """SELECT cap_usd - spent_usd - reserved_usd FROM budget_windows
               WHERE budget = %s AND starts_at = %s FOR UPDATE""",
            (self.budget_id, start),
        )
        (left,) = await cur.fetchone()
        return Decimal(left)

    async def settle(self, reservation: ClusterReservation, actual_usd: float) -> Settled:
        """Book the real cost: `settled`; `duplicate` for a retry of a settlement already
        made (nothing changes); `late` when the claim of another host had expired it (its
        expiry charge is replaced by the real cost)."""

        async def work(conn: Any) -> Settled:
            cur = await conn.execute(
                "SELECT target, iteration, fencing_token FROM reservations WHERE id = %s",
                (reservation.id,),
            )
            row = await cur.fetchone()
            if row is None:  # pruned (retention.py): only settled rows are, once recorded
                return "duplicate"
            target, iteration, token = row
            result = await settle_in(conn, self.budget_id, target, iteration, token, actual_usd)
            assert result is not None  # the row exists: it was read just above
            return result

        result = await self._db.run(work)
        reservation.settled = True
        return result

    async def cancel(self, reservation: ClusterReservation) -> None:
        """Give back a reservation whose iteration never started (idempotent): the row goes,
        so the same iteration may be reserved again under this lease. Expired by a takeover
        meanwhile: its expiry charge is replaced by nothing spent."""

        async def work(conn: Any) -> None:
            cur = await conn.execute(
                """SELECT target, iteration, fencing_token, state, amount_usd, window_start
                   FROM reservations WHERE id = %s FOR UPDATE""",
                (reservation.id,),
            )
            row = await cur.fetchone()
            if row is None:
                return
            target, iteration, token, state, amount, window = row
            if state != "open":
                await settle_in(conn, self.budget_id, target, iteration, token, 0.0)
                return
            await conn.execute("SELECT 1 FROM budgets WHERE id = %s FOR UPDATE", (self.budget_id,))
            await conn.execute("DELETE FROM reservations WHERE id = %s", (reservation.id,))
            await _book_money(conn, self.budget_id, window, spent=Decimal(0), released=amount)

        await self._db.run(work)
        reservation.settled = True

    async def charge(self, amount_usd: float, reason: str) -> None:
        """Book money spent outside a reservation."""

        async def work(conn: Any) -> None:
            await charge_in(conn, self.budget_id, amount_usd, reason)

        await self._db.run(work)

    async def set_cap(self, cap_usd: float) -> None:
        """Apply a new cap (open reservations are kept)."""

        async def work(conn: Any) -> None:
            await conn.execute(
                "UPDATE budgets SET cap_usd = %s WHERE id = %s", (money(cap_usd), self.budget_id)
            )

        await self._db.run(work)

    async def totals(
        self, window_start: datetime | None = None, *, timeout_s: float | None = None
    ) -> Totals:
        """The cap, spent and reserved money, exact; with `window_start`, the same for that
        window (zeros when it has no row yet). `timeout_s` bounds the call."""

        async def work(conn: Any) -> Totals:
            cur = await conn.execute(
                "SELECT cap_usd, spent_usd, reserved_usd FROM budgets WHERE id = %s",
                (self.budget_id,),
            )
            budget = await cur.fetchone()
            if budget is None:
                raise ClusterError(f"no budget {self.budget_id!r} yet: no daemon has started")
            cap, spent, reserved = budget
            window = None
            if window_start is not None:
                cur = await conn.execute(
                    """SELECT spent_usd, reserved_usd FROM budget_windows
                       WHERE budget = %s AND starts_at = %s""",
                    (self.budget_id, window_start),
                )
                row = await cur.fetchone()
                window = (Decimal(0), Decimal(0)) if row is None else (row[0], row[1])
            return Totals(cap, spent, reserved, window)

        return await self._db.run(work, timeout_s=timeout_s)


@dataclass(frozen=True, slots=True)
class Totals:
    """The budget row (and a window's spent and reserved money), exact."""

    cap: Decimal
    spent: Decimal
    reserved: Decimal
    window: tuple[Decimal, Decimal] | None = None


def _full_or_never(
    amount: Decimal, lifetime: Decimal, window: Decimal, window_cap: Decimal, metered: bool
) -> Literal["window_full", "never"]:
    """With nothing open anywhere: "window_full" when only the window's cap is in the way
    and the amount would fit a fresh window (policy as in engine/budget.py), else "never"."""
    if metered:
        lifetime_ok, window_short, fits_fresh = lifetime > _EPSILON, window <= _EPSILON, True
    else:
        lifetime_ok = amount <= lifetime + _EPSILON
        window_short = amount > window + _EPSILON
        fits_fresh = amount <= window_cap + _EPSILON
    return "window_full" if lifetime_ok and window_short and fits_fresh else "never"


async def _any_open(conn: Any, budget_id: str) -> bool:
    """Whether any reservation of the budget is open (one probe of the partial index
    `reservations_open`: the budget row's reserved total answers first in the wait path,
    this only for open reservations of nothing)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM reservations WHERE budget = %s AND state = 'open')",
        (budget_id,),
    )
    (found,) = await cur.fetchone()
    return bool(found)


async def _held_and_open(conn: Any, lease: Lease, iteration: int) -> ClusterReservation | None:
    """Lock the target's row under `lease` (FencedError when the lease is lost), then find
    the reservation of `iteration` already open under it (None: none)."""
    # Target row first, then the budget row: one lock order. KEY SHARE keeps a claim from
    # moving the lease meanwhile (it locks FOR UPDATE) but not the holder's renewal, which
    # must never wait behind the budget row's queue.
    cur = await conn.execute(
        """SELECT 1 FROM targets WHERE name = %s AND lease_holder = %s
           AND fencing_token = %s AND lease_expires_at > now() FOR KEY SHARE""",
        (lease.target, lease.host, lease.token),
    )
    if await cur.fetchone() is None:
        raise FencedError(f"lease on {lease.target} lost (token {lease.token})")
    cur = await conn.execute(
        """SELECT id, amount_usd FROM reservations
           WHERE target = %s AND iteration = %s AND fencing_token = %s AND state = 'open'""",
        (lease.target, iteration, lease.token),
    )
    existing = await cur.fetchone()
    if existing is None:
        return None
    return ClusterReservation(lease.target, float(existing[1]), id=existing[0], token=lease.token)
