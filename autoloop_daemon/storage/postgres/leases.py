"""Leases on targets: one host runs a target at a time, and a dead host's targets move.

A lease is (holder, expiry on the database clock, fencing token). Claiming takes free or
expired leases and bumps the token; in the same transaction, open reservations of earlier
tokens are closed as `expired` and charged (elapsed time x rate, capped at the reservation:
the old host may really have spent it), and settled ones whose iteration was never recorded
become `late_settled` (the budget's background settlement can book a run before its record
is pushed; a takeover in between means that record will be refused). Renewing and
releasing match holder and token, so a host whose lease moved cannot extend or drop the new
holder's lease; a write under an old token is refused (store.py, budget.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autoloop_daemon.storage.postgres.db import Database

RENEW_LOCK_TIMEOUT_MS = 1000  # a renewal fails (and is tried again) rather than queue


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: write under `token` only."""

    target: str
    host: str
    token: int
    expires_at: datetime


async def register(db: Database, names: Iterable[str]) -> None:
    """Make sure every target has a row (idempotent)."""
    rows = [(n,) for n in sorted(set(names))]

    async def work(conn: Any) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO targets (name) VALUES (%s) ON CONFLICT DO NOTHING", rows
            )

    if rows:
        await db.run(work)


_EXPIRE_OLD_RESERVATIONS = """
WITH old AS (
    SELECT r.id, r.budget, r.window_start, r.amount_usd,
           least(r.amount_usd,
                 r.rate_usd_per_s * extract(epoch FROM now() - r.created_at)::numeric) AS cost
    FROM reservations r
    JOIN unnest(%(names)s::text[], %(tokens)s::bigint[]) AS c(name, token)
      ON r.target = c.name AND r.fencing_token < c.token
    WHERE r.state = 'open'
    ORDER BY r.id
    FOR UPDATE
), closed AS (
    UPDATE reservations r SET state = 'expired', charged_usd = old.cost
    FROM old WHERE r.id = old.id
    RETURNING old.budget, old.window_start, old.cost, old.amount_usd
), by_budget AS (
    UPDATE budgets b SET spent_usd = b.spent_usd + s.cost,
                         reserved_usd = b.reserved_usd - s.amount
    FROM (SELECT budget, sum(cost) AS cost, sum(amount_usd) AS amount
          FROM closed GROUP BY budget) s
    WHERE b.id = s.budget
)
SELECT budget, window_start, sum(cost), sum(amount_usd) FROM closed
WHERE window_start IS NOT NULL GROUP BY budget, window_start ORDER BY budget, window_start
"""

# A run settled under an earlier token whose iteration its host has not recorded (its push
# was deferred, then the host froze or died): from now on that push is fenced, so the
# settlement is a late one. Its money stays booked as it is; only the label says so.
_FENCE_SETTLED_UNRECORDED = """
UPDATE reservations r SET state = 'late_settled'
FROM unnest(%(names)s::text[], %(tokens)s::bigint[]) AS c(name, token)
WHERE r.target = c.name AND r.state = 'settled' AND r.fencing_token < c.token
  AND NOT EXISTS (SELECT 1 FROM iterations i
                  WHERE i.target = r.target AND i.iteration = r.iteration
                    AND i.host = r.host AND i.fencing_token >= r.fencing_token)
"""

# Then the windows' rows, after the budget rows: the lock order of every transaction.
_EXPIRE_IN_WINDOW = """
UPDATE budget_windows SET spent_usd = spent_usd + %s, reserved_usd = reserved_usd - %s
WHERE budget = %s AND starts_at = %s
"""


async def _expire_old(conn: Any, tokens: dict[str, int]) -> None:
    """Close the open reservations of tokens earlier than each target's new one as expired,
    charged (see the module docstring), on the budget and on their windows; a settled one
    whose iteration was not recorded becomes late_settled (its record can only be refused
    now). Set-based: one statement each, whatever the number of targets."""
    if not tokens:
        return
    params = {"names": list(tokens), "tokens": list(tokens.values())}
    cur = await conn.execute(_EXPIRE_OLD_RESERVATIONS, params)
    for budget, window, cost, amount in await cur.fetchall():
        await conn.execute(_EXPIRE_IN_WINDOW, (cost, amount, budget, window))
    await conn.execute(_FENCE_SETTLED_UNRECORDED, params)


_CLAIM = """
WITH picked AS (
    SELECT name, coalesce(lease_holder = %(host)s AND lease_expires_at > now(), false) AS mine
    FROM targets
    WHERE name = ANY(%(names)s)
      AND (lease_holder IS NULL OR lease_expires_at <= now() OR lease_holder = %(host)s)
    ORDER BY name LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE targets t SET lease_holder = %(host)s,
       lease_expires_at = now() + make_interval(secs => %(secs)s),
       fencing_token = t.fencing_token
                       + (CASE WHEN p.mine AND NOT %(bump)s THEN 0 ELSE 1 END)
FROM picked p WHERE t.name = p.name
RETURNING t.name, t.fencing_token, t.lease_expires_at, p.mine AND NOT %(bump)s
"""


