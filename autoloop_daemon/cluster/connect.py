"""The daemon in cluster mode: open the database, check its schema, then serve as a member
(the composition root's choice of `ClusterHosting` for the supervisor).

`autoloopd --config F` with `[cluster] dsn` runs here: the same config file on every host,
each with its own `daemon.state_dir` (its journal) and `host_id`. The database must hold
the schema this autoloopd knows (`autoloopd db init` / `migrate`); a daemon never creates
or upgrades it on its own, so two versions never race to change it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from autoloop_daemon.cluster.hosting import ClusterHosting, ClusterLink
from autoloop_daemon.config.loader import AppConfig
from autoloop_daemon.runs.leftovers import MarkedLeftovers
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.schema import check
from autoloop_daemon.storage.postgres.store import PostgresStorage

# Hosts renew all their leases in one statement, claim in one, settle in their own: a few
# connections are enough, and a pool per host keeps the database's connection count low.
POOL_SIZE = 4

Serve = Callable[[PostgresStorage, ClusterHosting], Awaitable[int]]


def _pool_size(cfg: AppConfig) -> int:
    return max(POOL_SIZE, min(16, cfg.daemon.max_concurrent_iterations + 2))


async def serve_in_cluster(cfg: AppConfig, serve: Serve) -> int:
    """Open the cluster's database, check the schema, and `serve(storage, hosting)`.

    Raises ClusterError (unreachable, wrong schema) before anything starts.
    """
    cluster = cfg.cluster
    assert cluster.dsn is not None
    # A transaction of ours lasts milliseconds: one idle for a quarter of a lease belongs to
    # a frozen host, and the server ends it so that its locks do not stall the cluster.
    idle = max(0.5, min(5.0, cluster.lease_seconds / 4))
    db = Database(cluster.dsn, max_size=_pool_size(cfg), idle_in_transaction_s=idle)
    await db.open()
    try:
        await check(db)
        storage = PostgresStorage(
            db,
            cluster.host,
            cfg.daemon.state_dir,
            lease_s=cluster.lease_seconds,
            leftovers=MarkedLeftovers(),
        )
        link = ClusterLink(
            db=db,
            storage=storage,
            host=cluster.host,
            lease_s=cluster.lease_seconds,
            renew_s=cluster.renew_seconds,
            retention_days=cluster.reservation_retention_days,
        )
        return await serve(storage, ClusterHosting(link))
    finally:
        with anyio.CancelScope(shield=True):
            await db.close()


def check_cluster(cfg: AppConfig) -> str | None:
    """`--check` in cluster mode: None when the database answers with the right schema,
    else the problem (one line naming cluster.dsn)."""
    from autoloop_daemon.storage.postgres.db import ClusterError

    async def probe() -> None:
        assert cfg.cluster.dsn is not None
        db = Database(cfg.cluster.dsn, max_size=1)
        await db.open()
        try:
            await check(db)
        finally:
            await db.close()

    try:
        anyio.run(probe)
    except ClusterError as exc:
        return f"cluster.dsn: {exc}"
    return None
