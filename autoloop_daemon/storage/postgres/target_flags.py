"""The operator's commands on a target's row in the cluster's database: its flags (paused,
run-now, stopped), a reset of its finished status, and an extension of its limits. Each is
one transaction; ClusterError when the database refuses or cannot be reached."""

from __future__ import annotations

from typing import Any, Literal

from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import money

Flag = Literal["paused", "run_now", "stopped"]

_SET_FLAG = {
    "paused": "UPDATE targets SET paused = %s WHERE name = %s",
    "run_now": "UPDATE targets SET run_now = %s WHERE name = %s",
    "stopped": "UPDATE targets SET stopped = %s WHERE name = %s",
}


async def set_flag(db: Database, name: str, flag: Flag, value: bool) -> None:
    """Set one of the target's operator flags, which whichever host runs it applies."""
    statement = _SET_FLAG[flag]

    async def work(conn: Any) -> None:
        await conn.execute(statement, (value, name))

    await db.run(work)


async def take_run_now(db: Database, name: str) -> bool:
    """Clear the target's run-now flag; True when this call cleared it (it was set), so that
    of two hosts' or two paths' applying one `ctl run-now`, exactly one runs it."""

    async def work(conn: Any) -> bool:
        cur = await conn.execute(
            "UPDATE targets SET run_now = false WHERE name = %s AND run_now RETURNING 1", (name,)
        )
        return await cur.fetchone() is not None

    return await db.run(work)


async def reset(db: Database, name: str) -> None:
    """Clear the operator's stop and the finished status, so that a host claims it again."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """UPDATE targets SET stopped = false, finished_status = NULL,
                                  finished_limits = NULL
               WHERE name = %s""",
            (name,),
        )

    await db.run(work)


async def extend(db: Database, name: str, iterations: int, cost_usd: float) -> None:
    """Add an extension of the target's limits (it moves with the lease), and clear its
    finished status and operator stop so that a host claims it again."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """UPDATE targets SET extra_iterations = extra_iterations + %s,
                                  extra_cost_usd = extra_cost_usd + %s,
                                  finished_status = NULL, finished_limits = NULL,
                                  stopped = false
               WHERE name = %s""",
            (iterations, money(cost_usd), name),
        )

    await db.run(work)
