"""One owner per state root: an flock'd lock file kept open for the process's life.

A second autoloopd on the same state root (or the daemon's `state_dir`) is refused at once
with StateLockedError naming the holder's pid; a holder that dies, however it dies, frees it.

A state root must be a real directory: a symbolic link is refused when the lock is taken,
and `check_owned_root` refuses further writes once the directory that was locked has been
replaced (by a link or another directory), so autoloopd never writes where a link points.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from autoloop_daemon.exceptions import (
    NotRegularFileError,
    StateCorruptError,
    StateLockedError,
    StateWriteError,
)
from autoloop_daemon.storage.files import fsio

LOCK_NAME = ".autoloopd.lock"

# State roots locked by this process -> (st_dev, st_ino) of the directory that was locked.
# Keyed by the path's text: hashing a fresh Path (every write checks its root) cost a
# tenth of a shutdown's samples.
_owned: dict[str, tuple[int, int]] = {}
# A lock file's pid is overwritten in place, padded with blanks (a released lock holds only
# blanks): truncating the file cost ~0.6 ms per lock (the block freed through the journal),
# seconds at 10,000 targets; a longer file than this (not ours) is truncated first.
_MARKER_MAX_BYTES = 64

# State roots whose lock this process is releasing off the event loop (`release_later`),
# counted: an `acquire` of the same root here (a target re-added by a reload) waits for the
# release rather than refusing, as it would find the lock free had the release been
# immediate. One condition for them all: a threading.Event per release cost a shutdown
# more on its loop than the rest of handing the release over.
_releasing: Counter[Path] = Counter()
_released = threading.Condition(threading.Lock())
RELEASE_WAIT_S = 30.0


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def check_owned_root(state_root: Path) -> None:
    """Refuse to write into a state root that is no longer the directory this process locked.

    Raises StateWriteError saying what happened and what to do when `state_root` was
    replaced by a symbolic link, by another directory, or removed. Does nothing for a root
    this process does not hold (one lstat otherwise).
    """
    key = os.fspath(state_root if isinstance(state_root, Path) else Path(state_root))
    identity = _owned.get(key)
    if identity is None:
        return
    root = Path(state_root)
    try:
        st = os.lstat(root)
    except OSError as exc:
        what = f"is gone ({fsio.describe_oserror(exc)})"
    else:
        if stat.S_ISLNK(st.st_mode):
            what = f"was replaced by a symbolic link (to {_link_target(root)})"
        elif (st.st_dev, st.st_ino) != identity:
            what = "was replaced by another directory"
        else:
            return
    raise StateWriteError(
        f"{root}: the state root {what} while autoloopd owned it; nothing more is written "
        f"there. Put the original directory back at {root} and start again"
    )


def resolve_state_root(path: Path, base: Path | None = None) -> Path:
    """`path` (relative to `base`, default the working directory) made absolute, with its
    parents resolved but its last component kept as given.

    `Path.resolve()` would follow a state root that is a symbolic link, silently and at every
    start; kept, the link is seen (and refused) when the root is locked.
    """
    absolute = (base or Path.cwd()) / Path(path).expanduser()
    if absolute.name in ("", ".."):
        return absolute.resolve()
    return absolute.parent.resolve() / absolute.name


def _refuse_symlinked_root(root: Path) -> bool:
    """StateCorruptError when `root` is a symbolic link; True when it is a directory."""
    try:
        mode = os.lstat(root).st_mode
    except OSError:
        return False  # missing: make_dirs creates it (or says why it cannot)
    if stat.S_ISLNK(mode):
        target = os.path.realpath(root)
        raise StateCorruptError(
            f"{root}: the state root is a symbolic link (to {target}); autoloopd does not "
            "follow one, since an orchestrator could redirect the daemon's writes with it. "
            f"If the link is yours, set the state root to {target}; otherwise replace the "
            "link with the original directory"
        )
    return stat.S_ISDIR(mode)


def _open_lock_file(path: Path) -> int:
    """The lock file opened read-write (`fsio.open_regular`), made (0640) when missing.

    The existing file is tried first: a warm start of 10,000 targets opens them all before
    READY, and a failed O_EXCL create cost each one a system call and an exception."""
    try:
        return fsio.open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    try:
        return fsio.open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    except FileExistsError:  # made meanwhile by someone else
        return fsio.open_regular(path, os.O_RDWR)


class StateLock:
    """Exclusive ownership of a state root: `flock` on `<state_root>/.autoloopd.lock`.

    The lock lives as long as the descriptor (the kernel drops it when the process dies,
    however it dies). The file is never unlinked; the holder's pid is written into it only
    for the error message a second process prints. Descriptors are close-on-exec, so
    orchestrators started by the holder do not inherit the lock.
    """

    __slots__ = (
        "_fd",
        "_found_size",
        "stale_holder",
        "state_root",
    )

    def __init__(self, state_root: Path) -> None:
        """Remember the state root; nothing is opened until `acquire`."""
        # The caller's Path itself, not a copy: a daemon holds one lock per target.
        self.state_root = state_root if isinstance(state_root, Path) else Path(state_root)
        self._fd: int | None = None
        self._found_size: int | None = None  # the lock file's size before our pid went in
        # The pid the last holder left in the file: it did not release the lock (it was
        # killed), so what it started may still run. None after a clean release.
        self.stale_holder: int | None = None

    @property
    def path(self) -> Path:
        """The lock file, `<state_root>/.autoloopd.lock` (made when asked: it is needed
        only to acquire the lock and in messages)."""
        return self.state_root / LOCK_NAME

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release`."""
        return self._fd is not None

    def acquire(self, *, unsynced: list[Path] | None = None, make_root: bool = True) -> None:
        """Take the lock without waiting, creating the state root and lock file if needed.

        `unsynced`: the directories that gained an entry are listed there instead of being
        fsynced (`fsio.make_dirs`); the lock file itself needs no durability. With
        `make_root` False a state root that is not a directory is not made: FileNotFoundError.

        Raises StateLockedError naming the holder's pid when another process (or another
        StateLock in this one) holds it, StateCorruptError when the state root is a symbolic
        link or the lock file is not a regular file (a FIFO would block), and StateWriteError
        when the lock file cannot be created (mode 0640). Acquiring a lock this object
        already holds is a RuntimeError.
        """
        path = self.path
        if self._fd is not None:
            raise RuntimeError(f"{path} is already held by this StateLock")
        if not _refuse_symlinked_root(self.state_root):
            if not make_root:
                raise FileNotFoundError(errno.ENOENT, "no state root here", str(self.state_root))
            fsio.make_dirs(self.state_root, unsynced=unsynced)
        try:
            fd = _open_lock_file(path)
        except NotRegularFileError as exc:
            raise StateCorruptError(f"{path}: {exc}") from None
        except OSError as exc:
            raise StateWriteError(
                f"cannot open lock file {path}: {fsio.describe_oserror(exc)}"
            ) from exc
        try:
            _flock_or_wait_for_release(fd, self.state_root)
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
        stale = _read_pid(fd)
        self.stale_holder = int(stale) if stale.isdigit() else None
        with contextlib.suppress(OSError):  # the pid is only for the message; the lock is held
            self._found_size = _write_marker(fd, f"{os.getpid()}\n")
        try:
            st = os.lstat(self.state_root)
        except OSError:
            pass  # the check below cannot be armed; the lock itself is held
        else:
            _owned[os.fspath(self.state_root)] = (st.st_dev, st.st_ino)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays). Releasing a lock not held does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _owned.pop(os.fspath(self.state_root), None)
        with contextlib.suppress(OSError):
            # No stale pid, and the size it was found at: a refused run leaves the file as it
            # found it even when our pid is longer than the last holder's.
            _clear_marker(fd, self._found_size)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def release_later(self) -> Callable[[], None]:
        """Hand the release over: returns the function that releases the lock, to be called
        once, in a worker thread (or where the disk is known idle).

        `release` writes the lock file, which may wait for the file system's journal: on
        the event loop, during a group commit's syncfs, that blocked the loop once per
        target at shutdown. Until the function runs, an `acquire` of this root in this
        process waits for it (up to RELEASE_WAIT_S).
        """
        root = self.state_root
        with _released:
            _releasing[root] += 1

        def release() -> None:
            try:
                self.release()
            finally:
                with _released:
                    _releasing[root] -= 1
                    if _releasing[root] <= 0:
                        del _releasing[root]
                    _released.notify_all()

        return release

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


