"""The cluster under load (issue 21). Lease renewal never waits on the budget: with the
budget row held by another connection and every pooled connection of the host waiting
behind it in reservations, the host's renewals still go through, on time, on their own
connection (a busy cluster never makes a healthy host fence itself). Claims are set-based:
thousands of targets split between hosts at once, each exactly once, and a takeover expires
the old reservations of all of them in one statement. The reservation wait path uses an
index. (bench/cluster_scale.py measures the same at 10,000 targets and 1 M rows.)"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.keeper import LeaseKeeper
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, ClusterReservation
from tests.helpers.wait import wait_until

psycopg = pytest.importorskip("psycopg", reason="cluster mode needs autoloopd[cluster]")

pytestmark = pytest.mark.anyio

POOL = 8  # the `db` fixture's pool size
HELD_S = 3.0  # the budget row's lock is held longer than the lease


async def _expiries(dsn: str) -> dict[str, Any]:
    """The leases' expiries, read outside the host's pool (all its slots are waiting)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT name, lease_expires_at FROM targets")
        return dict(await cur.fetchall())


async def test_renewals_go_through_while_the_budget_row_is_held_and_the_pool_is_busy(
    db: Database,
) -> None:
    names = [f"t{i}" for i in range(POOL)]
    await leases.register(db, names)
    budget = ClusterBudget(db)
    await budget.ensure(100.0)
    lost: list[str] = []
    keeper = LeaseKeeper(db, "a", lease_s=2.0, renew_s=0.2, deadline_s=1.0, on_lost=lost.append)
    assert len(await keeper.claim(names)) == POOL
    granted: list[ClusterReservation | str] = []

    async def reserve(name: str) -> None:
        granted.append(await budget.attempt(keeper.held[name], 1, 1.0))

    async with await psycopg.AsyncConnection.connect(db.dsn) as other_host:
        await other_host.execute("SELECT 1 FROM budgets FOR UPDATE")  # holds it, in a transaction
        before = await _expiries(db.dsn)
        async with anyio.create_task_group() as tg:
            tg.start_soon(keeper.run)
            for name in names:  # each waits on the budget row, holding a pool slot and
                tg.start_soon(reserve, name)  # its target row (KEY SHARE)
            await anyio.sleep(HELD_S)  # the scenario: a lock held longer than the lease
            assert lost == [] and keeper.fresh and sorted(keeper.held) == names
            assert granted == []  # all still waiting on the budget row
            after = await _expiries(db.dsn)
            assert all(after[n] > before[n] for n in names), "the renewals went through"
            await other_host.rollback()
            await wait_until(lambda: len(granted) == POOL, timeout_s=10)
            tg.cancel_scope.cancel()
    assert all(isinstance(g, ClusterReservation) for g in granted) and lost == []
    assert (await budget.totals()).reserved == POOL


async def test_the_wait_path_finds_open_reservations_by_index_among_many_closed(
    db: Database,
) -> None:
    """Near the cap, a retry asks whether any reservation is open: with 50,000 settled
    rows it is answered from the partial index of open ones, not by a scan of them all."""
    await leases.register(db, ["t"])
    budget = ClusterBudget(db)
    await budget.ensure(1.0)
    (lease,) = await leases.claim(db, "a", ["t"], 30)

    async def work(conn: Any) -> list[str]:
        await conn.execute(
            """INSERT INTO reservations (budget, target, iteration, fencing_token, host,
                   amount_usd, charged_usd, state)
               SELECT 'default', 't', i, 0, 'old', 0.01, 0.01, 'settled'
               FROM generate_series(1, 50000) AS i"""
        )
        await conn.execute("ANALYZE reservations")
        cur = await conn.execute(
            """EXPLAIN SELECT EXISTS (SELECT 1 FROM reservations
                                      WHERE budget = 'default' AND state = 'open')"""
        )
        return [row[0] for row in await cur.fetchall()]

    plan = "\n".join(await db.run(work))
    assert "reservations_open" in plan and "Seq Scan" not in plan, plan
    first = await budget.attempt(lease, 50001, 0.6)
    assert isinstance(first, ClusterReservation)
    assert await budget.attempt(lease, 50002, 0.6) == "wait"  # another is open
    await budget.settle(first, 0.5)
    assert await budget.attempt(lease, 50002, 0.6) == "never"  # none open, no room


async def test_hosts_claiming_thousands_of_targets_at_once_split_them_exactly(
    db: Database,
) -> None:
    names = [f"t{i:04d}" for i in range(3000)]
    await leases.register(db, names)
    got: dict[str, list[leases.Lease]] = {}

    async def host(name: str) -> None:
        got[name] = await leases.claim(db, name, names, 30, limit=1000)

    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):
            tg.start_soon(host, name)
    claimed = [lease.target for held in got.values() for lease in held]
    assert sorted(claimed) == names and all(len(h) == 1000 for h in got.values())
    assert {lease.token for held in got.values() for lease in held} == {1}


async def test_a_takeover_of_many_targets_expires_each_one_s_old_reservation(
    db: Database,
) -> None:
    names = [f"t{i}" for i in range(50)]
    await leases.register(db, names)
    budget = ClusterBudget(db)
    await budget.ensure(100.0)
    old = await leases.claim(db, "a", names, 30)
    for lease in old:
        assert await budget.reserve(lease, 1, 1.0, rate_usd_per_s=0.5) is not None
    await db.run(lambda conn: conn.execute(
        "UPDATE reservations SET created_at = now() - interval '10 s'"))  # fmt: skip
    await db.run(lambda conn: conn.execute("UPDATE targets SET lease_expires_at = now()"))
    new = await leases.claim(db, "b", names, 30)
    assert sorted((x.target, x.token) for x in new) == sorted((n, 2) for n in names)
    totals = await budget.totals()
    assert totals.reserved == 0 and totals.spent == 50  # each charged its $1 (capped)
