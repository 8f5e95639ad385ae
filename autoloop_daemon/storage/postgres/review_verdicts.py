"""Reviewers' verdicts in the cluster's database: given on any host, applied by the holder.

One row per candidate (the first verdict wins: a second is refused with the first's who and
when). The host holding the target reads the unapplied rows of its targets each round,
writes each into the target's files and marks it applied, or refused with the reason (an
unknown or already decided candidate), so that no verdict is lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autoloop_daemon.storage.postgres.db import Database


@dataclass(frozen=True, slots=True)
class ClusterVerdict:
    """One verdict as the database holds it."""

    target: str
    candidate_id: str
    verdict: str
    note: str | None
    who: str
    decided_at: datetime
    applied_at: datetime | None = None
    applied_by: str | None = None
    error: str | None = None


_COLUMNS = "target, candidate_id, verdict, note, who, decided_at, applied_at, applied_by, error"


async def record(
    db: Database,
    target: str,
    candidate_id: str,
    verdict: str,
    note: str | None,
    who: str,
) -> tuple[bool, ClusterVerdict]:
    """Insert the verdict unless the candidate has one: (inserted, the row that holds)."""

    async def work(conn: Any) -> tuple[bool, ClusterVerdict]:
        cur = await conn.execute(
            f"""INSERT INTO review_verdicts (target, candidate_id, verdict, note, who)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (target, candidate_id) DO NOTHING
                RETURNING {_COLUMNS}""",
            (target, candidate_id, verdict, note, who),
        )
        row = await cur.fetchone()
        if row is not None:
            return True, ClusterVerdict(*row)
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM review_verdicts WHERE target = %s AND candidate_id = %s",
            (target, candidate_id),
        )
        return False, ClusterVerdict(*(await cur.fetchone()))

    return await db.run(work)


async def record_applied(
    db: Database,
    target: str,
    candidate_id: str,
    verdict: str,
    note: str | None,
    who: str,
    host: str,
) -> None:
    """A verdict `host` decided in its own files: recorded as applied there, so other hosts
    see it (and a later verdict on the candidate is refused). Nothing when it has one."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """INSERT INTO review_verdicts
                   (target, candidate_id, verdict, note, who, applied_at, applied_by)
               VALUES (%s, %s, %s, %s, %s, now(), %s)
               ON CONFLICT (target, candidate_id) DO NOTHING""",
            (target, candidate_id, verdict, note, who, host),
        )

    await db.run(work)


async def unapplied(db: Database, targets: list[str]) -> list[ClusterVerdict]:
    """The verdicts on `targets` no host has applied yet, oldest first."""
    if not targets:
        return []

    async def work(conn: Any) -> list[ClusterVerdict]:
        cur = await conn.execute(
            f"""SELECT {_COLUMNS} FROM review_verdicts
                WHERE applied_at IS NULL AND target = ANY(%s)
                ORDER BY decided_at""",
            (targets,),
        )
        return [ClusterVerdict(*row) for row in await cur.fetchall()]

    return await db.run(work)


async def mark_applied(
    db: Database, target: str, candidate_id: str, host: str, error: str | None
) -> None:
    """The verdict was written into the target's files by `host` (or refused: `error`)."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """UPDATE review_verdicts SET applied_at = now(), applied_by = %s, error = %s
               WHERE target = %s AND candidate_id = %s AND applied_at IS NULL""",
            (host, error, target, candidate_id),
        )

    await db.run(work)
