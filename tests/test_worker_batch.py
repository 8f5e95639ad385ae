"""WorkerBatch: calls queued at the same moment run together off the loop, and each caller
gets its own result or exception (storage/files/worker_batch.py)."""

from __future__ import annotations

import threading

import anyio
import pytest

from autoloop_daemon.storage.files.worker_batch import WorkerBatch

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]


def _square(n: int, threads: set[int]) -> int:
    threads.add(threading.get_ident())
    if n % 7 == 3:
        raise ValueError(f"bad {n}")
    return n * n


async def test_each_caller_gets_its_own_result_or_error_and_calls_are_batched() -> None:
    batch = WorkerBatch(size=16, threads=2)
    threads: set[int] = set()
    results: dict[int, object] = {}

    async def call(n: int) -> None:
        try:
            results[n] = await batch.run(_square, n, threads)
        except ValueError as exc:
            results[n] = str(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(100):
                tg.start_soon(call, n)
    assert results == {n: f"bad {n}" if n % 7 == 3 else n * n for n in range(100)}
    assert threading.get_ident() not in threads  # never on the event loop's thread


async def test_a_cancelled_caller_still_waits_for_its_call() -> None:
    """Like anyio.to_thread.run_sync: what the call did (a lock taken) is not left behind
    unnoticed by a caller that went away."""
    batch = WorkerBatch()
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.append("done")
        return "done"

    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(batch.run, slow)
                await anyio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                release.set()
    assert finished == ["done"]


async def test_the_batch_is_reused_after_a_call() -> None:
    batch = WorkerBatch(size=1)
    with anyio.fail_after(30):
        assert [await batch.run(_square, n, set()) for n in (1, 2, 4)] == [1, 4, 16]