def _write_marker(fd: int, text: str, size_cap: int | None = None) -> int:
    """Make the lock file say `text` (a pid line, or nothing), overwriting it in place;
    with `size_cap`, cut back to that size if it had grown past it (`text` must fit).
    Returns the size the file had before."""
    data = text.encode()
    size = found = os.fstat(fd).st_size
    if size > _MARKER_MAX_BYTES:
        os.ftruncate(fd, 0)
        size = 0
    os.pwrite(fd, data + b" " * (size - len(data)), 0)
    if size_cap is not None and len(data) <= size_cap < max(size, len(data)):
        os.ftruncate(fd, size_cap)
    return found


def _clear_marker(fd: int, found_size: int | None) -> None:
    """Take our pid out of the lock file, leaving it at the size it was found at. A file
    found empty (ours, every time but its first) is emptied in one call, not three: a
    shutdown does this for every target (py-spy, 10,000 targets: the release threads'
    samples 1,189 -> 827)."""
    if found_size == 0:
        os.ftruncate(fd, 0)
    else:
        _write_marker(fd, "", size_cap=found_size)


def _flock_or_wait_for_release(fd: int, root: Path) -> None:
    """flock `fd` without blocking; if this process is releasing `root`'s lock off the loop
    (`StateLock.release_later`), wait for that release and try once more. OSError."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        with _released:
            if root not in _releasing:
                raise
            _released.wait_for(lambda: root not in _releasing, RELEASE_WAIT_S)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> str:
    """The pid a lock holder wrote, or "unknown"."""
    try:
        raw = os.pread(fd, 64, 0)
    except OSError:
        return "unknown"
    text = raw.decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
