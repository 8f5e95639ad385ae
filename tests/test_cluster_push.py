"""Pushing the journal to the cluster's database (storage/postgres/store.py) when several
tasks push the same target's waiting entries at once, on a real PostgreSQL.

Found by the chaos tests (database restart): after an outage, the push loop, the end of a
target's run and a new record each push the same store's waiting entries; unserialised, two
of them pushed the same entry and both removed one from the queue, so an entry was never
pushed, or the queue ran empty under the second (IndexError: the daemon died, exit 1)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.store import PostgresStorage, cluster_log

pytestmark = pytest.mark.anyio


def _entry(iteration: int) -> LogEntry:
    return LogEntry(
        iteration=iteration, started_at="s", finished_at="f", status="completed",
        decision="keep", weighted_score=0.5, cost_usd=0.1, duration_seconds=1.0,
    )  # fmt: skip


async def test_concurrent_pushes_send_every_waiting_entry_once(
    db: Database, tmp_path: Path
) -> None:
    """Three entries journaled while the database was away, then three pushes at once: the
    database gets 1, 2, 3, and nothing is left waiting."""
    storage = PostgresStorage(db, "a", tmp_path / "d")
    store = storage.target(TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "t"))
    await store.open()
    await db.close()
    for iteration in (1, 2, 3):
        await store.record(_entry(iteration), None, None)
    await db.open()
    async with anyio.create_task_group() as tg:
        tg.start_soon(storage.push_waiting)
        tg.start_soon(store.push_pending)
        tg.start_soon(storage.push_waiting)
    assert [e.iteration for e in await cluster_log(db, "t")] == [1, 2, 3]
    assert not storage.has_waiting("t")
    await store.close()
