"""The cluster tests' database: a fresh PostgreSQL database per test, on the server named by
AUTOLOOPD_TEST_DSN (.ci/run starts a throwaway one). Without it the tests skip, saying why."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from autoloop_daemon.models import LogEntry
from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, ClusterReservation

DSN_VAR = "AUTOLOOPD_TEST_DSN"
NO_DSN = f"needs a PostgreSQL: set {DSN_VAR} (.ci/run starts one with .ci/postgres)"


def server_dsn() -> str:
    """The server's DSN, or skip the test with the reason."""
    dsn = os.environ.get(DSN_VAR)
    if not dsn:
        pytest.skip(NO_DSN)
    return dsn


def _with_dbname(dsn: str, name: str) -> str:
    import psycopg.conninfo

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def fresh_database() -> Iterator[str]:
    """Create an empty database, yield its DSN, drop it afterwards."""
    import psycopg

    admin = server_dsn()
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_dbname(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def sql(db: Database, statement: str, params: Any = None) -> list[Any]:
    """Run one statement in its own transaction; its rows (none for a statement without)."""

    async def work(conn: Any) -> list[Any]:
        cur = await conn.execute(statement, params)
        return list(await cur.fetchall()) if cur.description else []

    return await db.run(work)


def kept_entry(iteration: int, cost: float = 0.1) -> LogEntry:
    """A completed keep of `iteration` costing `cost`, as a push sends it."""
    return LogEntry(
        iteration=iteration,
        started_at="s",
        finished_at="f",
        status="completed",
        decision="keep",
        weighted_score=0.5,
        cost_usd=cost,
        duration_seconds=1.0,
    )


async def reserved_first_run(
    db: Database,
) -> tuple[ClusterBudget, leases.Lease, ClusterReservation]:
    """Target `t` under a $10 cap, leased by host `a`, with $2 reserved for its iteration 1:
    (the budget, a's lease, the reservation)."""
    await leases.register(db, ["t"])
    budget = ClusterBudget(db)
    await budget.ensure(10.0)
    (lease,) = await leases.claim(db, "a", ["t"], 30)
    reservation = await budget.reserve(lease, 1, 2.0)
    assert reservation is not None
    return budget, lease, reservation


async def take_over(db: Database, host: str) -> leases.Lease:
    """`t`'s lease expired now and claimed by `host`: its new lease."""
    await sql(db, "UPDATE targets SET lease_expires_at = now() WHERE name = 't'")
    (lease,) = await leases.claim(db, host, ["t"], 30)
    return lease
