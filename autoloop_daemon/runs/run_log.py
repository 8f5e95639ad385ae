"""A run's log: its stdout and stderr, in arrival order, written off the event loop.

The log is opened (regular files only, 0640, its directory made) before anything is
started: a run log that is a FIFO, a socket, a directory or a link fails the run with
RunLogError, never a hang.

What the run prints is gathered in memory and written in one worker call when FLUSH_BYTES
have gathered, FLUSH_S after the first byte not yet written (the readers wake for it), or
when the run is over: a short run's output costs no hand-off of its own, since the last
write shares its worker call with the log's close and the caller's `at_end` work (the
target's content hash). So a reader of a running run's log sees it at most FLUSH_S late,
and a daemon killed with SIGKILL loses at most that much of it. The run's cost is never read
from the log, but a dead run is charged up to the log's mtime: the death watch sets it when
it kills the run, and without a death watch (no /proc) every chunk is written as it comes
(`hold_s` 0), so that the mtime is never older than the run's last output.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import structlog

from autoloop_daemon import worker_threads
from autoloop_daemon.exceptions import RunLogError, StateWriteError
from autoloop_daemon.storage.files import fsio

__all__ = ["FLUSH_BYTES", "FLUSH_S", "LogSink", "open_run_log"]

FLUSH_BYTES = 64 * 1024
FLUSH_S = 0.5

_log = structlog.get_logger("autoloopd.process")


def open_run_log(path: Path) -> int:
    """The run log's descriptor, opened for appending through `fsio.open_regular` (its
    directory made); RunLogError when it cannot be. Blocking."""
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


def _write_close_then(fd: int, data: bytes, at_end: Callable[[], None] | None) -> str | None:
    """The last write and the close (the error of the write, if any), then `at_end()`."""
    error = None
    try:
        if data and fd >= 0:
            fsio.write_all(fd, data)
    except OSError as exc:
        error = str(exc)
    finally:
        if fd >= 0:
            os.close(fd)
    if at_end is not None:
        at_end()
    return error


class LogSink:
    """The run log of one run (see the module docstring).

    `open` must succeed before the run starts. A write error later (disk full) is logged
    once and later output is dropped: losing the log must not kill the run.
    """

    __slots__ = ("_buf", "_failed", "_fd", "_hold_s", "_lock", "_path", "_since")

    def __init__(self, path: Path, fd: int = -1, hold_s: float = FLUSH_S) -> None:
        """The log at `path`; `fd` >= 0: opened already (`open_run_log`). Output waits at
        most `hold_s` seconds to be written (0: written as it comes)."""
        self._fd = fd
        self._hold_s = hold_s
        self._path = path
        self._lock = anyio.Lock()
        self._failed = False
        self._buf = bytearray()
        self._since = 0.0  # when the oldest byte not written arrived (loop time)

    async def open(self) -> None:
        """Open (or create, 0640) the log for appending unless it is open; RunLogError if
        it cannot be."""
        if self._fd < 0:
            self._fd = await worker_threads.run_sync(open_run_log, self._path)

    def close_now(self) -> None:
        """Close the log's descriptor, dropping what was not written (a run never started)."""
        self._buf.clear()
        if self._fd >= 0:
            os.close(self._fd)  # a regular file's close does not block
            self._fd = -1

    def due(self) -> float | None:
        """When what is gathered must be written (loop time); None when nothing is."""
        return self._since + self._hold_s if self._buf else None

    async def add(self, chunk: bytes) -> None:
        """Gather `chunk`; write what has gathered once it reached FLUSH_BYTES."""
        if self._failed or self._fd < 0:
            return
        if not self._buf:
            self._since = anyio.current_time()
        self._buf += chunk
        if len(self._buf) >= FLUSH_BYTES or self._hold_s <= 0:
            await self.flush()

    async def flush(self) -> None:
        """Write what has gathered (one worker call; none when nothing has)."""
        async with self._lock:
            if not self._buf or self._failed or self._fd < 0:
                return
            data = bytes(self._buf)
            self._buf.clear()
            try:
                await worker_threads.run_sync(fsio.write_all, self._fd, data)
            except OSError as exc:
                self._fail(str(exc))

    async def finish(self, at_end: Callable[[], None] | None = None) -> None:
        """Write what is left and close the log, then call `at_end()`: one worker call (none
        when there is nothing to write and no `at_end`). Call it shielded."""
        async with self._lock:
            fd, self._fd = self._fd, -1
            data = b"" if self._failed else bytes(self._buf)
            self._buf.clear()
            if not data and at_end is None:
                if fd >= 0:
                    os.close(fd)
                return
            error = await worker_threads.run_sync(_write_close_then, fd, data, at_end)
            if error is not None:
                self._fail(error)

    def _fail(self, error: str) -> None:
        self._failed = True
        self._buf.clear()
        _log.warning("run_log_write_failed", path=str(self._path), error=error)
