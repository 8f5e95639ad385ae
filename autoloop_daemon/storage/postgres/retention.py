"""Retention of the reservations table: old settled rows whose run is recorded are pruned.

A reservation row is the evidence that its run's money was booked: a push of the run's log
entry (store.py `_book`) books nothing when it finds the row settled. A row is pruned only
when that evidence survives elsewhere: it is settled (or late_settled), older than the
retention age, and the iteration's entry was recorded under the same lease (the push that
recorded it booked the money in the same transaction). The entry's row is marked
`reservation_pruned` in the same statement, and `_book` reads the mark as "a settled
reservation under the entry's token existed". Open and expired rows are never pruned (an
expired one still waits for the fenced run's real cost), nor settled rows of runs whose
entry was never recorded. Money is not touched: the budget row is neither read nor locked.
Each call deletes one bounded batch, skipping rows a settlement holds (`SKIP LOCKED`).
"""

from __future__ import annotations

from typing import Any

from autoloop_daemon.storage.postgres.db import Database

RETENTION_DAYS = 7.0  # a settled reservation's row is kept this long after it was made
BATCH = 500  # rows per call: one short transaction, never a long one
PRUNE_EVERY_S = 600.0  # how often a host prunes (a full batch: again at its next round)

_PRUNE = """
WITH picked AS (
    SELECT r.id, r.target, r.iteration FROM reservations r
    JOIN iterations i ON i.target = r.target AND i.iteration = r.iteration
                     AND i.fencing_token = r.fencing_token
    WHERE r.state IN ('settled', 'late_settled')
      AND r.created_at < now() - make_interval(secs => %(age_s)s)
    LIMIT %(batch)s
    FOR UPDATE OF r SKIP LOCKED
), gone AS (
    DELETE FROM reservations r USING picked WHERE r.id = picked.id
    RETURNING r.target, r.iteration
)
UPDATE iterations i SET reservation_pruned = true
FROM gone WHERE i.target = gone.target AND i.iteration = gone.iteration
"""


async def prune_reservations(
    db: Database, *, retention_days: float = RETENTION_DAYS, batch: int = BATCH
) -> int:
    """Delete up to `batch` prunable reservation rows older than `retention_days` (see the
    module docstring); how many were deleted (`batch`: call again for more)."""

    async def work(conn: Any) -> int:
        cur = await conn.execute(_PRUNE, {"age_s": retention_days * 86400.0, "batch": batch})
        return int(cur.rowcount)

    return await db.run(work)


async def pruned_token(conn: Any, target: str, iteration: int) -> int | None:
    """The fencing token of `iteration`'s recorded entry when its settled reservation's
    row was pruned (its money was booked under that token), else None."""
    cur = await conn.execute(
        """SELECT fencing_token FROM iterations
           WHERE target = %s AND iteration = %s AND reservation_pruned""",
        (target, iteration),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])
