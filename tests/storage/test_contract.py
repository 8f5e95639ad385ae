"""The storage contract: every backend of storage/base.py passes this one suite.

Parametrised over the backends (files, memory; a database backend adds itself to `BACKENDS`),
in the spirit of APScheduler 4's data store tests: open and recover, record atomically,
deferred saves repaired from the log, an in-flight run recorded as interrupted, one owner,
spending of retired state roots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.exceptions import StateLockedError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.storage.base import Storage
from autoloop_daemon.storage.files.store import FileStorage
from autoloop_daemon.storage.memory import MemoryStorage
from autoloop_daemon.target_state import InFlight
from autoloop_daemon.vocab import RunStatus, TargetStatus

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]

BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "files": lambda tmp: FileStorage(tmp / "state"),
    "memory": lambda tmp: MemoryStorage(),
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh storage of each backend."""
    return BACKENDS[request.param](tmp_path)


def spec_for(tmp_path: Path, name: str = "t") -> TargetSpec:
    target = tmp_path / f"skill-{name}"
    target.mkdir(exist_ok=True)
    return TargetSpec(name=name, path=target, state_root=tmp_path / "state" / name, dry_run=True)


def entry(i: int, cost: float = 0.25, status: RunStatus = RunStatus.COMPLETED) -> LogEntry:
    completed = status == RunStatus.COMPLETED
    return LogEntry(
        iteration=i, started_at=f"2026-01-01T00:00:0{i % 10}Z",
        finished_at=f"2026-01-01T00:00:0{i % 10}Z", status=status,
        decision="keep" if completed else None, weighted_score=0.5 + i / 100 if completed else None,
        cost_usd=cost, duration_seconds=1.0, cost_source="reported",
    )  # fmt: skip


async def test_a_fresh_target_opens_empty(storage: Storage, tmp_path: Path) -> None:
    """Nothing recorded: an idle state, no log, no progress."""
    store = storage.target(spec_for(tmp_path))
    recovered = await store.open()
    assert recovered.state.status == TargetStatus.IDLE
    assert (recovered.state.iterations_completed, recovered.last_entry) == (0, None)
    assert await store.read_log() == []
    store.close()


async def test_records_survive_a_reopen_exactly(storage: Storage, tmp_path: Path) -> None:
    """Three recorded runs (state saved with each): a new store sees the same log and a
    state whose totals equal the log's."""
    spec = spec_for(tmp_path)
    store = storage.target(spec)
    recovered = await store.open()
    state, progress = recovered.state, recovered.progress
    for i in (1, 2, 3):
        e = entry(i)
        progress.add(e)
        progress.apply_to(state)
        await store.record(e, f"handoff {i}", state)
    store.close()
    again = storage.target(spec)
    reopened = await again.open()
    assert await again.read_log() == [entry(1), entry(2), entry(3)]
    assert reopened.state.iterations_completed == 3
    assert reopened.state.total_cost_usd == pytest.approx(0.75)
    assert reopened.last_entry == entry(3)
    path = again.handoff_file(3)
    if path is not None:  # a backend that passes handoffs as files
        assert (await anyio.to_thread.run_sync(path.read_text)) == "handoff 3"
    again.close()


async def test_a_state_that_lags_its_log_is_brought_up_to_it(
    storage: Storage, tmp_path: Path
) -> None:
    """Runs recorded without their state (a deferred save) are counted at the next open."""
    spec = spec_for(tmp_path)
    store = storage.target(spec)
    recovered = await store.open()
    await store.record(entry(1), None, recovered.state)
    await store.record(entry(2, cost=0.5), None, None)
    await store.record(entry(3, status=RunStatus.FAILED), None, None)
    store.close()
    reopened = await storage.target(spec).open()
    assert reopened.state.iterations_completed == 2
    assert reopened.state.consecutive_errors == 1
    assert reopened.state.total_cost_usd == pytest.approx(1.0)


async def test_an_in_flight_run_is_recorded_as_interrupted(
    storage: Storage, tmp_path: Path
) -> None:
    """A state saved with a run in flight that the log never got: the next open logs it as
    interrupted (never lost, never counted as completed)."""
    spec = spec_for(tmp_path)
    store = storage.target(spec)
    recovered = await store.open()
    state = recovered.state
    await store.record(entry(1), None, state)
    state.in_flight = InFlight(2, "2026-01-01T00:01:00Z")
    state.status = TargetStatus.RUNNING
    await store.save(state)
    store.close()
    again = storage.target(spec)
    reopened = await again.open()
    log = await again.read_log()
    assert [e.status for e in log] == [RunStatus.COMPLETED, RunStatus.INTERRUPTED]
    assert reopened.state.in_flight is None
    assert (reopened.state.iterations_completed, reopened.state.next_iteration) == (1, 3)
    again.close()


async def test_one_owner_per_target(storage: Storage, tmp_path: Path) -> None:
    """A second open of an owned target is refused; after close it is allowed."""
    spec = spec_for(tmp_path)
    first = storage.target(spec)
    await first.open()
    with pytest.raises(StateLockedError):
        await storage.target(spec).open()
    first.close()
    second = storage.target(spec)
    await second.open()
    second.close()


async def test_spending_of_retired_state_roots_is_kept(storage: Storage, tmp_path: Path) -> None:
    """What a target no longer configured spent stays reported by spent_elsewhere."""
    old, new = spec_for(tmp_path, "old"), spec_for(tmp_path, "new")
    store = storage.target(old)
    recovered = await store.open()
    await store.record(entry(1, cost=1.5), None, recovered.state)
    store.close()
    await storage.remember({old.state_root: 1.5})
    elsewhere = await storage.spent_elsewhere([new.state_root])
    assert elsewhere == {str(old.state_root): pytest.approx(1.5)}
    assert await storage.spent_elsewhere([old.state_root, new.state_root]) == {}
