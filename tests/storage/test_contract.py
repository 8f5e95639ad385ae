"""The storage contract: every backend of storage/base.py passes this one suite.

Parametrised over the backends of backends.py (memory, files, and PostgreSQL when
AUTOLOOPD_TEST_DSN names a server), in the spirit of APScheduler 4's data store tests: open
and recover, record in order, records that survive a reopen, a state that lags its log
repaired from it, an in-flight run recorded as interrupted, one owner per target (within one
owner and across two owners of one storage), spending of retired state roots. What only one
backend does lives in its own module of this package, named for the backend.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.exceptions import StateLockedError
from autoloop_daemon.models import LogEntry
from autoloop_daemon.target_state import InFlight
from autoloop_daemon.vocab import RunStatus, TargetStatus
from tests.storage.backends import Backend

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]


async def assert_handoff(backend: Backend, path: Path | None, text: str) -> None:
    """`path` holds `text` for a backend that passes handoffs as files; else it is None."""
    if backend.handoff_files:
        assert path is not None
        assert await anyio.Path(path).read_text() == text
    else:
        assert path is None


def entry(i: int, cost: float = 0.25, status: RunStatus = RunStatus.COMPLETED) -> LogEntry:
    """Iteration `i`'s log entry: kept and scored when completed, else neither."""
    completed = status == RunStatus.COMPLETED
    return LogEntry(
        iteration=i, started_at=f"2026-01-01T00:00:0{i % 10}Z",
        finished_at=f"2026-01-01T00:00:0{i % 10}Z", status=status,
        decision="keep" if completed else None, weighted_score=0.5 + i / 100 if completed else None,
        cost_usd=cost, duration_seconds=1.0, cost_source="reported",
    )  # fmt: skip


async def test_a_fresh_target_opens_empty(backend: Backend) -> None:
    """Nothing recorded: an idle state, no log, no progress."""
    store = backend.first.target(backend.spec())
    recovered = await store.open()
    assert recovered.state.status == TargetStatus.IDLE
    assert (recovered.state.iterations_completed, recovered.last_entry) == (0, None)
    assert await store.read_log() == []
    await backend.let_go(store)


async def test_records_are_read_back_in_order(backend: Backend) -> None:
    """Runs recorded without their state (a failed one and another cost among them) are read
    back by the same store as they were recorded, oldest first."""
    store = backend.first.target(backend.spec())
    await store.open()
    entries = [entry(1), entry(2, cost=0.5), entry(3, status=RunStatus.FAILED)]
    for e in entries:
        await store.record(e, f"handoff {e.iteration}", None)
    assert await store.read_log() == entries
    await backend.let_go(store)


async def test_records_survive_a_reopen_exactly(backend: Backend) -> None:
    """Three recorded runs (state saved with each): a new store sees the same log and a
    state whose totals equal the log's; a backend that passes handoffs as files has the
    last one where the record put it, before and after the reopen (memory passes none)."""
    spec = backend.spec()
    store = backend.first.target(spec)
    recovered = await store.open()
    state, progress = recovered.state, recovered.progress
    for i in (1, 2, 3):
        e = entry(i)
        progress.add(e)
        progress.apply_to(state)
        await store.record(e, f"handoff {i}", state)
    await assert_handoff(backend, store.handoff_file(3), "handoff 3")
    await backend.let_go(store)
    again = backend.first.target(spec)
    reopened = await again.open()
    assert await again.read_log() == [entry(1), entry(2), entry(3)]
    assert reopened.state.iterations_completed == 3
    assert reopened.state.total_cost_usd == pytest.approx(0.75)
    assert reopened.last_entry == entry(3)
    await assert_handoff(backend, again.handoff_file(3), "handoff 3")
    await backend.let_go(again)


