"""A target that cannot start: a failure of a transient kind (cluster mode: the database
gone between the claim and the open) is no start error, so the host does not exit 1 for a
target another host then ran; any other failure is reported as before; and a start that
fails after the store was opened lets the state root go, so a later start can take it.

In-process, on the in-memory storage, with the store's open (or, after it, the review
verdicts' read or the budget window's read of the log) made to fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.review_apply import ReviewApplier
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import ClusterError, StateCorruptError, StateWriteError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.windows import BudgetWindow, parse_window
from autoloop_daemon.storage.base import Recovered
from autoloop_daemon.storage.memory import MemoryStorage, MemoryTargetStore

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]


def _supervisor(
    spec: TargetSpec, storage: MemoryStorage, window: BudgetWindow | None = None
) -> tuple[Supervisor, list[ev.Event]]:
    events = ev.EventBus()
    seen: list[ev.Event] = []
    events.subscribe(seen.append)
    sup = Supervisor(
        [spec], storage=storage, events=events, budget_cap_usd=1.0, max_concurrent=1,
        grace_s=1.0, window=window,
    )  # fmt: skip
    return sup, seen


def _spec(tmp_path: Path) -> TargetSpec:
    return TargetSpec(name="t", path=tmp_path, state_root=tmp_path / "state", dry_run=True)


async def test_a_transient_failure_is_no_start_error_and_any_other_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def database_gone(self: MemoryTargetStore) -> Recovered:
        raise ClusterError("server closed the connection unexpectedly (this test)")

    monkeypatch.setattr(MemoryTargetStore, "open", database_gone)
    spec = _spec(tmp_path)
    sup, seen = _supervisor(spec, MemoryStorage())
    assert await sup.prepare([spec], transient=(ClusterError,)) == []
    record = sup.record("t")
    assert record is not None and record.start_error is None
    assert not [e for e in seen if isinstance(e, ev.TargetNotStarted)]
    assert await sup.prepare([spec]) == []  # not transient for this caller: reported
    assert record.start_error is not None and "server closed" in record.start_error
    assert [e.target for e in seen if isinstance(e, ev.TargetNotStarted)] == ["t"]


async def test_a_start_that_fails_after_the_open_lets_the_state_root_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = ReviewApplier.apply

    async def unreadable(self: ReviewApplier) -> None:
        raise StateWriteError("cannot read the review log (this test)")

    monkeypatch.setattr(ReviewApplier, "apply", unreadable)
    spec, storage = _spec(tmp_path), MemoryStorage()
    sup, _ = _supervisor(spec, storage)
    assert await sup.prepare([spec]) == []
    record = sup.record("t")
    assert record is not None and record.start_error is not None
    monkeypatch.setattr(ReviewApplier, "apply", real_apply)
    runners = await sup.prepare([spec])  # the root was let go: it opens again here
    assert [r.spec.name for r in runners] == ["t"] and record.start_error is None


async def test_a_window_cost_that_cannot_be_read_lets_the_state_root_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget window's read of the log comes after the reviews: it is guarded too."""
    real_open, real_read_log = MemoryTargetStore.open, MemoryTargetStore.read_log

    async def spent_before(self: MemoryTargetStore) -> Recovered:
        recovered = await real_open(self)
        recovered.state.total_cost_usd = 0.5  # so the window's share must be read
        return recovered

    async def unreadable(self: MemoryTargetStore) -> list[LogEntry]:
        raise StateCorruptError("cannot read the iteration log (this test)")

    monkeypatch.setattr(MemoryTargetStore, "open", spent_before)
    monkeypatch.setattr(MemoryTargetStore, "read_log", unreadable)
    spec = _spec(tmp_path)
    sup, _ = _supervisor(spec, MemoryStorage(), BudgetWindow(parse_window("1h"), cap_usd=1.0))
    assert await sup.prepare([spec]) == []
    record = sup.record("t")
    assert record is not None and record.start_error is not None
    assert "cannot read the iteration log" in record.start_error
    monkeypatch.setattr(MemoryTargetStore, "read_log", real_read_log)
    runners = await sup.prepare([spec])  # the root was let go: it opens again here
    assert [r.spec.name for r in runners] == ["t"] and record.start_error is None
