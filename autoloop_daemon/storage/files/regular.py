"""Opening only regular files: what an orchestrator puts in a state root cannot hang us.

An orchestrator can leave a FIFO, a socket, a device node, a directory or a symbolic link
where autoloopd keeps a file. Opening a FIFO for reading blocks until a writer comes (and
in a worker thread that even SIGTERM cannot interrupt); following a link writes elsewhere.
So a file is looked at first (lstat), opened with O_NOFOLLOW|O_NONBLOCK|O_NOCTTY and checked
again on the descriptor (fstat): anything but a regular file is NotRegularFileError
("is a FIFO, not a regular file"), raised without blocking.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import os
import stat
from pathlib import Path

from autoloop_daemon.exceptions import NotRegularFileError

FILE_MODE = 0o640  # state, logs, handoffs: readable by the group, nothing for others
# Never block on a FIFO, never follow a link, never make a terminal our controlling tty.
_SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def describe_file_type(mode: int) -> str:
    """What kind of file `mode` (an st_mode) is, for messages: "a FIFO", "a directory", ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _not_regular(mode: int) -> NotRegularFileError:
    return NotRegularFileError(f"is {describe_file_type(mode)}, not a regular file")


def check_regular_or_absent(path: Path) -> None:
    """Raise NotRegularFileError when `path` exists and is not a regular file (no link followed).

    Lets a writer that replaces files by rename refuse a directory, FIFO or link up front.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise _not_regular(mode)


def umask_strips(mode: int) -> bool:
    """Whether the process's umask takes any bit of `mode` away from a file it creates
    (then an fchmod must put it back). True when the umask cannot be read.

    Read once, from /proc/self/status: `os.umask` can only be read by setting it, which
    would race with the worker threads creating files. Nothing in autoloopd changes the
    umask once it runs; it is set (if at all) by whatever started the process.
    """
    return bool(mode & _umask())


@functools.cache
def _umask() -> int:
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: every bit may be taken, so always fchmod


def open_regular(path: Path, flags: int, create_mode: int = FILE_MODE) -> int:
    """`os.open` that only ever opens a regular file; returns the descriptor.

    The file is looked at first (lstat) and opened with O_NOFOLLOW|O_NONBLOCK, then checked
    again on the descriptor (fstat), so a FIFO, socket, device, directory or symlink is
    refused with NotRegularFileError ("is a FIFO, not a regular file") without blocking and
    without being opened where that can be avoided. A file this call creates (O_CREAT|O_EXCL)
    gets `create_mode` exactly, whatever the umask. Other failures raise OSError as usual.
    """
    return open_regular_stat(path, flags, create_mode)[0]


def open_regular_stat(
    path: Path, flags: int, create_mode: int = FILE_MODE
) -> tuple[int, os.stat_result]:
    """`open_regular`, with the descriptor's fstat (taken for the check) returned too."""
    if not flags & os.O_EXCL:
        check_regular_or_absent(path)
    try:
        fd = os.open(path, flags | _SAFE_FLAGS, create_mode)
    except OSError as exc:
        if exc.errno in (errno_mod.ELOOP, errno_mod.ENXIO, errno_mod.EISDIR):
            # A link (O_NOFOLLOW), a FIFO without a reader or a socket (ENXIO), a directory
            # opened for writing: say what it is rather than quoting strerror.
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                raise exc from None
            if not stat.S_ISREG(mode):
                raise _not_regular(mode) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        # O_NONBLOCK means nothing to a regular file; cleared, the descriptor is what it is
        # (and a checker such as blockbuster sees its reads as the blocking calls they are).
        os.set_blocking(fd, True)
        if flags & os.O_CREAT and flags & os.O_EXCL and umask_strips(create_mode):
            os.fchmod(fd, create_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file `path` (see `open_regular`).

    FileNotFoundError when it does not exist, NotRegularFileError when it is not a regular
    file, and OSError (no errno) when it holds more than `limit` bytes.
    """
    fd = open_regular(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise OSError(f"larger than {limit} bytes ({size})")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, max(size + 1, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise OSError(f"larger than {limit} bytes (still growing)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _last_line_end(fd: int, size: int, chunk: int = 1 << 20) -> int:
    """The offset just past the last newline before `size` (0 when there is none), read
    backwards a chunk at a time: a huge last line is scanned, never held."""
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def read_regular_lines(path: Path, tail_limit: int) -> bytes:
    """The bytes of the regular file `path` (see `open_regular`) up to its last newline,
    then at most `tail_limit` bytes of what follows it.

    For a file of lines (the iteration log), whose unterminated last line is a torn write
    whatever it holds: a 2 GB line without a newline is seen as its first bytes, enough to
    be cut as a torn tail, instead of being read into memory whole.
    """
    fd = open_regular(path, os.O_RDONLY)
    try:
        want = _last_line_end(fd, os.fstat(fd).st_size) + tail_limit
        parts = []
        offset = 0
        # os.read, not pread, from the start: the blocking-call check of the tests
        # (blockbuster) knows os.read, so a read of the log on the event loop is caught.
        os.lseek(fd, 0, os.SEEK_SET)
        while offset < want:
            part = os.read(fd, min(want - offset, 1 << 24))
            if not part:
                break
            parts.append(part)
            offset += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)