async def test_a_state_that_lags_its_log_is_brought_up_to_it(backend: Backend) -> None:
    """Runs recorded without their state (a deferred save), and a stale state saved after
    one: the next open counts every run of the log and ends on its last entry."""
    spec = backend.spec()
    store = backend.first.target(spec)
    recovered = await store.open()
    await store.record(entry(1), "h1", recovered.state)
    await store.save(recovered.state)  # still says nothing completed
    await store.record(entry(2, cost=0.5), None, None)
    await store.record(entry(3, status=RunStatus.FAILED), None, None)
    await backend.let_go(store)
    again = backend.first.target(spec)
    reopened = await again.open()
    assert reopened.state.iterations_completed == 2
    assert reopened.state.consecutive_errors == 1
    assert reopened.state.total_cost_usd == pytest.approx(1.0)
    assert reopened.last_entry == entry(3, status=RunStatus.FAILED)
    await backend.let_go(again)


async def test_an_in_flight_run_is_recorded_as_interrupted(backend: Backend) -> None:
    """A state saved with a run in flight that the log never got: the next open logs it as
    interrupted (never lost, never counted as completed)."""
    spec = backend.spec()
    store = backend.first.target(spec)
    recovered = await store.open()
    state = recovered.state
    await store.record(entry(1), None, state)
    state.in_flight = InFlight(2, "2026-01-01T00:01:00Z")
    state.status = TargetStatus.RUNNING
    await store.save(state)
    await backend.let_go(store)
    again = backend.first.target(spec)
    reopened = await again.open()
    log = await again.read_log()
    assert [e.status for e in log] == [RunStatus.COMPLETED, RunStatus.INTERRUPTED]
    assert reopened.state.in_flight is None
    assert (reopened.state.iterations_completed, reopened.state.next_iteration) == (1, 3)
    await backend.let_go(again)


async def test_save_then_runs_its_work_off_the_loop_after_a_durable_save(
    backend: Backend,
) -> None:
    """`save_then` saves (an in-flight state a reopen finds), then calls its work once, off
    the event loop, and returns what it returned or raises what it raised."""
    spec = backend.spec()
    store = backend.first.target(spec)
    state = (await store.open()).state
    state.in_flight = InFlight(1, "2026-01-01T00:01:00Z")
    state.status = TargetStatus.RUNNING
    loop_thread = threading.get_ident()
    calls: list[int] = []

    def work() -> str:
        calls.append(threading.get_ident())
        return "prepared"

    assert await store.save_then(state, work) == "prepared"
    assert len(calls) == 1 and calls[0] != loop_thread

    def failing() -> None:
        raise RuntimeError("preparation failed (this test)")

    with pytest.raises(RuntimeError, match="preparation failed"):
        await store.save_then(state, failing)
    await backend.let_go(store)
    again = backend.first.target(spec)
    await again.open()
    assert [e.status for e in await again.read_log()] == [RunStatus.INTERRUPTED]
    await backend.let_go(again)


async def test_a_second_store_of_an_owned_target_is_refused_until_it_is_let_go(
    backend: Backend,
) -> None:
    """Within one owner: a second open of an owned target is refused; after the first store
    gives it up it is allowed."""
    spec = backend.spec()
    first = backend.first.target(spec)
    await first.open()
    with pytest.raises(StateLockedError):
        await backend.first.target(spec).open()
    await backend.let_go(first)
    second = backend.first.target(spec)
    await second.open()
    await backend.let_go(second)


async def test_two_owners_of_one_storage_never_hold_a_target_at_once(backend: Backend) -> None:
    """Across owners (two daemons on one state_dir, two hosts on one database): the second
    is refused while the first holds the target, and takes it once the first gave it up."""
    first = backend.first.target(backend.spec(owner=0))
    await first.open()
    second = backend.second.target(backend.spec(owner=1))
    with pytest.raises(StateLockedError):
        await second.open()
    await backend.let_go(first)
    await second.open()  # given up: the other owner may take it
    await backend.let_go(second)


async def test_spending_of_retired_state_roots_is_kept(backend: Backend) -> None:
    """What a target no longer configured spent stays reported by spent_elsewhere."""
    storage = backend.first
    old, new = backend.spec("old"), backend.spec("new")
    store = storage.target(old)
    recovered = await store.open()
    await store.record(entry(1, cost=1.5), None, recovered.state)
    await backend.let_go(store)
    await storage.remember({old.state_root: 1.5})
    elsewhere = await storage.spent_elsewhere([new.state_root])
    assert elsewhere == {str(old.state_root): pytest.approx(1.5)}
    assert await storage.spent_elsewhere([old.state_root, new.state_root]) == {}
