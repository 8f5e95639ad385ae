"""A run's output: stdout and stderr streamed to one run log, with bounded tails in memory.

`Readers` starts one task per pipe; each chunk goes to its `Tail` (the last N bytes, and an
optional watcher of stdout) and to the `LogSink`, which appends both streams to the run log
in arrival order. The run log is opened (regular files only, 0640) before anything is
started: a run log that is a FIFO, a socket, a directory or a link is a RunLogError.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog
from anyio.abc import ByteReceiveStream, Process, TaskGroup

from autoloop_daemon.exceptions import RunLogError, StateWriteError
from autoloop_daemon.storage.files import fsio

__all__ = ["LogSink", "Readers", "Tail"]

CHUNK_BYTES = 64 * 1024  # one read from a pipe

_log = structlog.get_logger("autoloopd.process")


class Readers:
    """Two tasks pumping the child's stdout and stderr into the log and the tails."""

    def __init__(
        self,
        tg: TaskGroup,
        process: Process,
        sink: LogSink,
        stdout_tail: Tail,
        stderr_tail: Tail,
    ) -> None:
        self._done = (anyio.Event(), anyio.Event())
        tg.start_soon(_pump, process.stdout, stdout_tail, sink, self._done[0])
        tg.start_soon(_pump, process.stderr, stderr_tail, sink, self._done[1])

    async def wait(self) -> None:
        """Return when both streams reached EOF (or were closed)."""
        for event in self._done:
            await event.wait()


async def _pump(
    stream: ByteReceiveStream | None, tail: Tail, sink: LogSink, done: anyio.Event
) -> None:
    try:
        if stream is None:
            return
        while True:
            try:
                chunk = await stream.receive(CHUNK_BYTES)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            tail.add(chunk)
            await sink.write(chunk)
    finally:
        done.set()


class Tail:
    """The last `limit` bytes of a stream; holds at most about 2 x limit bytes."""

    __slots__ = ("_buf", "_limit", "_watch")

    def __init__(self, limit: int, watch: Callable[[bytes], None] | None = None) -> None:
        self._limit = max(limit, 0)
        self._buf = bytearray()
        self._watch = watch

    def add(self, chunk: bytes) -> None:
        if self._watch is not None:
            self._watch(chunk)
        if self._limit == 0:
            return
        self._buf += chunk
        if len(self._buf) > 2 * self._limit:  # trim rarely: amortised O(1) per byte
            del self._buf[: len(self._buf) - self._limit]

    def value(self) -> bytes:
        if self._limit == 0:
            return b""
        return bytes(self._buf[-self._limit :])


class LogSink:
    """The run log: chunks from both streams appended in arrival order.

    `open_sync` (in a worker thread) must succeed before the run starts. Each write is a
    worker-thread call; chunks that arrive while one is in flight are appended together by
    the next. A write error later (disk full) is logged once and later output is dropped:
    losing the log must not kill the run.
    """

    def __init__(self, path: Path) -> None:
        self._fd = -1
        self._path = path
        self._lock = anyio.Lock()
        self._queued: list[bytes] = []
        self._failed = False

    def open_sync(self) -> None:
        """Open (or create, 0640) the log for appending; RunLogError if it cannot be.
        Blocking: call it in a worker thread."""
        self._fd = _open_log(self._path)

    async def close(self) -> None:
        """Close the log (a run that printed nothing leaves an empty log file)."""
        async with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # a regular file's close does not block
                self._fd = -1

    async def write(self, chunk: bytes) -> None:
        """Append `chunk`; returns once it is written (or dropped after a failure)."""
        if self._failed or self._fd < 0:
            return
        self._queued.append(chunk)
        async with self._lock:  # whoever holds it writes everything queued so far
            if self._failed or self._fd < 0 or not self._queued:
                return
            data = b"".join(self._queued)
            self._queued.clear()
            try:
                await anyio.to_thread.run_sync(_write_all, self._fd, data)
            except OSError as exc:
                self._failed = True
                _log.warning("run_log_write_failed", path=str(self._path), error=str(exc))


def _open_log(path: Path) -> int:
    """The run log's descriptor, opened for appending through `fsio.open_regular`."""
    try:
        fsio.make_dirs(path.parent)
        try:
            return fsio.open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return fsio.open_regular(path, os.O_WRONLY | os.O_APPEND)
    except StateWriteError as exc:
        raise RunLogError(str(exc)) from None
    except OSError as exc:
        raise RunLogError(f"cannot open run log {path}: {fsio.describe_oserror(exc)}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
