"""Targets waiting in line for a concurrency slot hold no task (engine/parking.py): they
still get every turn, stop at once when asked (their state saved), and a daemon torn down
while they wait gives their slots back and releases their state roots.

In-process, on the dry-run simulator, like tests/test_runtime_inprocess.py; the file
storage where the state roots' locks are what is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import SharedBudget
from autoloop_daemon.engine.commands import Commands
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.storage.files.store import FileStorage, FileTargetStore
from autoloop_daemon.vocab import TargetStatus
from tests.test_root_locks import locked_elsewhere
from tests.test_runtime_inprocess import spec, stopped, supervisor

pytestmark = [pytest.mark.anyio]

N = 30  # targets behind one slot


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Return once `condition()` holds (checked every 5 ms); fail after `timeout_s`. Polled:
    a target joining the slots' queue publishes no event to wait on."""
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(sup: Supervisor, codes: list[int]) -> AsyncIterator[None]:
    """`sup.run()` in a task of its own while the body runs (its exit code appended to
    `codes`); left once it has returned."""

    async def run() -> None:
        codes.append(await sup.run())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield


def queued(sup: Supervisor) -> int:
    """How many targets wait for a slot now (the snapshot's `queued`)."""
    return sup.snapshot(targets=False).queued


async def test_targets_waiting_for_a_slot_hold_no_task_and_get_every_turn(
    tmp_path: Path,
) -> None:
    """30 targets behind one slot: while 29 wait in line, the event loop holds far fewer
    than 30 tasks; every target still runs its two iterations, and the slot is free at
    the end."""
    names = [f"t{i:02}" for i in range(N)]
    sup, rec = supervisor(
        [spec(tmp_path, n, max_iterations=2, simulated_seconds=0.02) for n in names],
        max_concurrent=1,
    )
    codes: list[int] = []
    tasks_while_queued: list[int] = []
    with anyio.fail_after(60):
        async with running(sup, codes):
            await until(lambda: queued(sup) >= N - 1)
            tasks_while_queued.append(len(asyncio.all_tasks()))
    assert codes == [0]
    assert tasks_while_queued[0] < N // 3, tasks_while_queued
    assert stopped(rec) == dict.fromkeys(names, TargetStatus.STOPPED_MAX_ITER)
    finished = rec.of(ev.IterationFinished)
    assert sorted(e.target for e in finished) == sorted(names * 2)  # type: ignore[attr-defined]
    assert sup.snapshot(targets=False).queued == 0


async def test_a_shutdown_stops_targets_waiting_in_line_at_once(tmp_path: Path) -> None:
    """A shutdown while one long iteration holds the only slot: the targets waiting in
    line stop (stopped_signal) before that iteration ends, each once, and nothing waits
    for a slot afterwards."""
    names = [f"t{i:02}" for i in range(N)]
    sup, rec = supervisor(
        [spec(tmp_path, n, max_iterations=5, simulated_seconds=2.0) for n in names],
        max_concurrent=1,
        grace_s=30.0,
    )
    codes: list[int] = []
    with anyio.fail_after(60):
        async with running(sup, codes):
            await until(lambda: queued(sup) >= N - 1 and bool(rec.of(ev.IterationStarted)))
            sup.request_shutdown("test")
            # Every waiting target has stopped while the running iteration still runs.
            await until(lambda: len(stopped(rec)) >= N - 1)
            assert not rec.of(ev.IterationFinished)
    assert codes == [0]
    assert stopped(rec) == dict.fromkeys(names, TargetStatus.STOPPED_SIGNAL)
    assert len(rec.of(ev.TargetStopped)) == N
    assert queued(sup) == 0


async def test_a_daemon_torn_down_while_targets_wait_releases_their_roots(
    tmp_path: Path,
) -> None:
    """The supervisor's run cancelled (torn down, not stopped) while targets wait in line
    for the one slot: it returns, and no state root stays locked."""
    names = [f"t{i:02}" for i in range(10)]
    specs = [spec(tmp_path, n, max_iterations=5, simulated_seconds=5.0) for n in names]
    for s in specs:
        s.state_root.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(
        specs, storage=FileStorage(tmp_path / "state"), budget_cap_usd=100.0,
        max_concurrent=1, grace_s=1.0,
    )  # fmt: skip
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            await until(lambda: queued(sup) >= len(names) - 1)
            assert all(locked_elsewhere(s.state_root) for s in specs)
            tg.cancel_scope.cancel()
    assert [s.name for s in specs if locked_elsewhere(s.state_root)] == []


