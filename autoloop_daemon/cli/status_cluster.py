"""`autoloopd status` in cluster mode with no daemon answering here: the cluster's rows.

This host's files only know what this host ran; the database knows every target's holder,
last reported status and totals, the budget, and every host's liveness. It is read with
the daemon's own pieces (`read_view`, the budget's totals), read-only, on one short-lived
connection; when the database cannot be reached, the files' report is kept and says so.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import anyio

from autoloop_daemon.cluster.member import cluster_snapshot
from autoloop_daemon.exceptions import ClusterError
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, Totals
from autoloop_daemon.storage.postgres.membership import ClusterView, read_view

CONNECT_TIMEOUT_S = 5.0


async def _read(dsn: str, lease_s: float) -> tuple[ClusterView, Totals]:
    db = Database(dsn, max_size=1, timeout_s=CONNECT_TIMEOUT_S)
    await db.open()
    try:
        return await read_view(db, lease_s), await ClusterBudget(db).totals()
    finally:
        await db.close()


def with_cluster(report: dict[str, Any], dsn: str, host: str, lease_s: float) -> dict[str, Any]:
    """`report` (from this host's files) with the cluster's view of every target, the
    cluster's budget and every host; unchanged but for a note if the database is away."""
    try:
        view, totals = anyio.run(_read, dsn, lease_s)
    except ClusterError as exc:  # unreachable, the extra missing, no schema
        report["daemon"]["note"] += f"; the cluster database did not answer: {exc}"
        return report
    for row in report["targets"]:
        found = view.targets.get(row["target"])
        if found is None:
            continue
        row.update(
            status=found.finished_status or found.status or row.get("status"),
            iterations_completed=found.iterations_completed,
            total_cost_usd=found.total_cost_usd,
            paused=found.paused,
            host=found.holder if found.live else None,
        )
    cap, spent = float(totals.cap), float(totals.spent)
    report["budget"] = {
        "spent_usd": spent,
        "reserved_usd": float(totals.reserved),
        "cap_usd": cap,
        "remaining_usd": round(max(0.0, cap - spent), 6),
    }
    # No daemon here: this host holds no lease ("leases_fresh" false: nothing runs here).
    report["cluster"] = asdict(cluster_snapshot(view, host, leases_fresh=False))
    report["daemon"]["note"] += "; every target as the cluster's database has it"
    return report
