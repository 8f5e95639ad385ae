"""Running one program in its own process group, with bounded memory, and stopping the group.

`run_in_group` starts the orchestrator (or scorer) as the leader of a new session, so its
process group id equals its pid and a Ctrl+C in the terminal reaches the daemon, not the
child. Its stdout and stderr are streamed, in arrival order, to one run log while only
bounded tails stay in memory. Whatever happens (normal exit, timeout, a grandchild holding
the pipes open, cancellation from outside), no process of the group is left when it returns
or raises, and neither is one that left the group with `setsid()` once the daemon is the
subreaper (see reaper.py): the run's end sweeps what its tree orphaned.

The run log (run_log.py) is opened before anything is started and written off the loop.

See PITFALLS.md ("anyio") for why each step is done the way it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process, TaskGroup

from autoloop_daemon.runs import deathwatch, reaper
from autoloop_daemon.runs.procfs import (
    RUN_MARKER_ENV,
    group_alive,
    group_exists,
    signal_group,
    stop_group,
)
from autoloop_daemon.runs.run_log import FLUSH_S, LogSink
from autoloop_daemon.runs.spawn import spawn

__all__ = ["CHILD_ENV_DROP", "ProcessOutcome", "child_environment", "run_in_group"]

CHILD_ENV_DROP: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_CHUNK_BYTES = 64 * 1024  # one read from a pipe
_DRAIN_AFTER_EXIT_S = 0.5  # readers' moment to reach EOF once the direct child has exited
_REAP_S = 5.0  # bound on waiting for the direct child's exit code / the pipes' EOF after a kill

_log = structlog.get_logger("autoloopd.process")

# The process groups of every run in progress (this process's), for `kill_running_groups`.
_RUNNING_GROUPS: set[int] = set()


def kill_running_groups() -> list[int]:
    """SIGKILL every running orchestrator's process group at once (the third Ctrl+C);
    returns the groups signalled. Their runs then end as usual (reaped, recorded)."""
    killed = []
    for pgid in sorted(_RUNNING_GROUPS):
        if signal_group(pgid, signal.SIGKILL):
            killed.append(pgid)
    return killed


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    """How one run of a program ended.

    `returncode` is negative (-N) when the child died of signal N, and None only if the child
    had to be killed and its exit code still could not be collected. `timed_out` means the
    direct child was still running after `timeout_s`. `killed` says that
    autoloopd signalled the group: after a timeout, or because processes of the group (a
    grandchild) outlived the direct child; a run can exit 0 and still have `killed` set.
    """

    pid: int
    returncode: int | None
    timed_out: bool
    duration_s: float
    stdout_tail: bytes
    stderr_tail: bytes
    killed: bool


def child_environment(
    extra: Mapping[str, str], marker: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a child: `base` (default: ours) plus `extra`, marked with `marker`.

    systemd's `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` are removed, even when
    `extra` sets them, and `AUTOLOOPD_RUN=<marker>` is always set last.
    """
    if not marker or "\0" in marker:
        raise ValueError(f"run marker must be a non-empty string without NUL: {marker!r}")
    env = dict(os.environ if base is None else base)
    env.update(extra)
    for key in CHILD_ENV_DROP:
        env.pop(key, None)
    env[RUN_MARKER_ENV] = marker
    return env


