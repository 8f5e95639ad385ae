"""`autoloopd status` in cluster mode with no daemon answering here: the cluster's rows.

This host's files only know what this host ran; the database knows every target's holder,
last reported status and totals, the budget, and every host's liveness. It is read with
the daemon's own pieces (`read_view`, the budget's totals), read-only, on one short-lived
connection; when the database cannot be reached, the files' report is kept and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import anyio

from autoloop_daemon.cluster.member import cluster_snapshot
from autoloop_daemon.exceptions import ClusterError
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, Totals
from autoloop_daemon.storage.postgres.membership import (
    ClusterTargetRow,
    ClusterView,
    read_view,
)

CONNECT_TIMEOUT_S = 5.0


async def _read(dsn: str, lease_s: float) -> tuple[ClusterView, Totals]:
    db = Database(dsn, max_size=1, timeout_s=CONNECT_TIMEOUT_S)
    await db.open()
    try:
        return await read_view(db, lease_s), await ClusterBudget(db).totals()
    finally:
        await db.close()


def with_cluster(
    report: dict[str, Any],
    dsn: str,
    host: str,
    lease_s: float,
    max_iterations: Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """`report` (from this host's files) with the cluster's view of every target, the
    cluster's budget and every host. `max_iterations` (each configured target's limit) gives
    the rows of targets this host never ran their ITER column. When the database is away,
    the budget says it is unknown (this host's files know only what ran here)."""
    try:
        view, totals = anyio.run(_read, dsn, lease_s)
    except ClusterError as exc:  # unreachable, the extra missing, no schema
        local = report["budget"].get("spent_usd")
        report["budget"] = {
            "spent_usd": None, "reserved_usd": None, "cap_usd": None, "remaining_usd": None,
            "unknown": "the cluster's budget is unknown: its database did not answer "
            f"(this host's files show ${local or 0.0:.2f} spent here)",
        }  # fmt: skip
        report["daemon"]["note"] += f"; the cluster database did not answer: {exc}"
        return report
    for row in report["targets"]:
        found = view.targets.get(row["target"])
        if found is not None:
            _merge(row, found, (max_iterations or {}).get(row["target"]))
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


def _merge(row: dict[str, Any], found: ClusterTargetRow, limit: int | None) -> None:
    """The cluster's word on one target over this host's files. The files' reason and last
    error described this host's last run of it (say, "interrupted by signal" when this
    daemon stopped): they go when the cluster's status is another."""
    status = found.finished_status or found.status or row.get("status")
    if status != row.get("status"):
        row.update(reason=None, last_error=None)
    if limit is not None:
        row["max_iterations"] = limit + found.extra_iterations
    row.update(
        status=status,
        iterations_completed=found.iterations_completed,
        total_cost_usd=found.total_cost_usd,
        paused=found.paused,
        host=found.holder if found.live else None,
    )