def parked_runner(tmp_path: Path, slots: RankedSlots) -> tuple[TargetRunner, list[object]]:
    """A prepared runner on the file store whose park hook records each answer."""
    target = spec(tmp_path, "lone", max_iterations=3, mode="continuous", cooldown_minutes=0)
    runner = TargetRunner(
        target, store=FileTargetStore(target), budget=SharedBudget(100.0), slots=slots,
        events=ev.EventBus(),
    )  # fmt: skip
    return runner, []


async def test_a_slot_granted_as_the_daemon_is_torn_down_is_given_back(
    tmp_path: Path,
) -> None:
    """A runner parks behind a taken slot; the slot is handed to it, and before its new
    task could start the daemon is torn down (`abandon_parked`): the slot is free again
    and the state root released."""
    slots = RankedSlots(1, fair_turns=True)
    runner, answers = parked_runner(tmp_path, slots)
    await runner.prepare()
    assert slots.join(lambda: 0.0) is None  # another target holds the only slot
    assert await runner.run(lambda r, answer: answers.append(answer)) is None  # parked
    assert len(answers) == 1 and queued_in(slots) == 1
    slots.release()  # handed to the parked runner: its answer is True
    assert answers[0].done() and answers[0].result() is True  # type: ignore[attr-defined]
    await runner.abandon_parked()
    assert slots.available_tokens == 1 and queued_in(slots) == 0
    assert not locked_elsewhere(runner.spec.state_root)


async def test_a_runner_parked_for_a_slot_stops_when_asked(tmp_path: Path) -> None:
    """A stop request answers a parked runner's wait (False): resumed, it stops with
    stopped_signal holding no slot, and its store is closed."""
    slots = RankedSlots(1, fair_turns=True)
    runner, answers = parked_runner(tmp_path, slots)
    await runner.prepare()
    assert slots.join(lambda: 0.0) is None
    assert await runner.run(lambda r, answer: answers.append(answer)) is None
    runner.request_stop(5.0)
    assert answers[0].done() and answers[0].result() is False  # type: ignore[attr-defined]
    with anyio.fail_after(30):
        status = await runner.run(lambda r, answer: answers.append(answer), resume=True)
    assert status == TargetStatus.STOPPED_SIGNAL
    assert len(answers) == 1  # not parked again
    assert queued_in(slots) == 0 and slots.available_tokens == 0  # the other's slot only
    assert not locked_elsewhere(runner.spec.state_root)


def queued_in(slots: RankedSlots) -> int:
    """How many wait in `slots`' queue."""
    return slots.statistics().tasks_waiting


async def test_a_target_paused_while_it_waits_in_line_starts_no_iteration(
    tmp_path: Path,
) -> None:
    """`ctl pause` of a target that has finished an iteration and waits in line for the
    one slot: when the slot comes to it, it gives it back and starts nothing until resumed;
    the other targets go on meanwhile."""
    options = {"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 50}
    targets = [spec(tmp_path, n, simulated_seconds=0.05, **options) for n in ("a", "b", "c")]
    sup, rec = supervisor(targets, max_concurrent=1)
    commands = Commands(sup)

    def started(name: str) -> int:
        return sum(1 for e in rec.of(ev.IterationStarted) if getattr(e, "target", None) == name)

    def finished(name: str) -> int:
        return sum(1 for e in rec.of(ev.IterationFinished) if getattr(e, "target", None) == name)

    codes: list[int] = []
    with anyio.fail_after(60):
        async with running(sup, codes):
            await rec.wait_for(lambda: finished("b") >= 1)
            await commands.pause("b")  # b now waits in line behind a and c
            paused_at = started("b")
            others = started("a") + started("c")
            await rec.wait_for(lambda: started("a") + started("c") >= others + 6)
            assert started("b") == paused_at
            await commands.resume("b")
            await rec.wait_for(lambda: started("b") > paused_at)
            sup.request_shutdown("test")
    assert codes == [0]
