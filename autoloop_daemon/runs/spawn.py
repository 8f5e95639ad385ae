"""Starting a run's program with `posix_spawn`, its exit seen through a pidfd on the loop.

`spawn` starts a program the way `run_in_group` needs it (a new session, so it leads its own
process group; stdin /dev/null; stdout and stderr to pipes; SIGPIPE and SIGXFSZ back to
their default actions and the program found on the child's PATH, as `subprocess` does) and
returns an anyio `Process` whose exit is seen through a pidfd and whose pipes are read
without blocking when the loop says they are readable: no transport, protocol, child
watcher or task per child.

The spawn itself stays on the loop for a program given by its path, and is made through
ctypes (runs/libc_spawn.py) so that the GIL is released while glibc waits for the child's
exec: `os.posix_spawn` holds it for that wait, which on a loaded machine is the child's turn
on a CPU (py-spy at load ~3, 32 runs at once: half of the loop's GIL-holding samples), and
every worker thread stood still meanwhile. A worker thread would free the loop too but add
a hand-off (measured with `os.posix_spawn`, 32 children at once, load 4.4: 0.28-0.36 ms of
CPU per run on the loop, 0.53-0.58 ms in a worker, 0.65-0.73 ms through
`anyio.open_process`). A program found on PATH is looked up (file stats) and started in one
worker call. Where a pidfd or `posix_spawn` is missing (not Linux >= 5.3), or a working
directory is asked for, `anyio.open_process` starts it.

Measured again with this GIL-releasing spawn in a worker of worker_threads.py (round 18,
`bench/check.py --quick` alternated with the spawn on the loop, load ~4): 7.1-7.8 ms of
daemon CPU per iteration against 6.0-6.9 ms, 146-153 iterations/s against 156-176. The
thread that returns from the spawn takes the GIL back from a busy loop.

Every caller wraps the spawn and its `reaper.child_started` in `reaper.spawning()`: a child
spawned in a worker (or connected by asyncio) is not yet registered, and a sweep meanwhile
would take it for an orphan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

from autoloop_daemon.runs import libc_spawn

__all__ = ["keep_inherited_descriptors_from_children", "spawn"]


def _pidfds_work() -> bool:
    if not hasattr(os, "posix_spawn") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel older than 5.3
        return False
    return True


_USABLE = _pidfds_work()


def keep_inherited_descriptors_from_children() -> int:
    """Mark close-on-exec every descriptor above 2 this process inherited open across its own
    exec (a shell's or a supervisor's stray descriptor); returns how many it marked.

    `subprocess` closes them in the child (`close_fds`); `posix_spawn` cannot, and would pass
    them on to every orchestrator. The daemon's own descriptors are close-on-exec already
    (PEP 446), so marking them all once, before the first child, is the same guarantee.
    """
    marked = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                marked += 1
    return marked


async def spawn(command: Sequence[str], *, cwd: Path | None, env: Mapping[str, str]) -> Process:
    """Start `command` in a new session, stdin /dev/null, stdout and stderr piped.

    Call it inside `reaper.spawning()` and register the child there (see the module doc).
    Raises OSError when it cannot be started (FileNotFoundError: no such program).
    """
    if not _USABLE or cwd is not None:
        return await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    argv = list(command)
    if os.path.dirname(argv[0]):  # a path: nothing to look up (see the module docstring)
        pid, pidfd, out_fd, err_fd = _start(argv, env)
    else:  # found on PATH: the lookup stats files, in a worker
        pid, pidfd, out_fd, err_fd = await anyio.to_thread.run_sync(_start, argv, env)
    return SpawnedProcess(pid, pidfd, _PipeReader(out_fd), _PipeReader(err_fd))


def _executable(program: str, env: Mapping[str, str]) -> str:
    """`program` as `subprocess` finds it: a path as given, else the first executable file
    of that name on the child's PATH (FileNotFoundError naming `program` when none is)."""
    if os.path.dirname(program):
        return program
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(2, "No such file or directory", program)


def _start(command: list[str], env: Mapping[str, str]) -> tuple[int, int, int, int]:
    """The blocking part: the pipes, the spawn, its pidfd. Returns (pid, pidfd, stdout's
    read end, stderr's read end), the read ends non-blocking."""
    executable = _executable(command[0], env)
    out_r, out_w = os.pipe()  # close-on-exec (PEP 446): only the dup2'd copies are inherited
    err_r, err_w = os.pipe()
    try:
        if libc_spawn.available():  # the GIL released while the child gets to its exec
            pid = libc_spawn.spawn_session(executable, command, env, out_w, err_w)
        else:
            pid = os.posix_spawn(
                executable,
                command,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w):
            os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # out of descriptors: the child must not run unwatched
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    os.set_blocking(out_r, False)
    os.set_blocking(err_r, False)
    return pid, pidfd, out_r, err_r


class _PipeReader(ByteReceiveStream):
    """One of the child's pipes, read without blocking when the loop says it is readable."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next chunk; EndOfStream at the end, ClosedResourceError once closed."""
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

    def close(self) -> None:
        """Close our end (a task waiting on it gets ClosedResourceError)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            anyio.notify_closing(fd)
            os.close(fd)

    async def aclose(self) -> None:
        """Close our end."""
        self.close()


class SpawnedProcess(Process):
    """A child started by `spawn`: its exit seen through its pidfd, reaped with waitpid."""

    def __init__(self, pid: int, pidfd: int, stdout: _PipeReader, stderr: _PipeReader) -> None:
        """Watch `pid` (through `pidfd`) and read its pipes."""
        self._pid = pid
        self._pidfd = pidfd
        self._returncode: int | None = None
        self._stdout = stdout
        self._stderr = stderr

    def _poll(self) -> bool:
        """Reap the child if it exited (never blocks); True once its exit code is known."""
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: asyncio says 255 then too
                pid, status = self._pid, 255 << 8
            if pid == 0:
                return False
            self._returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
            self._pidfd = -1
        return True

    async def wait(self) -> int:
        """Wait until the child exits; its exit code (-N: killed by signal N)."""
        while not self._poll():
            await anyio.wait_readable(self._pidfd)
        assert self._returncode is not None
        return self._returncode

    async def aclose(self) -> None:
        """Close the pipes and wait for the exit; when cancelled, SIGKILL it and reap it."""
        self._stdout.close()
        self._stderr.close()
        try:
            await self.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                self.kill()
                await self.wait()
            raise

    def terminate(self) -> None:
        """SIGTERM the child."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """Signal the child (nothing once it was reaped: its pid may be another's)."""
        if self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    @property
    def pid(self) -> int:
        """The child's pid (its process group's id too)."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """Its exit code once reaped, else None."""
        return self._returncode

    @property
    def stdin(self) -> ByteSendStream | None:
        """None: stdin is /dev/null."""
        return None

    @property
    def stdout(self) -> ByteReceiveStream:
        """Its stdout pipe."""
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        """Its stderr pipe."""
        return self._stderr
