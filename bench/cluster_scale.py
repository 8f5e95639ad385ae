"""Cluster mode at scale on a real PostgreSQL (issue 21): how long 10,000 targets take to be
claimed by 3 hosts, and what one retry of the reservation wait path costs with 1,000,000
closed reservations in the table.

Claims: 3 host processes, each with its own pool, start together on a fresh database whose
10,000 target rows exist; each claims its third (`limit`) in batches of `--batch` (one
set-based statement a batch: `FOR UPDATE SKIP LOCKED`, one UPDATE, one expiry statement)
until every target is held. Reported per round: the time to all claimed, and the slowest
host. Wait path: 1,000,000 settled reservations are inserted, then one host asks for more
than is left with nothing open ("never": the index probe) and with one reservation open
("wait": the budget row's reserved total); `count(*)` of open rows, what the wait path did
before, is timed beside them. Three rounds each; min / median / max printed.

    AUTOLOOPD_TEST_DSN=postgresql://... .venv/bin/python bench/cluster_scale.py [--quick]
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import anyio
import common  # puts the repository on sys.path
from cluster import _fresh_db, admin_dsn

from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget
from autoloop_daemon.storage.postgres.schema import migrate

HOSTS = 3


def _claimer(dsn: str, host: str, names: list[str], share: int, batch: int, go: Any,
             out: Any) -> None:  # fmt: skip
    async def main() -> float:
        db = Database(dsn, max_size=2, timeout_s=60)
        await db.open()
        out.put("ready")
        go.wait()
        start = time.monotonic()
        held = 0
        while held < share:
            got = await leases.claim(db, host, names, 600, limit=min(batch, share - held))
            held += len(got)
            if not got:
                break
        took = time.monotonic() - start
        await db.close()
        return took

    out.put(anyio.run(main))


def _claims_round(admin: str, n: int, batch: int) -> tuple[float, float]:
    dsn = _fresh_db(admin)
    names = [f"t{i:05d}" for i in range(n)]

    async def setup() -> None:
        db = Database(dsn, timeout_s=120)
        await db.open()
        await migrate(db)
        await leases.register(db, names)
        await db.close()

    anyio.run(setup)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    share = math.ceil(n / HOSTS)
    procs = [ctx.Process(target=_claimer, args=(dsn, f"h{i}", names, share, batch, go, out))
             for i in range(HOSTS)]  # fmt: skip
    for p in procs:
        p.start()
    for _ in procs:  # every host started and connected (not measured)
        assert out.get(timeout=120) == "ready"
    start = time.monotonic()
    go.set()
    slowest = max(out.get(timeout=600) for _ in procs)
    wall = time.monotonic() - start
    for p in procs:
        p.join(timeout=30)
    return wall, slowest


async def _wait_path(admin: str, rows: int) -> dict[str, list[float]]:
    dsn = _fresh_db(admin)
    db = Database(dsn, timeout_s=600)
    await db.open()
    await migrate(db)
    budget = ClusterBudget(db)
    await budget.ensure(1.0)
    await leases.register(db, ["t", "u"])
    lease_t, lease_u = await leases.claim(db, "h", ["t", "u"], 600)

    async def fill(conn: Any) -> None:
        await conn.execute(
            """INSERT INTO reservations (budget, target, iteration, fencing_token, host,
                   amount_usd, charged_usd, state)
               SELECT 'default', 't', i, 0, 'old', 0, 0, 'settled'
               FROM generate_series(1, %s) AS i""",
            (rows,),
        )

    await db.run(fill)
    await db.run(lambda conn: conn.execute("ANALYZE reservations"))

    async def count_open(conn: Any) -> None:  # as before schema 5: no index to use
        for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
            await conn.execute(f"SET LOCAL {setting} = off")
        await conn.execute(
            "SELECT count(*) FROM reservations WHERE budget = 'default' AND state = 'open'"
        )

    figures: dict[str, list[float]] = {"never": [], "wait": [], "count(*) before": []}
    for _ in range(3):
        t0 = time.monotonic()
        assert await budget.attempt(lease_t, rows + 1, 2.0) == "never"
        figures["never"].append(time.monotonic() - t0)
        t0 = time.monotonic()
        await db.run(count_open)
        figures["count(*) before"].append(time.monotonic() - t0)
    held = await budget.attempt(lease_u, 1, 0.6)
    for _ in range(3):
        t0 = time.monotonic()
        assert await budget.attempt(lease_t, rows + 1, 0.6) == "wait"
        figures["wait"].append(time.monotonic() - t0)
    assert not isinstance(held, str) and held is not None
    await db.close()
    return figures


def _mmm(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main() -> int:
    """Run both scenarios; print the figures and write bench/results/cluster_scale.json."""
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--targets", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1_000)
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()
    admin = admin_dsn()
    if admin is None:
        return 2
    targets, rows = (1_000, 100_000) if args.quick else (args.targets, args.rows)
    info = common.machine()
    common.print_machine(info)
    claims = [_claims_round(admin, targets, args.batch) for _ in range(3)]
    walls = [w for w, _ in claims]
    print(f"{targets} targets on {HOSTS} hosts, batches of {args.batch}: all claimed in "
          f"{_mmm(walls)} s (min / median / max of 3), load {os.getloadavg()[0]:.2f}")  # fmt: skip
    waits = anyio.run(_wait_path, admin, rows)
    for name, values in waits.items():
        print(f"{rows} closed reservations, wait path {name}: {_mmm(values)} s")
    results = {
        "quick": args.quick,
        "machine": info,
        "targets": targets,
        "hosts": HOSTS,
        "batch": args.batch,
        "all_claimed_s": [round(w, 3) for w in walls],
        "reservation_rows": rows,
        "wait_path_s": {k: [round(v, 4) for v in vs] for k, vs in waits.items()},
        "loadavg_1m": os.getloadavg()[0],
    }
    print(f"results: {common.write_results('cluster_scale', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