async def claim(
    db: Database,
    host: str,
    names: Sequence[str],
    lease_s: float,
    *,
    limit: int | None = None,
    bump_own: bool = False,
) -> list[Lease]:
    """Take the free or expired leases among `names` (at most `limit`); skips rows another
    host is claiming right now (SKIP LOCKED). Leases this host already holds are renewed,
    unless `bump_own`: then they get a new token too, and the open reservations of the old
    one are expired and charged (a restarted daemon does not know what its previous life
    reserved)."""

    async def work(conn: Any) -> list[Lease]:
        await conn.execute(
            "INSERT INTO hosts (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET seen_at = now()",
            (host,),
        )
        cur = await conn.execute(
            _CLAIM,
            {"host": host, "names": list(names), "limit": limit, "secs": lease_s,
             "bump": bump_own},
        )  # fmt: skip
        rows = sorted(await cur.fetchall())
        await _expire_old(conn, {name: int(token) for name, token, _, kept in rows if not kept})
        return [Lease(name, host, int(token), expires) for name, token, expires, _ in rows]

    return await db.run(work)


async def renew(
    db: Database, leases: Sequence[Lease], lease_s: float, *, timeout_s: float | None = None
) -> list[Lease]:
    """Extend the leases still held (holder and token match, not yet expired): the ones
    missing from the result are lost, and their runs must stop at once. `timeout_s` bounds
    the call (the keeper's renew deadline must not wait for a hung database)."""
    if not leases:
        return []
    host = leases[0].host

    async def work(conn: Any) -> list[Lease]:
        # Never wait on a lock: a renewal that waits may outlast its deadline. The rows it
        # updates are only ever held briefly (reservations and pushes take KEY SHARE, which
        # an update of the lease columns does not wait for); the host row may be held by a
        # claim that waits on the budget row, so it is skipped then (the claim sets it).
        await conn.execute(f"SET LOCAL lock_timeout = {RENEW_LOCK_TIMEOUT_MS}")
        await conn.execute(
            """UPDATE hosts SET seen_at = now() WHERE id IN
               (SELECT id FROM hosts WHERE id = %s FOR UPDATE SKIP LOCKED)""",
            (host,),
        )
        cur = await conn.execute(
            """UPDATE targets t SET lease_expires_at = now() + make_interval(secs => %(secs)s)
               FROM unnest(%(names)s::text[], %(tokens)s::bigint[]) AS h(name, token)
               WHERE t.name = h.name AND t.fencing_token = h.token
                 AND t.lease_holder = %(host)s AND t.lease_expires_at > now()
               RETURNING t.name, t.fencing_token, t.lease_expires_at""",
            {
                "secs": lease_s,
                "names": [lease.target for lease in leases],
                "tokens": [lease.token for lease in leases],
                "host": host,
            },
        )
        return [Lease(n, host, int(t), e) for n, t, e in await cur.fetchall()]

    return await db.run(work, timeout_s=timeout_s)


async def release(db: Database, lease: Lease) -> bool:
    """Give the lease up now (graceful stop); False when it was no longer ours."""

    async def work(conn: Any) -> bool:
        cur = await conn.execute(
            """UPDATE targets SET lease_holder = NULL, lease_expires_at = NULL
               WHERE name = %s AND lease_holder = %s AND fencing_token = %s""",
            (lease.target, lease.host, lease.token),
        )
        return bool(cur.rowcount)

    return await db.run(work)


async def release_many(db: Database, leases: Sequence[Lease]) -> int:
    """Give up every lease of `leases` still ours in one statement; how many were."""
    if not leases:
        return 0

    async def work(conn: Any) -> int:
        cur = await conn.execute(
            """UPDATE targets t SET lease_holder = NULL, lease_expires_at = NULL
               FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS h(name, host, token)
               WHERE t.name = h.name AND t.lease_holder = h.host
                 AND t.fencing_token = h.token""",
            ([x.target for x in leases], [x.host for x in leases], [x.token for x in leases]),
        )
        return int(cur.rowcount)

    return await db.run(work)


async def holders(db: Database) -> dict[str, tuple[str | None, bool]]:
    """Each target's lease holder and whether the lease is live (for status)."""

    async def work(conn: Any) -> dict[str, tuple[str | None, bool]]:
        cur = await conn.execute(
            "SELECT name, lease_holder, coalesce(lease_expires_at > now(), false) FROM targets"
        )
        return {n: (h, bool(live)) for n, h, live in await cur.fetchall()}

    return await db.run(work)
