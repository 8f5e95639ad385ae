"""The cluster's membership rows: hosts, and what each target's row says about its run.

A host registers itself (`register_host`), reports how the targets it runs are doing
(`report_status`), records a target's end (`target_ended`: a finished status for every
host, its last numbers, its lease given back, in one transaction) and says when it stopped
(`host_stopped`). Every round reads the whole picture back as a `ClusterView` (`read_view`):
plain rows, with liveness judged on the database clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.leases import Lease


@dataclass(frozen=True, slots=True)
class ClusterTargetRow:
    """One target as the cluster's database has it."""

    holder: str | None
    live: bool
    finished_status: str | None
    finished_limits: str | None
    paused: bool
    run_now: bool
    stopped: bool
    status: str | None
    iterations_completed: int
    total_cost_usd: float
    extra_iterations: int = 0  # `ctl extend`, for whichever host runs it
    extra_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host: when it last renewed, and whether it counts as live."""

    host: str
    seen_at: str
    live: bool
    pid: int | None
    stopped: bool


@dataclass(slots=True)
class ClusterView:
    """The cluster as read at the last round."""

    targets: dict[str, ClusterTargetRow] = field(default_factory=dict)
    hosts: tuple[HostRow, ...] = ()

    @property
    def live_hosts(self) -> int:
        """Hosts that renewed within a lease (at least this one)."""
        return max(1, sum(1 for h in self.hosts if h.live))


@dataclass(frozen=True, slots=True)
class TargetReport:
    """A target's last status and totals, as the host running it reports them."""

    name: str
    status: str
    iterations_completed: int
    total_cost_usd: float


async def read_view(db: Database, lease_s: float) -> ClusterView:
    """Every target's row and every host's liveness (renewed within `lease_s` and not
    stopped), in one transaction."""

    async def work(conn: Any) -> ClusterView:
        cur = await conn.execute(
            """SELECT name, lease_holder, coalesce(lease_expires_at > now(), false),
                      finished_status, finished_limits, paused, run_now, stopped, status,
                      iterations_completed, total_cost_usd, extra_iterations, extra_cost_usd
               FROM targets"""
        )
        targets = {
            row[0]: ClusterTargetRow(row[1], bool(row[2]), row[3], row[4], bool(row[5]),
                              bool(row[6]), bool(row[7]), row[8], int(row[9]), float(row[10]),
                              int(row[11]), float(row[12]))
            for row in await cur.fetchall()
        }  # fmt: skip
        cur = await conn.execute(
            """SELECT id, seen_at, seen_at > now() - make_interval(secs => %s)
                      AND stopped_at IS NULL, pid, stopped_at IS NOT NULL
               FROM hosts ORDER BY id""",
            (lease_s,),
        )
        hosts = tuple(
            HostRow(h, seen.isoformat(), bool(live), pid, bool(stopped))
            for h, seen, live, pid, stopped in await cur.fetchall()
        )
        return ClusterView(targets, hosts)

    return await db.run(work)


async def register_host(db: Database, host: str, pid: int) -> None:
    """`host` is up with process `pid` (a row for a new host; a returning one is seen now
    and no longer stopped)."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """INSERT INTO hosts (id, pid) VALUES (%s, %s) ON CONFLICT (id)
               DO UPDATE SET seen_at = now(), pid = excluded.pid, stopped_at = NULL""",
            (host, pid),
        )

    await db.run(work)


async def report_status(db: Database, reports: Sequence[TargetReport]) -> None:
    """Write each reported target's status and totals to its row (for status on any host)."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """UPDATE targets t SET status = r.status, iterations_completed = r.done,
                      total_cost_usd = r.cost, status_at = now()
               FROM unnest(%s::text[], %s::text[], %s::int[], %s::numeric[])
                    AS r(name, status, done, cost)
               WHERE t.name = r.name""",
            (
                [r.name for r in reports],
                [r.status for r in reports],
                [r.iterations_completed for r in reports],
                [r.total_cost_usd for r in reports],
            ),
        )

    await db.run(work)


async def target_ended(
    db: Database,
    host: str,
    name: str,
    *,
    finished_status: str | None,
    finished_limits: str | None,
    report: TargetReport | None,
    lease: Lease | None,
) -> None:
    """A target `host` ran ended, in one transaction: its `finished_status` for every host,
    held for `finished_limits` (None: it goes on elsewhere); its last `report`, unless
    another host holds it now; its `lease` given back (when still that lease)."""

    async def work(conn: Any) -> None:
        await conn.execute(
            """UPDATE targets SET finished_status = %s, finished_limits = %s
               WHERE name = %s AND %s""",
            (finished_status, finished_limits, name, finished_status is not None),
        )
        if report is not None:
            await conn.execute(  # never over the report of a host that took it over
                """UPDATE targets SET status = %s, iterations_completed = %s,
                          total_cost_usd = %s, status_at = now()
                   WHERE name = %s AND (lease_holder IS NULL OR lease_holder = %s)""",
                (report.status, report.iterations_completed, report.total_cost_usd, name, host),
            )
        if lease is not None:
            await conn.execute(
                """UPDATE targets SET lease_holder = NULL, lease_expires_at = NULL
                   WHERE name = %s AND lease_holder = %s AND fencing_token = %s""",
                (name, lease.host, lease.token),
            )

    await db.run(work)


async def host_stopped(db: Database, host: str) -> None:
    """`host` stopped gracefully (it no longer counts as live)."""

    async def work(conn: Any) -> None:
        await conn.execute("UPDATE hosts SET stopped_at = now() WHERE id = %s", (host,))

    await db.run(work)
