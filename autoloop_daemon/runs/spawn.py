"""Starting a child in its own session without blocking the event loop.

asyncio's subprocess spawn forks and execs on the event-loop thread (29 % of the loop's time
per iteration in the issue's profile), and everything else waits meanwhile. Here one
worker-thread call does what must happen before the child runs (open its run log) and
`subprocess.Popen` (vfork + exec). The loop then waits for the child's exit on a pidfd and
reads its pipes when they are readable: no thread per child, none per read.

`start` returns an `anyio.abc.Process`, so the callers see the same object either way;
without pidfds (Linux < 5.3, or not Linux) it falls back to `anyio.open_process` on the
loop. The child is never an asyncio child: nothing else waits for it, and the daemon's
subreaper sweep leaves it alone while it is being started (reaper.spawning).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from autoloop_daemon.runs import reaper

__all__ = ["start"]


def _pidfds_work() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # the kernel lacks pidfd support
        return False
    return True


PIDFDS = _pidfds_work()


async def start(
    command: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    before: Callable[[], None],
) -> Process:
    """Run `before()`, then start `command` as the leader of a new session, stdin /dev/null,
    stdout and stderr piped; one worker-thread call for both (see the module docstring).

    What `before` raises propagates and nothing is started. OSError when the program cannot
    be started. Call it shielded: a child started must reach the caller.
    """
    if not PIDFDS:
        await anyio.to_thread.run_sync(before)
        return await anyio.open_process(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    with reaper.spawning():
        popen, pidfd = await anyio.to_thread.run_sync(_spawn, command, cwd, dict(env), before)
    return _Child(popen, pidfd)


def _spawn(
    command: Sequence[str], cwd: Path | None, env: dict[str, str], before: Callable[[], None]
) -> tuple[subprocess.Popen[bytes], int]:
    before()
    popen = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    try:
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        # The child runs (a pidfd_open of our own child fails only for lack of fds):
        # stop its group and collect it rather than leave it unwatched.
        with contextlib.suppress(OSError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        _close_pipes(popen)
        raise
    for pipe in (popen.stdout, popen.stderr):
        if pipe is not None:
            os.set_blocking(pipe.fileno(), False)
    return popen, pidfd


def _close_pipes(popen: subprocess.Popen[bytes]) -> None:
    for pipe in (popen.stdout, popen.stderr):
        if pipe is not None:
            pipe.close()


class _Pipe(ByteReceiveStream):
    """One of the child's output pipes (non-blocking), read when the loop says it is ready."""

    def __init__(self, file: object) -> None:
        self._file = file
        self._fd: int = file.fileno()  # type: ignore[attr-defined]

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        if self._fd >= 0:
            anyio.notify_closing(self._fd)  # a reader waiting on it gets ClosedResourceError
            self._fd = -1
            self._file.close()  # type: ignore[attr-defined]
        await anyio.lowlevel.checkpoint()


class _Child(Process):
    """A child started by `_spawn`, as anyio's Process: its exit is read from a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self._stdout = _Pipe(popen.stdout)
        self._stderr = _Pipe(popen.stderr)
        self._waiting = anyio.Lock()  # one task at a time on the pidfd

    async def wait(self) -> int:
        async with self._waiting:
            while self._popen.poll() is None:
                if self._pidfd < 0:
                    raise anyio.ClosedResourceError
                await anyio.wait_readable(self._pidfd)  # readable once the child has exited
        return self._popen.returncode

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def send_signal(self, sig: signal.Signals) -> None:
        self._popen.send_signal(sig)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode  # set by `wait` (no syscall here)

    @property
    def stdin(self) -> ByteSendStream | None:
        return None

    @property
    def stdout(self) -> ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        return self._stderr

    async def aclose(self) -> None:
        """Close the pipes, then wait for the child (killed if this wait is cancelled), as
        anyio's own Process does; the pidfd is closed last."""
        try:
            await self._stdout.aclose()
            await self._stderr.aclose()
            try:
                await self.wait()
            except BaseException:
                self.kill()
                with anyio.CancelScope(shield=True):
                    await self.wait()
                raise
        finally:
            if self._popen.poll() is not None and self._pidfd >= 0:
                anyio.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = -1