async def run_in_group(
    argv: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    term_grace_s: float,
    stdout_tail_bytes: int = 1 << 20,
    stderr_tail_bytes: int = 1 << 16,
    on_started: Callable[[int], Awaitable[None]] | None = None,
    on_stdout: Callable[[bytes], None] | None = None,
    log_fd: int | None = None,
    at_end: Callable[[ProcessOutcome], None] | None = None,
) -> ProcessOutcome:
    """Run `argv` (no shell) in a new process group and return how it ended.

    `env`: the child's whole environment (`child_environment`); stdin is /dev/null; output
    goes to the run log `log_path` (run_log.py), the last `stdout/stderr_tail_bytes` kept.
    `on_started(pid)` is awaited right after the spawn (if it raises, the group is stopped
    and the error propagates); `on_stdout(chunk)` sees each chunk of stdout (must not block).
    At the end `reaper.sweep` stops what the run's tree left outside the group.

    After `timeout_s` the group gets SIGTERM, `term_grace_s` seconds, then SIGKILL; so does
    the rest of it soon after the direct child exits while a grandchild holds the pipes, and
    all of it (shielded) when cancelled from outside, before the cancellation goes on.

    `log_fd`: `log_path` opened already (closed here, whatever happens). `at_end(outcome)`
    (blocking, must not raise): called in the run log's closing worker call once a run
    ended, with how it ended (not when it was cancelled or could not start). Raises
    RunLogError when the run log cannot be opened (nothing is started then), OSError when
    the program cannot be started (e.g. FileNotFoundError).
    """
    sink = LogSink(log_path, -1 if log_fd is None else log_fd, _hold_s())
    try:
        command = _command(argv)
    except (TypeError, ValueError):
        sink.close_now()
        raise
    marker = env.get(RUN_MARKER_ENV)
    outcome: ProcessOutcome | None = None
    try:
        await sink.open()
        deathwatch.run_starting(marker, log_path)
        with reaper.run_registered(marker):
            outcome = await _run(
                command,
                cwd=cwd,
                env=dict(env),
                sink=sink,
                timeout_s=timeout_s,
                term_grace_s=term_grace_s,
                stdout_tail=_Tail(stdout_tail_bytes, on_stdout),
                stderr_tail=_Tail(stderr_tail_bytes),
                on_started=on_started,
            )
        return outcome
    finally:
        then = None if at_end is None or outcome is None else partial(at_end, outcome)
        await _wind_up(marker, term_grace_s, sink, then)


async def _wind_up(
    marker: str | None, grace_s: float, sink: LogSink, then: Callable[[], None] | None
) -> None:
    """After a run (shielded): its leftovers stopped, the run log finished, `then()`."""
    with anyio.CancelScope(shield=True):
        await reaper.sweep(marker, grace_s)
        deathwatch.run_ended(marker)
        await sink.finish(then)


def _hold_s() -> float:
    """How long output may wait for the run log: without the death watch, whose kill sets
    the log's mtime, not at all (run_log.py)."""
    return FLUSH_S if deathwatch.watching() else 0.0


