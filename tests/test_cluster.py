"""Cluster mode on a real PostgreSQL: schema versions, leases with fencing, the one budget,
idempotent pushes. Each test gets a fresh database (skips without AUTOLOOPD_TEST_DSN)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoloop_daemon.clock import now_utc
from autoloop_daemon.cluster.budget import ClusterSharedBudget
from autoloop_daemon.exceptions import StateLockedError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.windows import BudgetWindow, parse_window
from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.db_clock import DatabaseClock
from autoloop_daemon.storage.postgres.keeper import LeaseKeeper
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, ClusterReservation, FencedError
from autoloop_daemon.storage.postgres.schema import SCHEMA_VERSION, check, migrate
from autoloop_daemon.storage.postgres.store import (
    FencedWriteError,
    PostgresStorage,
    cluster_log,
    push_entry,
)
from tests.helpers.cluster import kept_entry, reserved_first_run, sql, take_over
from tests.helpers.wait import wait_until

psycopg = pytest.importorskip("psycopg", reason="cluster mode needs autoloopd[cluster]")

pytestmark = pytest.mark.anyio


async def test_schema_init_is_idempotent_and_check_reads_the_version(pg_dsn: str) -> None:
    database = Database(pg_dsn)
    await database.open()
    try:
        with pytest.raises(ClusterError, match="no autoloopd schema"):
            await check(database)
        with pytest.raises(ClusterError, match="db init"):
            await migrate(database, create=False)
        assert await migrate(database) == (0, SCHEMA_VERSION)
        assert await migrate(database) == (SCHEMA_VERSION, SCHEMA_VERSION)
        assert await check(database) == SCHEMA_VERSION
    finally:
        await database.close()


async def test_a_newer_schema_is_refused(db: Database) -> None:
    await sql(db, "UPDATE autoloopd_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(ClusterError, match="newer than this autoloopd"):
        await migrate(db)
    with pytest.raises(ClusterError, match="newer"):
        await check(db)


async def test_an_unreachable_database_is_one_clear_error() -> None:
    database = Database("postgresql://nobody@127.0.0.1:1/none", timeout_s=2)
    with pytest.raises(ClusterError, match="cannot connect"):
        await database.open()


async def test_a_target_is_leased_to_one_host_and_an_expired_lease_moves(db: Database) -> None:
    await leases.register(db, ["t1", "t2"])
    a = await leases.claim(db, "a", ["t1", "t2"], 0.5)
    assert [(x.target, x.token) for x in a] == [("t1", 1), ("t2", 1)]
    assert await leases.claim(db, "b", ["t1", "t2"], 30) == []  # both held
    # a stops renewing (dead host): its leases expire on the database clock and move to b
    b: list[leases.Lease] = []
    with anyio.fail_after(10):
        while len(b) < 2:
            b += await leases.claim(db, "b", ["t1", "t2"], 30)
            await anyio.sleep(0.05)
    assert {(x.target, x.token) for x in b} == {("t1", 2), ("t2", 2)}
    assert await leases.renew(db, a, 30) == []  # a learns it lost both
    assert not await leases.release(db, a[0])  # and cannot drop b's lease
    assert (await leases.holders(db))["t1"] == ("b", True)


async def test_renew_keeps_the_lease_and_release_frees_it_at_once(db: Database) -> None:
    await leases.register(db, ["t"])
    (lease,) = await leases.claim(db, "a", ["t"], 30)
    (renewed,) = await leases.renew(db, [lease], 30)
    assert renewed.token == lease.token and renewed.expires_at >= lease.expires_at
    assert await leases.release(db, lease)
    (taken,) = await leases.claim(db, "b", ["t"], 30)
    assert taken.token == lease.token + 1


async def test_a_late_write_with_an_old_token_is_refused_and_a_lost_ack_retry_is_a_no_op(
    db: Database,
) -> None:
    await leases.register(db, ["t"])
    (old,) = await leases.claim(db, "a", ["t"], 30)
    assert await push_entry(db, old, kept_entry(1), "h1") == "recorded"
    assert await push_entry(db, old, kept_entry(1), "h1") == "duplicate"  # ack lost, retried
    new = await take_over(db, "b")
    with pytest.raises(FencedWriteError, match="lease moved to b"):
        await push_entry(db, old, kept_entry(2), None)
    assert await push_entry(db, new, kept_entry(2), None) == "recorded"
    with pytest.raises(FencedWriteError, match="already recorded by b"):
        await push_entry(db, old, kept_entry(2, cost=0.3), None)
    assert [e.iteration for e in await cluster_log(db, "t")] == [1, 2]


async def test_the_cap_holds_across_hosts_reserving_at_once(db: Database) -> None:
    names = [f"t{i}" for i in range(12)]
    await leases.register(db, names)
    held = await leases.claim(db, "a", names[:6], 30) + await leases.claim(db, "b", names[6:], 30)
    budget = ClusterBudget(db)
    await budget.ensure(1.0)
    got: list[Any] = []

    async def run(lease: leases.Lease) -> None:
        for iteration in range(1, 4):
            reservation = await budget.reserve(lease, iteration, 0.15)
            if reservation is None:
                return
            got.append(reservation)
            assert await budget.settle(reservation, 0.1) == "settled"
            assert await budget.settle(reservation, 0.1) == "duplicate"

    async with anyio.create_task_group() as tg:
        for lease in held:
            tg.start_soon(run, lease)
    totals = await budget.totals()
    cap, spent, reserved = totals.cap, totals.spent, totals.reserved
    assert reserved == 0
    assert spent == Decimal("0.1") * len(got)  # exact, no float dust
    assert spent <= cap and len(got) == 9  # 9 x 0.1 + 0.15 > 1.0: the tenth never fit


async def test_a_metered_run_waits_beside_other_reservations_and_takes_the_last_money_alone(
    db: Database,
) -> None:
    """Started with a sliver beside another host's open reservation, a metered run would be
    cut at once by its meter (which counts that reservation): it waits; with nothing open,
    it gets what is left and its meter stops it at the cap."""
    await leases.register(db, ["a", "b"])
    (la,) = await leases.claim(db, "ha", ["a"], 30)
    (lb,) = await leases.claim(db, "hb", ["b"], 30)
    budget = ClusterBudget(db)
    await budget.ensure(1.0)
    big = await budget.reserve(la, 1, 0.9)
    assert big is not None
    assert await budget.attempt(lb, 1, 0.5, metered=True) == "wait"
    assert await budget.settle(big, 0.8) == "settled"
    last = await budget.attempt(lb, 1, 0.5, metered=True)
    assert isinstance(last, ClusterReservation) and last.amount_usd == pytest.approx(0.2)
    assert await budget.attempt(la, 2, 0.5) == "wait"  # b's run is open: a waits for it
    assert await budget.settle(last, 0.2) == "settled"
    assert await budget.attempt(la, 2, 0.5) == "never"  # nothing open, nothing left


async def test_a_takeover_charges_the_dead_hosts_run_and_its_late_settle_books_the_real_cost(
    db: Database,
) -> None:
    await leases.register(db, ["t"])
    budget = ClusterBudget(db)
    await budget.ensure(10.0)
    (old,) = await leases.claim(db, "a", ["t"], 30)
    reservation = await budget.reserve(old, 1, 2.0, rate_usd_per_s=0.01)
    assert reservation is not None
    # it has run for 100 s at $0.01/s when the lease expires: $1 of its $2 reservation
    await sql(db, "UPDATE reservations SET created_at = now() - interval '100 s'")
    new = await take_over(db, "b")
    totals = await budget.totals()
    spent, reserved = totals.spent, totals.reserved
    assert reserved == 0 and Decimal("1.0") <= spent < Decimal("1.1")  # elapsed x rate
    with pytest.raises(FencedError):
        await budget.reserve(old, 2, 1.0)  # the fenced host may start nothing
    assert await budget.settle(reservation, 0.75) == "late"  # its real cost replaces it
    assert (await budget.totals()).spent == Decimal("0.75")
    assert await budget.reserve(new, 2, 1.0) is not None


async def test_a_push_that_fails_waits_and_goes_out_with_the_next_record(
    db: Database, tmp_path: Path
) -> None:
    storage = PostgresStorage(db, "a", tmp_path / "d")
    store = storage.target(TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "t"))
    await store.open()
    await store.record(kept_entry(1), None, None)
    await db.close()  # the database goes away: the journal still takes the record
    await store.record(kept_entry(2), None, None)
    assert [e.iteration for e in await store.read_log()] == [1, 2]
    await db.open()
    await store.record(kept_entry(3), None, None)
    assert [e.iteration for e in await cluster_log(db, "t")] == [1, 2, 3]
    await store.close()


async def test_the_keeper_renews_notices_a_lost_lease_and_self_fences(db: Database) -> None:
    await leases.register(db, ["t1", "t2"])
    lost: list[str] = []
    keeper = LeaseKeeper(db, "a", lease_s=1.5, renew_s=0.1, deadline_s=0.6, on_lost=lost.append)
    assert len(await keeper.claim(["t1", "t2"])) == 2
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        await anyio.sleep(2.0)  # longer than the lease: renewals keep it
        assert sorted(keeper.held) == ["t1", "t2"] and lost == []
        # another host took t1 (as a takeover would): the next renewal notices
        await sql(db, "UPDATE targets SET lease_holder = 'b', fencing_token = 9 WHERE name = 't1'")
        await wait_until(lambda: lost == ["t1"])
        # no renewal can commit any more (as with a database that does not answer; the
        # keeper's own connection would survive closing the pool): past the deadline, the
        # host gives up t2
        async with await psycopg.AsyncConnection.connect(db.dsn) as blocker:
            await blocker.execute("LOCK TABLE targets IN ACCESS EXCLUSIVE MODE")
            await wait_until(lambda: lost == ["t1", "t2"])
            assert not keeper.fresh and keeper.held == {}
            tg.cancel_scope.cancel()


async def test_a_moved_lease_brings_the_history_and_a_fenced_journal_is_kept_aside(
    db: Database, tmp_path: Path
) -> None:
    def spec(host: str) -> TargetSpec:
        return TargetSpec(name="t", path=tmp_path, state_root=tmp_path / host / "t")

    a = PostgresStorage(db, "a", tmp_path / "a").target(spec("a"))
    await a.open()
    await a.record(kept_entry(1), "h1", None)
    await a.record(kept_entry(2), "h2", None)
    await a.close()  # host a freezes: its lease expires without a release
    await sql(db, "UPDATE targets SET lease_expires_at = now() WHERE name = 't'")
    b = PostgresStorage(db, "b", tmp_path / "b").target(spec("b"))
    recovered = await b.open()
    assert recovered.state.iterations_completed == 2  # continues where the cluster is
    assert [e.iteration for e in await b.read_log()] == [1, 2]
    await b.record(kept_entry(3, cost=0.2), "h3", None)
    # host a wakes up and writes its own iteration 3: journaled, refused by the cluster
    a2 = PostgresStorage(db, "a", tmp_path / "a").target(spec("a"))
    with pytest.raises(StateLockedError):
        await a2.open()
    await b.close()
    await b.release()
    recovered = await a2.open()
    assert recovered.state.iterations_completed == 3
    assert await a2.read_log() == await cluster_log(db, "t")
    await a2.close()


async def test_a_fenced_local_run_is_replaced_by_the_clusters_and_kept_aside(
    db: Database, tmp_path: Path
) -> None:
    spec = TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "a" / "t")
    a = PostgresStorage(db, "a", tmp_path / "a").target(spec)
    await a.open()
    await a.record(kept_entry(1), None, None)
    b = await take_over(db, "b")
    await push_entry(db, b, kept_entry(2, cost=0.4), None)
    with pytest.raises(FencedWriteError):
        await a.record(kept_entry(2), None, None)  # a's own run 2: kept in its journal only
    await a.close()
    await leases.release(db, b)
    again = PostgresStorage(db, "a", tmp_path / "a").target(spec)
    recovered = await again.open()
    assert await again.read_log() == [kept_entry(1), kept_entry(2, cost=0.4)]
    assert recovered.state.total_cost_usd == pytest.approx(0.5)
    kept = tmp_path / "a" / "t" / "iteration_log.fenced-1.jsonl"
    assert kept.read_text().count("\n") == 2
    await again.close()


async def _reservation_states(db: Database) -> list[tuple[int, str, Decimal]]:
    rows = await sql(db, "SELECT iteration, state, charged_usd FROM reservations ORDER BY id")
    return [(int(i), str(s), Decimal(c)) for i, s, c in rows]


async def test_a_run_settled_but_not_recorded_when_its_lease_moves_is_late_settled(
    db: Database,
) -> None:
    """The chaos test's rare failure, step by step: a host's push is deferred (a frozen or
    killed transaction), its budget's background settlement books the run, then the lease
    moves before the push goes out. The takeover turns that settlement into late_settled
    (booked, its record refused); the fenced push changes nothing; the money is exact."""
    await leases.register(db, ["t"])
    budget = ClusterBudget(db)
    await budget.ensure(10.0)
    (old,) = await leases.claim(db, "a", ["t"], 30)
    reservation = await budget.reserve(old, 1, 2.0, rate_usd_per_s=0.01)
    assert reservation is not None
    assert await budget.settle(reservation, 0.75) == "settled"  # the push was deferred
    new = await take_over(db, "b")
    assert await _reservation_states(db) == [(1, "late_settled", Decimal("0.75"))]
    with pytest.raises(FencedWriteError, match="lease moved to b"):
        await push_entry(db, old, kept_entry(1, cost=0.75), None)
    assert await _reservation_states(db) == [(1, "late_settled", Decimal("0.75"))]
    totals = await budget.totals()
    assert (totals.spent, totals.reserved) == (Decimal("0.75"), 0)
    rerun = await budget.reserve(new, 1, 1.0)  # the new holder runs iteration 1 again
    assert rerun is not None
    assert await push_entry(db, new, kept_entry(1, cost=0.5), None) == "recorded"
    assert await _reservation_states(db) == [
        (1, "late_settled", Decimal("0.75")),
        (1, "settled", Decimal("0.5")),
    ]
    assert (await budget.totals()).spent == Decimal("1.25")


async def test_a_settled_run_recorded_before_a_takeover_stays_settled(db: Database) -> None:
    """A settlement whose iteration was recorded is the run's, whoever takes over later."""
    budget, old, reservation = await reserved_first_run(db)
    assert await push_entry(db, old, kept_entry(1, cost=0.75), None) == "recorded"
    assert await budget.settle(reservation, 0.75) == "duplicate"
    await take_over(db, "b")
    assert await _reservation_states(db) == [(1, "settled", Decimal("0.75"))]


