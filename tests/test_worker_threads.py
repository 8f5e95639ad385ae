"""worker_threads.run_sync keeps anyio.to_thread.run_sync's contract on a shared queue."""

from __future__ import annotations

import contextvars
import gc
import threading
import time
import weakref
from collections.abc import Callable

import anyio
import pytest

from autoloop_daemon import worker_threads

pytestmark = pytest.mark.anyio

_WHO = contextvars.ContextVar("who", default="nobody")


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _ours() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "autoloopd worker"]


async def test_result_error_and_context_are_the_callers() -> None:
    """The call runs off the loop's thread, with the caller's context variables; its
    result and its exception come back to the caller."""
    _WHO.set("caller")

    def where() -> tuple[str, bool]:
        return _WHO.get(), threading.current_thread() is threading.main_thread()

    assert await worker_threads.run_sync(where) == ("caller", False)

    def fails() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await worker_threads.run_sync(fails)


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    """A started call is never abandoned: the cancelled caller returns once it is over."""
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)
        ended.set()

    with anyio.move_on_after(0.05) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker_threads.run_sync, slow)
            await anyio.to_thread.run_sync(started.wait, 10)
            threading.Timer(0.3, release.set).start()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert ended.is_set()  # the task group waited for the call, cancelled or not


async def test_many_calls_at_once_use_at_most_max_threads() -> None:
    """Three times MAX_THREADS calls at once all finish, never more than MAX_THREADS of
    them running together."""
    lock = threading.Lock()
    running = peak = 0

    def busy(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return i

    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await worker_threads.run_sync(busy, i))

    async with anyio.create_task_group() as tg:
        for i in range(3 * worker_threads.MAX_THREADS):
            tg.start_soon(one, i)
    assert sorted(results) == list(range(3 * worker_threads.MAX_THREADS))
    assert 1 < peak <= worker_threads.MAX_THREADS


async def test_idle_threads_leave_and_come_back_when_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread idle for IDLE_S leaves; a later call starts one again."""
    monkeypatch.setattr(worker_threads, "IDLE_S", 0.1)
    before = len(_ours())
    assert await worker_threads.run_sync(lambda: 1) == 1
    assert await anyio.to_thread.run_sync(lambda: _wait_until(lambda: len(_ours()) <= before))
    assert await worker_threads.run_sync(lambda: 2) == 2


async def test_an_idle_thread_keeps_no_arguments_or_result() -> None:
    """What a call was given and gave back is let go once it is answered."""

    class Payload:
        pass

    given, made = Payload(), []

    def work(item: Payload) -> Payload:
        out = Payload()
        made.append(weakref.ref(out))
        return out

    result = await worker_threads.run_sync(work, given)
    gone = weakref.ref(given)
    del given, result

    def both_gone() -> bool:  # the thread lets go right after it answered
        gc.collect()
        return gone() is None and made[0]() is None

    assert await anyio.to_thread.run_sync(_wait_until, both_gone)


def test_a_loop_that_ended_takes_its_threads_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the event loop is gone its idle threads leave (they find it closed)."""
    monkeypatch.setattr(worker_threads, "IDLE_S", 0.1)
    before = {id(t) for t in _ours()}

    async def calls() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker_threads.run_sync, time.sleep, 0.02)

    anyio.run(calls)
    assert _wait_until(lambda: not [t for t in _ours() if id(t) not in before])


def test_on_loop_runs_on_the_loops_thread_and_not_after_it_closed() -> None:
    """A worker calling `on_loop(func)`'s result has `func` run on the loop's thread; once
    that loop has closed the call does nothing (and raises nothing)."""
    ran: list[int] = []
    later: list[Callable[[], None]] = []

    async def main() -> None:
        event = anyio.Event()

        def told() -> None:
            ran.append(threading.get_ident())
            event.set()

        tell = worker_threads.on_loop(told)
        await worker_threads.run_sync(tell)
        with anyio.fail_after(5):
            await event.wait()
        later.append(worker_threads.on_loop(lambda: ran.append(-1)))

    loop_thread = threading.get_ident()
    anyio.run(main)
    assert ran == [loop_thread]
    thread = threading.Thread(target=later[0])
    thread.start()
    thread.join(5)
    assert ran == [loop_thread]
