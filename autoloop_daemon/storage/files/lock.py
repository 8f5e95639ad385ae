"""One owner per state root: an flock'd lock file kept open for the process's life.

A second autoloopd on the same state root (or the daemon's `state_dir`) is refused at once
with StateLockedError naming the holder's pid; a holder that dies, however it dies, frees it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from autoloop_daemon.exceptions import StateLockedError, StateWriteError
from autoloop_daemon.storage.files import fsio

LOCK_NAME = ".autoloopd.lock"


class StateLock:
    """Exclusive ownership of a state root: `flock` on `<state_root>/.autoloopd.lock`.

    The lock lives as long as the descriptor (the kernel drops it when the process dies,
    however it dies). The file is never unlinked; the holder's pid is written into it only
    for the error message a second process prints. Descriptors are close-on-exec, so
    orchestrators started by the holder do not inherit the lock.
    """

    def __init__(self, state_root: Path) -> None:
        """Remember the state root; nothing is opened until `acquire`."""
        self.state_root = Path(state_root)
        self.path = self.state_root / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release`."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting, creating the state root and lock file if needed.

        Raises StateLockedError naming the holder's pid when another process (or another
        StateLock in this one) holds it, and StateWriteError when the lock file cannot be
        created. Acquiring a lock this object already holds is a RuntimeError.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this StateLock")
        fsio.make_dirs(self.state_root)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateWriteError(
                f"cannot open lock file {self.path}: {fsio.describe_oserror(exc)}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateWriteError(
                    f"cannot lock {self.path}: {fsio.describe_oserror(exc)}"
                ) from exc
            raise StateLockedError(
                f"{self.state_root} is in use by another autoloopd (pid {holder}); stop it first"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message; the lock itself is held
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays). Releasing a lock not held does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid: a refused run leaves the file as it found it
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> StateLock:
        """`acquire` and return self."""
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """`release`."""
        self.release()


def _read_pid(fd: int) -> str:
    """The pid a lock holder wrote, or "unknown"."""
    try:
        raw = os.pread(fd, 64, 0)
    except OSError:
        return "unknown"
    text = raw.decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
