"""`autoloopd status` in cluster mode with no daemon answering here: the cluster's rows.

This host's files only know what this host ran; the database knows every target's holder,
last reported status and totals, the budget, and every host's liveness. Read-only, one
short connection; when the database cannot be reached, the files' report is kept and says
so.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_S = 5


def _rows(
    dsn: str, lease_s: float
) -> tuple[dict[str, tuple[Any, ...]], tuple[Any, ...], list[Any]]:
    import psycopg  # the cluster extra; only here

    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as conn:
        targets = {
            row[0]: row[1:]
            for row in conn.execute(
                """SELECT name, CASE WHEN lease_expires_at > now() THEN lease_holder END,
                          coalesce(finished_status, status), iterations_completed,
                          total_cost_usd, paused FROM targets"""
            ).fetchall()
        }
        budget = conn.execute(
            "SELECT cap_usd, spent_usd, reserved_usd FROM budgets WHERE id = 'default'"
        ).fetchone() or (None, 0, 0)
        hosts = conn.execute(
            """SELECT h.id, h.seen_at, h.seen_at > now() - make_interval(secs => %s)
                      AND h.stopped_at IS NULL, h.stopped_at IS NOT NULL,
                      (SELECT count(*) FROM targets t
                       WHERE t.lease_holder = h.id AND t.lease_expires_at > now())
               FROM hosts h ORDER BY h.id""",
            (lease_s,),
        ).fetchall()
    return targets, budget, hosts


def with_cluster(report: dict[str, Any], dsn: str, host: str, lease_s: float) -> dict[str, Any]:
    """`report` (from this host's files) with the cluster's view of every target, the
    cluster's budget and every host; unchanged but for a note if the database is away."""
    try:
        targets, budget, hosts = _rows(dsn, lease_s)
    except Exception as exc:  # psycopg's errors, a missing extra, a schema not there
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report["daemon"]["note"] += f"; the cluster database did not answer: {reason}"
        return report
    for row in report["targets"]:
        found = targets.get(row["target"])
        if found is None:
            continue
        holder, status, done, cost, paused = found
        row.update(
            status=status or row.get("status"),
            iterations_completed=done,
            total_cost_usd=float(cost),
            paused=bool(paused),
            host=holder,
        )
    cap, spent, reserved = budget
    report["budget"] = {
        "spent_usd": float(spent),
        "reserved_usd": float(reserved),
        "cap_usd": None if cap is None else float(cap),
        "remaining_usd": None if cap is None else round(max(0.0, float(cap - spent)), 6),
    }
    report["cluster"] = {
        "host": host,
        "leases_fresh": False,  # no daemon here: this host holds nothing
        "hosts": [
            {
                "host": h,
                "seen_at": seen.isoformat(),
                "live": bool(live),
                "stopped": bool(gone),
                "leases": int(leases),
            }
            for h, seen, live, gone, leases in hosts
        ],
    }
    report["daemon"]["note"] += "; every target as the cluster's database has it"
    return report
