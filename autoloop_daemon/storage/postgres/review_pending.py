"""Published review queues: each held target's pending candidates, for every host to list.

The host holding a target replaces the target's published queue in one transaction: its
`review_queues` row (which host, under which fencing token, when, and what kept the queue
from being read) and its `review_pending` rows (the entries in the file's order). The write
is made under the lease: the target's row is locked FOR KEY SHARE with holder, token and
expiry checked, so a claim waits for a publish in flight, and a host whose lease has moved
cannot overwrite the new holder's queue (refused: False). Reading leaves out the entries a
verdict in `review_verdicts` names by id (one its holder did not refuse), so a decided
entry leaves every host's listing at once, before its holder has applied it and published
again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.leases import Lease


@dataclass(frozen=True, slots=True)
class PublishedQueue:
    """One target's queue as its holder last published it (decided entries left out)."""

    target: str
    host: str
    token: int
    problem: str | None
    published_at: datetime
    entries: list[dict[str, Any]] = field(default_factory=list)


async def publish(
    db: Database, lease: Lease, entries: Sequence[Mapping[str, Any]], problem: str | None
) -> bool:
    """Replace `lease.target`'s published queue with `entries` (each with its "id"), and
    `problem`; False (nothing written) when `lease` is no longer the target's live lease."""
    rows = [
        (lease.target, str(entry["id"]), position, json.dumps(entry, sort_keys=True))
        for position, entry in enumerate(entries)
    ]

    async def work(conn: Any) -> bool:
        cur = await conn.execute(
            """SELECT 1 FROM targets WHERE name = %s AND lease_holder = %s
               AND fencing_token = %s AND lease_expires_at > now() FOR KEY SHARE""",
            (lease.target, lease.host, lease.token),
        )
        if await cur.fetchone() is None:
            return False
        await conn.execute(
            """INSERT INTO review_queues (target, host, fencing_token, problem)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (target) DO UPDATE SET host = EXCLUDED.host,
                   fencing_token = EXCLUDED.fencing_token, problem = EXCLUDED.problem,
                   published_at = now()""",
            (lease.target, lease.host, lease.token, problem),
        )
        await conn.execute("DELETE FROM review_pending WHERE target = %s", (lease.target,))
        if rows:
            async with conn.cursor() as cur:
                await cur.executemany(
                    """INSERT INTO review_pending (target, review_id, position, entry)
                       VALUES (%s, %s, %s, %s::jsonb)""",
                    rows,
                )
        return True

    return await db.run(work)


async def read(db: Database, targets: Sequence[str] | None = None) -> dict[str, PublishedQueue]:
    """The published queues (of `targets`, or all), by target; entries in the file's order,
    without those a verdict not refused names."""

    async def work(conn: Any) -> dict[str, PublishedQueue]:
        cur = await conn.execute(
            """SELECT q.target, q.host, q.fencing_token, q.problem, q.published_at,
                      coalesce(jsonb_agg(p.entry ORDER BY p.position)
                               FILTER (WHERE p.entry IS NOT NULL), '[]'::jsonb)
               FROM review_queues q
               LEFT JOIN review_pending p ON p.target = q.target AND NOT EXISTS (
                   SELECT 1 FROM review_verdicts v WHERE v.target = p.target
                   AND v.candidate_id = p.review_id AND v.error IS NULL)
               WHERE %(all)s OR q.target = ANY(%(targets)s)
               GROUP BY q.target ORDER BY q.target""",
            {"all": targets is None, "targets": list(targets or ())},
        )
        return {
            row[0]: PublishedQueue(row[0], row[1], int(row[2]), row[3], row[4], list(row[5]))
            for row in await cur.fetchall()
        }

    return await db.run(work)
