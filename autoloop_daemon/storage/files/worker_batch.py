"""Many small blocking calls made at the same moment, run together in a few worker calls.

At start-up every target loads its state root (lock, layout, state, log summary) in a
blocking call. One worker-thread call each costs a hand-off (waking a thread, waking the
loop) and, with dozens of threads taking turns on the GIL for their many short system
calls, each call waits for the others: 10,000 warm loads took 5-10 s that way, against
1.5 s one after the other in one thread. `WorkerBatch.run` queues the call; the first
caller of a batch lets the loop's other ready tasks join it, then runs the whole batch
in one worker call (a few batches at a time) and hands each caller its own result or
exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")


class _Call(Generic[T]):
    """One queued call and, once run, its outcome."""

    __slots__ = ("args", "done", "error", "fn", "ran", "result")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.ran = False


def _run_all(calls: list[_Call[Any]]) -> None:
    """In the worker: every call in order, each one's exception kept for its caller."""
    for call in calls:
        try:
            call.result = call.fn(*call.args)
        except Exception as exc:  # handed to the caller, which raises it
            call.error = exc
        call.ran = True


class WorkerBatch:
    """Runs blocking calls queued in the same loop turn together, `size` per worker call,
    at most `threads` worker calls at a time."""

    def __init__(self, size: int = 128, threads: int = 4) -> None:
        """Batches of up to `size` calls, `threads` of them running at once."""
        self._size = size
        self._threads = threads
        self._limiter: anyio.CapacityLimiter | None = None  # made in the loop, on first use
        self._open: list[_Call[Any]] = []

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread, batched; returns its result or raises its error.

        Like `anyio.to_thread.run_sync`, a cancelled caller still waits for its call to end
        (its effects, e.g. a lock taken, are then the caller's to undo).
        """
        call: _Call[T] = _Call(fn, args)
        batch = self._open
        batch.append(call)
        if len(batch) >= self._size:
            self._open = []  # full: the next call starts a new batch
        with anyio.CancelScope(shield=True):
            if len(batch) == 1:  # the first of its batch runs it
                await anyio.lowlevel.checkpoint()  # the other ready tasks join meanwhile
                if self._open is batch:
                    self._open = []
                if self._limiter is None:
                    self._limiter = anyio.CapacityLimiter(self._threads)
                try:
                    await anyio.to_thread.run_sync(_run_all, batch, limiter=self._limiter)
                finally:
                    for other in batch:
                        if not other.ran:  # the worker call failed as a whole
                            other.error = _unfinished(other)
                        other.done.set()
            else:
                await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # T, set by _run_all


def _unfinished(call: _Call[Any]) -> BaseException:
    """What a call left unrun (its batch's worker call failed as a whole) raises."""
    return RuntimeError(f"{getattr(call.fn, '__name__', call.fn)!r} did not run: its batch failed")
