"""Worker threads for the file work on an iteration's path: one shared queue per event loop.

`anyio.to_thread.run_sync` gives each call to an idle worker of its own (a queue per
thread) and wakes the event loop once per result. With 32 runs at once that cost
~170 µs of CPU per call here, against ~60 µs for threads that take their calls from one
shared queue, so that a busy thread goes on to the next call without sleeping and the
results of a burst wake the loop once (bench/handoffs.py times a bare hand-off; issue 24).
An iteration makes three such calls: its in-flight checkpoint with the run's preparation,
the run log's end with the content hash, and its record.

`run_sync` keeps anyio's contract: the caller's context variables are the call's, an
exception is the caller's, and a call that has started is never abandoned (a cancelled
caller waits for it in a shielded scope, and the cancellation is delivered afterwards).
The pool belongs to one event loop (an anyio RunVar) and only its thread touches the
counts; a thread idle for IDLE_S leaves, and a loop that ends takes its threads with it
(they find it closed and leave).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

import anyio
from anyio.lowlevel import RunVar

__all__ = ["MAX_THREADS", "on_loop", "run_sync"]

MAX_THREADS = 32  # at most this many calls at once (anyio's own limit is 40)
IDLE_S = 10.0  # an idle thread leaves after this long (anyio's workers do the same)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_Job = tuple[asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class _Pool:
    """One event loop's threads and their queue; the counts change on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.threads = 0  # started, and not yet known to have left
        self.pending = 0  # calls submitted and not yet answered

    def submit(self, job: _Job) -> None:
        self.pending += 1
        self.jobs.put(job)
        self._enough_threads()

    def _settle(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self.pending -= 1
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _left(self) -> None:
        """A thread left (idle): start another if calls wait for one meanwhile."""
        self.threads -= 1
        self._enough_threads()

    def _enough_threads(self) -> None:
        if self.pending > self.threads and self.threads < MAX_THREADS:
            self.threads += 1
            threading.Thread(target=self._work, name="autoloopd worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                future, context, func, args = self.jobs.get(timeout=IDLE_S)
            except queue.Empty:
                break
            try:
                result, error = context.run(func, *args), None
            except BaseException as exc:  # handed to the caller, whatever it is
                result, error = None, exc
            # an idle thread keeps no call's arguments or result
            del func, args, context
            if not _call_soon(self.loop, self._settle, future, result, error):
                return  # the loop is gone, and with it this pool
            del future, result, error
        _call_soon(self.loop, self._left)


def _call_soon(loop: asyncio.AbstractEventLoop, func: Callable[..., None], *args: Any) -> bool:
    """`func(*args)` on `loop`'s thread, called from any thread; False when it is closed."""
    try:
        loop.call_soon_threadsafe(func, *args)
    except RuntimeError:
        return False
    return True


def on_loop(func: Callable[[], None]) -> Callable[[], None]:
    """`func` as a worker may call it: it runs on the running loop's thread (never, once
    that loop has closed). For a call that tells the loop something before it returns."""
    loop = asyncio.get_running_loop()

    def call() -> None:
        _call_soon(loop, func)

    return call


_POOL: RunVar[_Pool] = RunVar("autoloopd_worker_pool")


def _pool() -> _Pool:
    try:
        return _POOL.get()
    except LookupError:
        pool = _Pool(asyncio.get_running_loop())
        _POOL.set(pool)
        return pool


async def run_sync(func: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Call `func(*args)` in a worker thread and return its result (see the module
    docstring: the contract of `anyio.to_thread.run_sync` without `abandon_on_cancel`)."""
    pool = _pool()
    future: asyncio.Future[T] = pool.loop.create_future()
    pool.submit((future, contextvars.copy_context(), func, args))
    with anyio.CancelScope(shield=True):
        result = await future
    return result