async def test_the_fence_given_to_orchestrators_changes_on_a_takeover(
    db: Database, tmp_path: Path
) -> None:
    """AUTOLOOPD_FENCE (`<target>:<token>`): the next holder's token is greater."""
    spec = TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "a" / "t")
    first = PostgresStorage(db, "a", tmp_path / "da").target(spec)
    await first.open()
    assert first.fence == "t:1"
    await first.close()
    await sql(db, "UPDATE targets SET lease_expires_at = now() WHERE name = 't'")
    moved = TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "b" / "t")
    second = PostgresStorage(db, "b", tmp_path / "db").target(moved)
    await second.open()
    assert second.fence == "t:2"
    await second.close()


async def test_a_host_whose_clock_is_an_hour_ahead_reads_windows_on_the_databases_clock(
    db: Database,
) -> None:
    """Budget windows start on the database's clock in cluster mode: a host an hour ahead
    (its own wall clock) agrees with the database on the window it is in."""
    await leases.register(db, ["t1"])
    ahead = DatabaseClock(local=lambda: now_utc() + timedelta(hours=1))
    keeper = LeaseKeeper(db, "a", lease_s=30, renew_s=10, on_lost=print, clock=ahead)
    await keeper.claim(["t1"])
    [(db_now,)] = await sql(db, "SELECT now()")
    assert abs(ahead.now() - db_now) < timedelta(seconds=1), (ahead.now(), db_now)
    await keeper.renew_once()  # renewals keep it measured
    [(db_now,)] = await sql(db, "SELECT now()")
    assert abs(ahead.now() - db_now) < timedelta(seconds=1), (ahead.now(), db_now)
    window = BudgetWindow(parse_window("1h"), cap_usd=1.0)
    budget = ClusterSharedBudget(
        ClusterBudget(db), 10.0, lease_of=keeper.held.get, may_start=lambda: True,
        on_lost=print, window=window, clock=ahead.now,
    )  # fmt: skip
    budget.roll()
    assert budget.window_start == window.window.bounds(db_now)[0]
    assert budget.window_start != window.window.bounds(ahead.local_now())[0]


async def test_an_open_that_fails_on_the_database_leaves_the_local_root_free(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose open loses the database after the local journal was opened (as when
    the server restarts at that moment) lets the local state root go: once the lease is
    given back, the next claim here opens it (it was refused as locked by this very host,
    so the target never ran here again)."""
    from autoloop_daemon.storage.postgres import store as store_module

    spec = TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "a" / "t")
    storage = PostgresStorage(db, "a", tmp_path / "a")

    async def server_gone(db: Database, target: str) -> list[Any]:
        raise ClusterError("server closed the connection unexpectedly (this test)")

    monkeypatch.setattr(store_module, "cluster_log", server_gone)
    first = storage.target(spec)
    with pytest.raises(ClusterError, match="server closed"):
        await first.open()
    await first.release()
    monkeypatch.undo()
    second = storage.target(spec)
    recovered = await second.open()
    assert recovered.state.iterations_completed == 0
    await second.record(kept_entry(1), "h1", None)
    assert [e.iteration for e in await cluster_log(db, "t")] == [1]
    await second.close()
    await second.release()
