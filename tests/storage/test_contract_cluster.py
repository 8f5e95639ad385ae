"""The storage contract for the cluster backend: each case runs against files and against
PostgreSQL (when AUTOLOOPD_TEST_DSN names a server), two owners of one storage apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.exceptions import StateLockedError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.target_state import TargetState
from tests.storage.backends import Backend, files_backend, postgres_backend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["files", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend in turn."""
    if request.param == "files":
        async with files_backend(tmp_path) as b:
            yield b
    else:
        dsn = request.getfixturevalue("pg_dsn")
        async with postgres_backend(tmp_path, dsn) as b:
            yield b


def _spec(tmp_path: Path, owner: str = "a", name: str = "t") -> TargetSpec:
    # The files backend's two owners share one state root (one host); the database's two
    # hosts each journal in their own (what matters there is the lease).
    return TargetSpec(name=name, path=tmp_path / "skill", state_root=tmp_path / owner / name)


def _entry(iteration: int, **kw: Any) -> LogEntry:
    fields: dict[str, Any] = {
        "iteration": iteration,
        "started_at": f"start-{iteration}",
        "finished_at": f"end-{iteration}",
        "status": "completed",
        "decision": "keep",
        "weighted_score": 0.5,
        "cost_usd": 0.1,
        "duration_seconds": 1.0,
    }
    fields.update(kw)
    return LogEntry(**fields)


def _owner_spec(backend: Backend, tmp_path: Path, which: str) -> TargetSpec:
    return _spec(tmp_path, "a" if backend.one_root else which)


async def test_a_new_target_opens_empty(backend: Backend, tmp_path: Path) -> None:
    store = backend.first.target(_spec(tmp_path))
    recovered = await store.open()
    assert recovered.last_entry is None
    assert recovered.state.iterations_completed == 0
    assert await store.read_log() == []
    await backend.let_go(store)


async def test_records_are_read_back_in_order(backend: Backend, tmp_path: Path) -> None:
    store = backend.first.target(_spec(tmp_path))
    await store.open()
    entries = [_entry(1), _entry(2, cost_usd=0.25), _entry(3, status="failed", decision=None)]
    for entry in entries:
        await store.record(entry, f"handoff {entry.iteration}", None)
    assert await store.read_log() == entries
    await backend.let_go(store)


async def test_reopening_recovers_the_log_and_state(backend: Backend, tmp_path: Path) -> None:
    store = backend.first.target(_spec(tmp_path))
    recovered = await store.open()
    state: TargetState = recovered.state
    await store.record(_entry(1), "h1", None)
    await store.save(state)
    await backend.let_go(store)
    again = backend.first.target(_spec(tmp_path))
    recovered = await again.open()
    assert recovered.last_entry == _entry(1)
    assert recovered.state.iterations_completed == 1
    await backend.let_go(again)


async def test_one_owner_at_a_time(backend: Backend, tmp_path: Path) -> None:
    first = backend.first.target(_owner_spec(backend, tmp_path, "a"))
    await first.open()
    second = backend.second.target(_owner_spec(backend, tmp_path, "b"))
    with pytest.raises(StateLockedError):
        await second.open()
    await backend.let_go(first)
    await second.open()  # given up: the other owner may take it
    await backend.let_go(second)


async def test_the_handoff_file_is_where_the_record_put_it(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.first.target(_spec(tmp_path))
    await store.open()
    await store.record(_entry(1), "what iteration 1 decided", None)
    path = store.handoff_file(1)
    assert path is not None and path.read_text() == "what iteration 1 decided"
    await backend.let_go(store)
