"""The backends the storage contract suite runs against: memory, files, and PostgreSQL (which
skips, saying why, without AUTOLOOPD_TEST_DSN). Each gives two owners of the same storage (two
daemons on one state_dir, or two hosts on one database) so exclusivity can be checked, and
says where a spec of each owner keeps its state root."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.base import Storage, TargetStore
from autoloop_daemon.storage.files.store import FileStorage
from autoloop_daemon.storage.memory import MemoryStorage

NAMES = ("memory", "files", "postgres")


@dataclass
class Backend:
    """Two owners of one storage, where each keeps its state roots, and how an owner gives
    a target up for good."""

    name: str
    first: Storage
    second: Storage
    roots: tuple[Path, Path]  # the state_dir of `first` and of `second` (equal: one host)
    let_go: Callable[[TargetStore], Awaitable[None]]
    handoff_files: bool  # handoffs are passed to the orchestrator as files

    def spec(self, name: str = "t", *, owner: int = 0) -> TargetSpec:
        """A dry-run target whose state root sits under owner `owner`'s state_dir."""
        target = self.roots[0].parent / f"skill-{name}"
        target.mkdir(exist_ok=True)
        return TargetSpec(name=name, path=target, state_root=self.roots[owner] / name, dry_run=True)


async def _close(store: TargetStore) -> None:
    await store.close()


@asynccontextmanager
async def memory_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """One MemoryStorage (it lives in one process: its two owners are the same object)."""
    storage = MemoryStorage()
    root = tmp_path / "state"
    # MemoryStorage has no spent_since (the engine never asks it): not quite a `Storage`.
    shared: Any = storage
    yield Backend("memory", shared, shared, (root, root), _close, handoff_files=False)


@asynccontextmanager
async def files_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """Two FileStorage objects on one state_dir (two daemons on one host)."""
    root = tmp_path / "state"
    first, second = FileStorage(root), FileStorage(root)
    yield Backend("files", first, second, (root, root), _close, handoff_files=True)


@asynccontextmanager
async def postgres_backend(tmp_path: Path, dsn: str) -> AsyncIterator[Backend]:
    """Two hosts on one database; each keeps its journal in its own state_dir."""
    # Database.open imports psycopg_pool lazily (the optional extra), reading its modules on
    # the loop once per process; imported here first, the suite checks the storage's calls.
    import psycopg_pool  # noqa: F401

    from autoloop_daemon.storage.postgres.db import Database
    from autoloop_daemon.storage.postgres.schema import migrate
    from autoloop_daemon.storage.postgres.store import PostgresStorage, PostgresTargetStore

    dbs = [Database(dsn), Database(dsn)]
    for db in dbs:
        await db.open()
    await migrate(dbs[0])

    async def let_go(store: Any) -> None:
        assert isinstance(store, PostgresTargetStore)
        await store.close()
        await store.release()

    roots = (tmp_path / "a", tmp_path / "b")
    try:
        yield Backend(
            "postgres",
            PostgresStorage(dbs[0], "host-a", roots[0], lease_s=30),
            PostgresStorage(dbs[1], "host-b", roots[1], lease_s=30),
            roots,
            let_go,
            handoff_files=True,
        )
    finally:
        for db in dbs:
            await db.close()
