"""The backends the storage contract suite runs against: files, and PostgreSQL (which skips
without AUTOLOOPD_TEST_DSN). Each gives two independent owners of the same storage (two
daemons, or two hosts) so exclusivity can be checked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoloop_daemon.storage.base import Storage, TargetStore
from autoloop_daemon.storage.files.store import FileStorage


@dataclass
class Backend:
    """Two owners of one storage, and how an owner gives a target up for good."""

    first: Storage
    second: Storage
    let_go: Callable[[TargetStore], Awaitable[None]]
    one_root: bool  # the two owners share one state root (files) or journal apart (hosts)


async def _close(store: TargetStore) -> None:
    store.close()


@asynccontextmanager
async def files_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """Two FileStorage objects on one state_dir (two daemons on one host)."""
    yield Backend(FileStorage(tmp_path / "d"), FileStorage(tmp_path / "d"), _close, True)


@asynccontextmanager
async def postgres_backend(tmp_path: Path, dsn: str) -> AsyncIterator[Backend]:
    """Two hosts on one database; each keeps its journal in its own state_dir."""
    from autoloop_daemon.storage.postgres.db import Database
    from autoloop_daemon.storage.postgres.schema import migrate
    from autoloop_daemon.storage.postgres.store import PostgresStorage, PostgresTargetStore

    dbs = [Database(dsn), Database(dsn)]
    for db in dbs:
        await db.open()
    await migrate(dbs[0])

    async def let_go(store: Any) -> None:
        assert isinstance(store, PostgresTargetStore)
        store.close()
        await store.release()

    try:
        yield Backend(
            PostgresStorage(dbs[0], "host-a", tmp_path / "a", lease_s=30),
            PostgresStorage(dbs[1], "host-b", tmp_path / "b", lease_s=30),
            let_go,
            False,
        )
    finally:
        for db in dbs:
            await db.close()
