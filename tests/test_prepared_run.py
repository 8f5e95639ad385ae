"""The in-flight checkpoint and the run's preparation (argv, run log) side by side
(engine/iteration.py, runs/orchestrator.py `prepare_run`): the run starts only once both are
done, and a checkpoint that fails leaves no process started and no run log open.

In-process, on the in-memory storage, with a real orchestrator command (`touch`) that would
leave a mark if it were ever started, under blockbuster.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.memory import MemoryStorage, MemoryTargetStore
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import TargetStatus

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]

TOUCH = shutil.which("touch")


def _spec(tmp_path: Path, mark: Path) -> TargetSpec:
    """A target whose run N touches `<mark>-N`."""
    target = tmp_path / "target"
    target.mkdir()
    assert TOUCH is not None
    return TargetSpec(
        name="t", path=target, state_root=tmp_path / "state", mode="single-run",
        max_iterations=2, plateau_window=100, oscillation_window=0, backoff_base_seconds=0.0,
        orchestrator=(TOUCH, f"{mark}-{{iteration}}"), handoff_arg="",
    )  # type: ignore[call-arg]  # fmt: skip


def _open_run_logs(state_root: Path) -> list[str]:
    """The descriptors of this process open on a file under `state_root/runs` (blocking)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if where.startswith(str(state_root / "runs")):
            found.append(where)
    return found


def _events(sup_events: ev.EventBus) -> list[ev.Event]:
    seen: list[ev.Event] = []
    sup_events.subscribe(seen.append)
    return seen


@pytest.mark.skipif(TOUCH is None, reason="no `touch` on PATH")
async def test_a_failed_in_flight_checkpoint_starts_nothing_and_closes_the_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = tmp_path / "started"
    spec = _spec(tmp_path, mark)
    saved = MemoryTargetStore.save

    async def failing_in_flight(self: MemoryTargetStore, state: TargetState) -> None:
        if state.in_flight is not None:
            await anyio.sleep(0.05)  # the run log is opened meanwhile
            raise StateWriteError("cannot write the state: disk full (this test)")
        await saved(self, state)

    monkeypatch.setattr(MemoryTargetStore, "save", failing_in_flight)
    events = ev.EventBus()
    seen = _events(events)
    sup = Supervisor(
        [spec], storage=MemoryStorage(), events=events, budget_cap_usd=10.0,
        max_concurrent=1, grace_s=5.0,
    )  # fmt: skip
    with anyio.fail_after(30):
        await sup.run()
    failed = [e for e in seen if isinstance(e, ev.CheckpointFailed)]
    assert [e.target for e in failed] == ["t"] and "disk full" in failed[0].error
    assert [t.status for t in sup.snapshot().targets] == [TargetStatus.ERROR]
    assert not [e for e in seen if isinstance(e, ev.IterationStarted)]
    assert not await anyio.to_thread.run_sync(Path(f"{mark}-1").exists)  # never started
    # The log was prepared beside the checkpoint, and closed when the checkpoint failed.
    assert await anyio.to_thread.run_sync((spec.state_root / "runs" / "iteration-1.log").exists)
    assert await anyio.to_thread.run_sync(_open_run_logs, spec.state_root) == []


@pytest.mark.skipif(TOUCH is None, reason="no `touch` on PATH")
async def test_each_run_starts_after_its_checkpoint_with_its_log_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = tmp_path / "started"
    spec = _spec(tmp_path, mark)
    saved = MemoryTargetStore.save
    in_flight_saved: list[int] = []

    async def slow_in_flight(self: MemoryTargetStore, state: TargetState) -> None:
        if state.in_flight is not None:
            await anyio.sleep(0.05)  # the run log is made meanwhile; the run waits for both
            started = Path(f"{mark}-{state.in_flight.iteration}")
            assert not await anyio.to_thread.run_sync(started.exists)
            in_flight_saved.append(state.in_flight.iteration)
        await saved(self, state)

    monkeypatch.setattr(MemoryTargetStore, "save", slow_in_flight)
    events = ev.EventBus()
    seen = _events(events)
    sup = Supervisor(
        [spec], storage=MemoryStorage(), events=events, budget_cap_usd=10.0,
        max_concurrent=1, grace_s=5.0,
    )  # fmt: skip
    with anyio.fail_after(30):
        await sup.run()
    # `touch` prints no result: each run fails, and three failures stop the target.
    finished = [e.entry.iteration for e in seen if isinstance(e, ev.IterationFinished)]  # type: ignore[attr-defined]
    assert in_flight_saved == finished == [1, 2, 3]
    for n in finished:  # each started, once its checkpoint was saved
        assert await anyio.to_thread.run_sync(Path(f"{mark}-{n}").exists)
    assert await anyio.to_thread.run_sync(_open_run_logs, spec.state_root) == []
