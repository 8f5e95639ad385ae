"""Retention of the reservations table on a real PostgreSQL: old settled rows whose run is
recorded are pruned in batches, every other row stays, and no money is booked twice or lost
by pruning (skips without AUTOLOOPD_TEST_DSN)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from autoloop_daemon.cluster.member import ClusterMember
from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget
from autoloop_daemon.storage.postgres.retention import prune_reservations
from autoloop_daemon.storage.postgres.store import FencedWriteError, push_entry
from tests.helpers.cluster import kept_entry, reserved_first_run, sql, take_over

psycopg = pytest.importorskip("psycopg", reason="cluster mode needs autoloopd[cluster]")

pytestmark = pytest.mark.anyio


async def _age(db: Database, target: str, iteration: int, days: int) -> None:
    await sql(
        db,
        """UPDATE reservations SET created_at = now() - make_interval(days => %s)
           WHERE target = %s AND iteration = %s""",
        (days, target, iteration),
    )


async def _rows(db: Database) -> list[tuple[str, int, str]]:
    rows = await sql(db, "SELECT target, iteration, state FROM reservations ORDER BY id")
    return [(str(t), int(i), str(s)) for t, i, s in rows]


async def _spent(budget: ClusterBudget) -> tuple[Decimal, Decimal]:
    totals = await budget.totals()
    return totals.spent, totals.reserved


async def test_pruning_takes_old_settled_recorded_rows_only_in_batches(db: Database) -> None:
    """Pruned: settled, older than the retention age, its entry recorded under its lease.
    Kept: a young one, an open one, an expired one (its fenced run's real cost may still
    come), a settled one whose entry was never recorded. The money does not move."""
    await leases.register(db, ["t", "u"])
    budget = ClusterBudget(db)
    await budget.ensure(100.0)
    (lease,) = await leases.claim(db, "a", ["t"], 30)
    for iteration in (1, 2, 3):  # recorded and settled; 1 and 2 old, 3 young
        assert await budget.reserve(lease, iteration, 1.0) is not None
        assert await push_entry(db, lease, kept_entry(iteration, 0.5), None) == "recorded"
    unrecorded = await budget.reserve(lease, 4, 1.0)
    assert unrecorded is not None
    assert await budget.settle(unrecorded, 0.25) == "settled"
    assert await budget.reserve(lease, 5, 1.0) is not None  # open
    (dead,) = await leases.claim(db, "a", ["u"], 30)
    assert await budget.reserve(dead, 1, 2.0) is not None
    await sql(db, "UPDATE targets SET lease_expires_at = now() WHERE name = 'u'")
    await leases.claim(db, "b", ["u"], 30)  # expires u's open reservation, charged 0
    for target, iteration in [("t", 1), ("t", 2), ("t", 4), ("t", 5), ("u", 1)]:
        await _age(db, target, iteration, 8)
    before = await _spent(budget)

    assert await prune_reservations(db, retention_days=7, batch=1) == 1
    assert await prune_reservations(db, retention_days=7, batch=1) == 1
    assert await prune_reservations(db, retention_days=7, batch=1) == 0
    assert await _rows(db) == [
        ("t", 3, "settled"),
        ("t", 4, "settled"),
        ("t", 5, "open"),
        ("u", 1, "expired"),
    ]
    marked = await sql(
        db, "SELECT iteration FROM iterations WHERE reservation_pruned ORDER BY iteration"
    )
    assert [int(i) for (i,) in marked] == [1, 2]
    assert await _spent(budget) == before == (Decimal("1.75"), Decimal("1.0"))


async def test_a_repush_after_its_reservation_was_pruned_books_nothing_twice(
    db: Database,
) -> None:
    """A run's money is booked once, whatever comes after its row is pruned: the same entry
    pushed again, a changed entry under the same lease, the budget's background settlement
    retried, another lease's refused push of the iteration. The next run books as ever."""
    budget, old, reservation = await reserved_first_run(db)
    assert await push_entry(db, old, kept_entry(1, 0.75), None) == "recorded"
    await _age(db, "t", 1, 30)
    assert await prune_reservations(db) == 1
    assert await _rows(db) == []

    assert await push_entry(db, old, kept_entry(1, 0.75), None) == "duplicate"
    with pytest.raises(FencedWriteError, match="already recorded by a"):
        await push_entry(db, old, kept_entry(1, 0.9), None)
    assert await budget.settle(reservation, 0.75) == "duplicate"
    new = await take_over(db, "b")
    with pytest.raises(FencedWriteError, match="already recorded by a"):
        await push_entry(db, new, kept_entry(1, 0.6), None)
    assert await _spent(budget) == (Decimal("0.75"), Decimal(0))

    assert await budget.reserve(new, 2, 1.0) is not None
    assert await push_entry(db, new, kept_entry(2, 0.5), None) == "recorded"
    assert await _spent(budget) == (Decimal("1.25"), Decimal(0))


async def test_a_member_prunes_one_batch_then_waits_for_the_next_period(db: Database) -> None:
    """The rounds' pruning: a batch at the first round, none again before the period."""
    await leases.register(db, ["t"])
    budget = ClusterBudget(db)
    await budget.ensure(10.0)
    (lease,) = await leases.claim(db, "a", ["t"], 30)
    for iteration in (1, 2):
        assert await budget.reserve(lease, iteration, 1.0) is not None
        assert await push_entry(db, lease, kept_entry(iteration, 0.5), None) == "recorded"

    async def nothing(*_: object) -> None:
        return None

    member = ClusterMember(
        db,
        "a",
        lease_s=30,
        renew_s=1,
        start=nothing,
        stop=lambda name, status: None,
        local=lambda name: None,
        apply_flags=nothing,
        retention_days=7,
        apply_reviews=nothing,
    )
    await _age(db, "t", 1, 8)
    assert await member.prune() == 1
    await _age(db, "t", 2, 8)
    assert await member.prune() == 0  # not due yet: ten minutes between batches
    assert await _rows(db) == [("t", 2, "settled")]
