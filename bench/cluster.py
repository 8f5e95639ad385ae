"""Cluster mode on a real PostgreSQL: reservations per second with 1, 2 and 4 hosts, and how
long a dead host's lease takes to move.

Each host is its own process with its own connection pool, holding leases on its own
targets and doing reserve + settle (two transactions on the one budget row) in a loop with
4 concurrent tasks, for `--seconds` (quick: 2). The cap is far away, so nothing waits on
money: what is measured is the budget row's serialisation. Then the takeover: a host process
claims a target with a lease of `--lease` seconds and renews it, and is killed with SIGKILL;
a second host tries to claim every 20 ms. Reported: the time from the kill to the claim, and
from the lease's expiry (the database's clock) to the claim.

    AUTOLOOPD_TEST_DSN=postgresql://... .venv/bin/python bench/cluster.py [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import uuid
from typing import Any

import anyio
import common  # puts the repository on sys.path

from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget
from autoloop_daemon.storage.postgres.schema import migrate


def _host_loop(dsn: str, host: str, seconds: float, out: Any) -> None:
    async def main() -> int:
        db = Database(dsn, max_size=4)
        await db.open()
        names = [f"{host}-t{i}" for i in range(4)]
        await leases.register(db, names)
        held = await leases.claim(db, host, names, 600)
        budget = ClusterBudget(db)
        done = 0
        deadline = time.monotonic() + seconds

        async def worker(lease: leases.Lease) -> None:
            nonlocal done
            iteration = 0
            while time.monotonic() < deadline:
                iteration += 1
                reservation = await budget.reserve(lease, iteration, 0.01)
                assert reservation is not None
                await budget.settle(reservation, 0.01)
                done += 1

        async with anyio.create_task_group() as tg:
            for lease in held:
                tg.start_soon(worker, lease)
        await db.close()
        return done

    out.put(anyio.run(main))


def _holder(dsn: str, lease_s: float, ready: Any) -> None:
    async def main() -> None:
        db = Database(dsn)
        await db.open()
        await leases.register(db, ["moving"])
        held = await leases.claim(db, "dying", ["moving"], lease_s)
        ready.put(held[0].expires_at.isoformat())
        while True:
            await anyio.sleep(lease_s / 6)
            await leases.renew(db, held, lease_s)

    anyio.run(main)


def _reservations(dsn: str, hosts: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_host_loop, args=(dsn, f"h{hosts}-{i}", seconds, out))
             for i in range(hosts)]  # fmt: skip
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    return total / seconds


async def _takeover(dsn: str, lease_s: float) -> tuple[float, float]:
    """(seconds from the kill to the claim, from the lease's expiry to the claim)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_holder, args=(dsn, lease_s, ready))
    proc.start()
    ready.get(timeout=60)
    await anyio.sleep(lease_s)  # it has renewed a few times
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.join(timeout=10)
    db = Database(dsn)
    await db.open()

    async def expiry(conn: Any) -> Any:
        cur = await conn.execute("SELECT lease_expires_at FROM targets WHERE name = 'moving'")
        return (await cur.fetchone())[0]

    async def db_now(conn: Any) -> Any:
        return (await (await conn.execute("SELECT now()")).fetchone())[0]

    expired_at = await db.run(expiry)
    with anyio.fail_after(lease_s * 3 + 10):
        while True:
            if await leases.claim(db, "survivor", ["moving"], lease_s):
                break
            await anyio.sleep(0.02)
    after_kill = time.monotonic() - killed
    after_expiry = (await db.run(db_now) - expired_at).total_seconds()
    await db.close()
    return after_kill, after_expiry


def admin_dsn() -> str | None:
    """The PostgreSQL server the cluster benches use (AUTOLOOPD_TEST_DSN); None, after
    saying how to start one, when it is not set."""
    admin = os.environ.get("AUTOLOOPD_TEST_DSN")
    if not admin:
        print("set AUTOLOOPD_TEST_DSN to a PostgreSQL server (.ci/postgres start DIR)")
    return admin or None


def _fresh_db(admin: str) -> str:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin)
    params["dbname"] = name
    return make_conninfo(**params)


def main() -> int:
    """Run the benchmark; print the figures and write bench/results/cluster.json."""
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--lease", type=float, default=3.0)
    args = p.parse_args()
    admin = admin_dsn()
    if admin is None:
        return 2
    seconds = 2.0 if args.quick else args.seconds
    info = common.machine()
    common.print_machine(info)
    dsn = _fresh_db(admin)

    async def setup() -> None:
        db = Database(dsn)
        await db.open()
        await migrate(db)
        await ClusterBudget(db).ensure(1e9)
        await db.close()

    anyio.run(setup)
    rates = {n: _reservations(dsn, n, seconds) for n in (1, 2, 4)}
    print(common.table(["hosts", "reserve+settle per s"],
                       [(n, round(r, 1)) for n, r in rates.items()]))  # fmt: skip
    after_kill, after_expiry = anyio.run(_takeover, dsn, args.lease)
    print(f"lease {args.lease:g} s: moved {after_kill:.3f} s after kill -9, "
          f"{after_expiry:.3f} s after the lease expired (database clock)")  # fmt: skip
    results = {
        "quick": args.quick,
        "machine": info,
        "seconds_per_host_count": seconds,
        "reserve_settle_per_s": {str(n): round(r, 1) for n, r in rates.items()},
        "lease_s": args.lease,
        "takeover_after_kill_s": round(after_kill, 3),
        "takeover_after_expiry_s": round(after_expiry, 3),
    }
    print(f"results: {common.write_results('cluster', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