def _command(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a sequence of arguments, not one string")
    command = [os.fspath(arg) for arg in argv]
    if not command:
        raise ValueError("argv is empty")
    return command


# --- the run -----------------------------------------------------------------------------


async def _run(
    command: list[str],
    *,
    cwd: Path | None,
    env: dict[str, str],
    sink: LogSink,
    timeout_s: float,
    term_grace_s: float,
    stdout_tail: _Tail,
    stderr_tail: _Tail,
    on_started: Callable[[int], Awaitable[None]] | None,
) -> ProcessOutcome:
    started = time.monotonic()
    # Shielded so that a cancellation cannot land between fork and our bookkeeping: it is
    # delivered at the next checkpoint, inside the try below, which stops the group.
    with anyio.CancelScope(shield=True), reaper.spawning():
        process = await spawn(command, cwd=cwd, env=env)  # runs/spawn.py: off the loop
        reaper.child_started(process.pid)
    pid = process.pid  # the group's id too (start_new_session)
    _RUNNING_GROUPS.add(pid)
    deathwatch.group_started(pid, env.get(RUN_MARKER_ENV))
    try:
        if on_started is not None:
            await on_started(pid)
        returncode, timed_out, killed = await _supervise(
            process, sink, stdout_tail, stderr_tail, timeout_s, term_grace_s
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _abort(process, sink, stdout_tail, stderr_tail, term_grace_s)
        raise
    finally:
        with anyio.move_on_after(_REAP_S, shield=True):
            await process.aclose()
        _RUNNING_GROUPS.discard(pid)
        deathwatch.group_ended(pid)
        if process.returncode is not None:  # else it still has to be reaped
            reaper.child_exited(pid)
    return ProcessOutcome(
        pid=pid,
        returncode=returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        stdout_tail=stdout_tail.value(),
        stderr_tail=stderr_tail.value(),
        killed=killed,
    )


async def _supervise(
    process: Process,
    sink: LogSink,
    stdout_tail: _Tail,
    stderr_tail: _Tail,
    timeout_s: float,
    term_grace_s: float,
) -> tuple[int | None, bool, bool]:
    """Wait for the child under the timeout, then make sure its whole group is gone.

    Returns (returncode, timed_out, killed).
    """
    pgid = process.pid
    returncode: int | None = None
    killed = False
    async with anyio.create_task_group() as tg:
        readers = _Readers(tg, process, sink, stdout_tail, stderr_tail)
        with anyio.move_on_after(timeout_s):
            returncode = await process.wait()
            with anyio.move_on_after(_DRAIN_AFTER_EXIT_S):
                await readers.wait()
        timed_out = returncode is None
        if timed_out or (group_exists(pgid) and await anyio.to_thread.run_sync(group_alive, pgid)):
            killed = True
            with anyio.CancelScope(shield=True):  # bounded; a shutdown must not interrupt it
                await stop_group(pgid, term_grace_s)
            if returncode is None:
                with anyio.move_on_after(_REAP_S):
                    returncode = await process.wait()
            with anyio.move_on_after(_REAP_S):
                await readers.wait()
        # A reader still running now reads a pipe held by a process that left the group
        # with setsid(): give up on it (aclose() closes our end). Only then: anyio's
        # cancel() formats the task's repr, a cost on every run otherwise.
        readers.give_up()
    return returncode, timed_out, killed


async def _abort(
    process: Process, sink: LogSink, stdout_tail: _Tail, stderr_tail: _Tail, grace_s: float
) -> None:
    """Stop the group after an error or outside cancellation; call it shielded.

    The pipes are read meanwhile, so a child that flushes output on SIGTERM does not block
    on a full pipe and its last words reach the run log.
    """
    async with anyio.create_task_group() as tg:
        readers = _Readers(tg, process, sink, stdout_tail, stderr_tail)
        await stop_group(process.pid, grace_s)
        if process.returncode is None:
            with anyio.move_on_after(_REAP_S):
                await process.wait()
        with anyio.move_on_after(_DRAIN_AFTER_EXIT_S):
            await readers.wait()
        readers.give_up()


class _Readers:
    """Two tasks pumping the child's stdout and stderr into the log and the tails."""

    def __init__(
        self,
        tg: TaskGroup,
        process: Process,
        sink: LogSink,
        stdout_tail: _Tail,
        stderr_tail: _Tail,
    ) -> None:
        self._tg = tg
        self._done = (anyio.Event(), anyio.Event())
        tg.start_soon(_pump, process.stdout, stdout_tail, sink, self._done[0])
        tg.start_soon(_pump, process.stderr, stderr_tail, sink, self._done[1])

    async def wait(self) -> None:
        """Return when both streams reached EOF (or were closed)."""
        for event in self._done:
            await event.wait()

    def give_up(self) -> None:
        """Stop the readers still running (none, when both streams reached EOF)."""
        if not all(event.is_set() for event in self._done):
            self._tg.cancel_scope.cancel()


async def _pump(
    stream: ByteReceiveStream | None, tail: _Tail, sink: LogSink, done: anyio.Event
) -> None:
    try:
        if stream is None:
            return
        while True:
            due = sink.due()
            try:
                if due is None:
                    chunk = await stream.receive(_CHUNK_BYTES)
                else:  # output waits to be written: wake for it (run_log.FLUSH_S)
                    chunk = b""
                    with anyio.move_on_at(due):
                        chunk = await stream.receive(_CHUNK_BYTES)
                    if not chunk:
                        await sink.flush()
                        continue
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            tail.add(chunk)
            await sink.add(chunk)
    finally:
        done.set()


class _Tail:
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


@contextlib.contextmanager
def pidfd_child_watcher() -> Iterator[bool]:
    """On Python 3.11, reap children through pidfds instead of a thread per child.

    asyncio's default watcher there (ThreadedChildWatcher) starts one thread per
    subprocess; under load that cost milliseconds per iteration. Python >= 3.12 uses pidfds
    on its own. Enter it from the running asyncio loop; on exit asyncio's default watcher
    comes back (a watcher left attached to a closed loop would break the next loop).
    Yields True when the pidfd watcher is in use.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        yield False
        return
    import asyncio

    try:
        loop = asyncio.get_running_loop()
        os.close(os.pidfd_open(os.getpid()))  # the kernel may lack pidfd support (< 5.3)
    except (RuntimeError, OSError):  # not on asyncio, or no pidfds
        yield False
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    try:
        yield True
    finally:
        # Closes ours; asyncio makes its default again on demand (typeshed forgets None).
        asyncio.set_child_watcher(None)  # type: ignore[arg-type]
