"""Retention of the reservations table on a real PostgreSQL (issue 21): what one pruning
batch costs among 1,000,000 settled reservations, and what a call that finds nothing to
prune costs (the scan every host makes every ten minutes once the table is pruned).

A fresh database gets `--rows` settled reservations, each with its recorded entry under the
same lease (as a run recorded by its push leaves them), all younger than the retention age.
Nothing to prune: `prune_reservations` timed on that table. A batch: the oldest 500 rows
are aged past the retention age and one batch (all 500) is timed. Beside each, a reserve
and a settle on the budget row are timed while nothing else runs (pruning never locks that
row). Three rounds each; min / median / max printed, with the load average.

    AUTOLOOPD_TEST_DSN=postgresql://... .venv/bin/python bench/cluster_retention.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import anyio
import common  # puts the repository on sys.path
from cluster import _fresh_db, admin_dsn

from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget
from autoloop_daemon.storage.postgres.retention import BATCH, prune_reservations
from autoloop_daemon.storage.postgres.schema import migrate

ROUNDS = 3


async def _fill(db: Database, rows: int) -> None:
    async def work(conn: Any) -> None:
        await conn.execute(
            """INSERT INTO iterations (target, iteration, host, fencing_token, cost_usd, entry)
               SELECT 't', i, 'a', 1, 0.01, '{}'::jsonb FROM generate_series(1, %s) AS i""",
            (rows,),
        )
        await conn.execute(
            """INSERT INTO reservations (budget, target, iteration, fencing_token, host,
                   amount_usd, charged_usd, state)
               SELECT 'default', 't', i, 1, 'a', 0.01, 0.01, 'settled'
               FROM generate_series(1, %s) AS i""",
            (rows,),
        )
        await conn.execute("ANALYZE reservations")
        await conn.execute("ANALYZE iterations")

    await db.run(work, timeout_s=600)


async def _age_oldest(db: Database, n: int) -> None:
    async def work(conn: Any) -> None:
        await conn.execute(
            """UPDATE reservations SET created_at = now() - interval '8 days'
               WHERE id IN (SELECT id FROM reservations ORDER BY id LIMIT %s)""",
            (n,),
        )

    await db.run(work, timeout_s=120)


async def _timed(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await call()
    return time.perf_counter() - start, result


async def measure(dsn: str, rows: int) -> dict[str, list[float]]:
    """Fill a fresh database and time the two pruning calls; seconds per round."""
    db = Database(dsn, max_size=2, timeout_s=120)
    await db.open()
    try:
        await migrate(db)
        await leases.register(db, ["t", "u"])
        budget = ClusterBudget(db)
        await budget.ensure(1_000_000.0)
        (lease,) = await leases.claim(db, "bench", ["u"], 600)
        await _fill(db, rows)
        figures: dict[str, list[float]] = {"nothing": [], "batch": [], "reserve_settle": []}
        for round_no in range(ROUNDS):
            took, deleted = await _timed(lambda: prune_reservations(db))
            assert deleted == 0
            figures["nothing"].append(took)
            await _age_oldest(db, BATCH)
            took, deleted = await _timed(lambda: prune_reservations(db))
            assert deleted == BATCH, deleted
            figures["batch"].append(took)
            start = time.perf_counter()
            reservation = await budget.reserve(lease, round_no + 1, 1.0)
            assert reservation is not None
            await budget.settle(reservation, 0.5)
            figures["reserve_settle"].append(time.perf_counter() - start)
        return figures
    finally:
        await db.close()


def main() -> int:
    """Run the benchmark; print the figures and write bench/results/cluster_retention.json."""
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()
    admin = admin_dsn()
    if admin is None:
        return 2
    rows = 50_000 if args.quick else args.rows
    info = common.machine()
    common.print_machine(info)
    figures = anyio.run(measure, _fresh_db(admin), rows)
    print(f"{rows:,} settled reservations, batch {BATCH}; seconds (min / median / max)")
    out: dict[str, Any] = {"machine": info, "quick": args.quick, "rows": rows, "batch": BATCH}
    for name, values in figures.items():
        line = [min(values), statistics.median(values), max(values)]
        print(f"  {name:15} " + " / ".join(f"{v:.4f}" for v in line))
        out[name] = [round(v, 5) for v in line]
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at end {out['loadavg_at_end']}")
    common.write_results("cluster_retention", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
