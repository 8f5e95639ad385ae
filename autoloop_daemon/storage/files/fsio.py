"""Durable file writes: atomic replace, fsynced appends, and their async wrappers.

Every write that must survive a SIGKILL or a power cut goes through here:

* `atomic_write_bytes` writes a temp file in the same directory, fsyncs it, renames it over
  the target and fsyncs the directory, so a reader sees the old file or the new one, never
  a mix. On failure the old file is left byte-identical and the temp file is removed.
* `append_record` appends one record with a single `write` on an `O_APPEND` descriptor and
  fsyncs it; on failure it cuts the file back to its old size.

Existing files are opened with `regular.open_regular` (never a FIFO, a device or a link).
Files are created 0640 and directories 0750 whatever the umask.

The system calls go through the small module-level functions `_write`, `_fsync` and
`_replace` so that tests can make them fail (ENOSPC, EIO) and check what is left on disk.
The async wrappers run each whole write (serialisation included) in ONE worker thread call;
a write that has started always finishes, even if the caller is cancelled meanwhile.
Callers that must write in an already-cancelled scope (the final checkpoint) shield it.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import itertools
import json
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.json_text import LIST_ITEM_SEPARATOR, compact
from autoloop_daemon.storage.files.regular import (
    FILE_MODE,
    check_regular_or_absent,
    describe_file_type,
    open_regular,
    open_regular_stat,
    read_regular,
    read_regular_lines,
    umask_strips,
)

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "append_json_line",
    "append_record",
    "atomic_write_bytes",
    "check_regular_or_absent",
    "create_tmp",
    "describe_file_type",
    "describe_oserror",
    "dumps_json",
    "dumps_json_line",
    "fsync_dir",
    "make_dir",
    "make_dirs",
    "open_regular",
    "parse_json",
    "read_regular",
    "read_regular_lines",
    "reject_non_finite",
    "remove_stale_tmp",
    "tmp_name",
    "truncate_file",
    "write_all",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TMP_SUFFIX = ".tmp"
# Names made by `tmp_name`: ".<name>.<pid>.<hex>.tmp".
_TMP_RE = re.compile(r"^\..+\.\d+\.[0-9a-f]+\.tmp$")
DIR_MODE = 0o750  # state directories: the group may read, others nothing


class _TmpNames:
    """What makes temp names unique without a system call per name: the pid (asked again
    only in a forked child), a random token per process and a counter."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.pid = os.getpid()
        self.token = secrets.token_hex(4)
        self.counter = itertools.count()  # next() is atomic under the GIL: threads share it


_TMP_NAMES = _TmpNames()


# --- system calls, kept apart so tests can make them fail -------------------------------


def _write(fd: int, data: memoryview) -> int:
    """One `os.write`; returns how many bytes were written."""
    return os.write(fd, data)


def _fsync(fd: int) -> None:
    """One `os.fsync`."""
    os.fsync(fd)


def _replace(src: str | Path, dst: Path) -> None:
    """One `os.replace` (an atomic rename within a file system)."""
    os.replace(src, dst)


# --- helpers --------------------------------------------------------------------------


def describe_oserror(exc: OSError) -> str:
    """The strerror of an OSError, or its text when it carries no errno."""
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`, looping only on a short write."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        n = _write(fd, view[written:])
        if n <= 0:  # a regular file never does this; do not loop forever if it does
            raise OSError(errno_mod.EIO, os.strerror(errno_mod.EIO))
        written += n


def fsync_dir(directory: Path) -> None:
    """Fsync a directory so that a rename or a new entry in it is durable.

    Raises OSError. File systems that cannot sync a directory (EINVAL) are tolerated.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _fsync(fd)
    except OSError as exc:
        if exc.errno != errno_mod.EINVAL:
            raise
    finally:
        os.close(fd)


def tmp_name(path: Path) -> str:
    """A fresh temp name next to `path`: `.<name>.<pid>.<hex>.tmp` (see `remove_stale_tmp`).

    The hex is a random token per process and a counter: a getpid and a getrandom per name
    were two of the system calls a busy worker thread hands the GIL back for (issue 24).
    A string, not a Path: pathlib interns every name it parses, and each of these is used
    once. Two or three per run filled the interpreter's table of interned strings until it
    was reallocated (~5,000 runs into a 1,000-target fleet: +1.7 MB of peak memory).
    """
    directory, name = os.path.split(os.fspath(path))
    names = _TMP_NAMES
    unique = f"{names.pid}.{names.token}{next(names.counter):x}"
    return os.path.join(directory, f".{name}.{unique}{TMP_SUFFIX}")


# --- sync API -------------------------------------------------------------------------


def create_tmp(tmp: str) -> int:
    """Create the temp file `tmp` (a `tmp_name`; O_EXCL) for writing, 0640 whatever the
    umask; its descriptor. Raises OSError (and leaves no file) when it cannot."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    if umask_strips(FILE_MODE):  # the umask took bits away
        try:
            os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return fd


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` atomically and durably.

    Writes `.<name>.<pid>.<random>.tmp` next to `path`, fsyncs it, renames it over `path`
    and fsyncs the directory. Raises StateWriteError("cannot write <path>: <strerror>") on
    any OSError; the temp file is removed and, unless the failure was the final directory
    sync (the rename already happened), the old file is untouched.

    With `durable=False` the fsyncs are skipped: still atomic against a crash of this
    process, but a power cut may lose the file (for files rebuilt from the log at start).
    """
    path = Path(path)
    tmp = tmp_name(path)
    fd = -1
    renamed = False
    try:
        fd = create_tmp(tmp)
        write_all(fd, data)
        if durable:
            _fsync(fd)
        os.close(fd)
        fd = -1
        _replace(tmp, path)
        renamed = True
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        stage = " (directory sync after rename)" if renamed else ""
        raise StateWriteError(f"cannot write {path}: {describe_oserror(exc)}{stage}") from exc
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if not renamed:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def append_record(path: Path, line: bytes) -> None:
    """Append `line` (which should end with a newline) durably, in one `write`.

    Opens with O_APPEND|O_CREAT (a new file is 0640) through `open_regular`, writes the
    whole line with one `os.write` (looping only on a short write), fsyncs, and fsyncs the
    directory when the file was just created. On an OSError the file is cut back to its old
    size (a file this call created is removed) and StateWriteError is raised; so is one
    naming what `path` is when it is not a regular file.
    """
    path = Path(path)
    created = False
    fd = -1
    original_size = 0
    try:
        try:  # the log is there but for a target's first run: no failed O_EXCL open first
            fd, st = open_regular_stat(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            fd, st = open_regular_stat(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
            created = True
        original_size = st.st_size
        try:
            write_all(fd, line)
            _fsync(fd)
            if created:
                fsync_dir(path.parent)
        except OSError:
            _undo_append(fd, path, original_size, created)
            raise
    except OSError as exc:
        raise StateWriteError(f"cannot write {path}: {describe_oserror(exc)}") from exc
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _undo_append(fd: int, path: Path, original_size: int, created: bool) -> None:
    """Best effort: take back a record that was not durably appended."""
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_size != original_size:
            os.ftruncate(fd, original_size)
            os.fsync(fd)
    if created:
        with contextlib.suppress(OSError):
            os.unlink(path)


def truncate_file(path: Path, size: int) -> None:
    """Cut `path` down to `size` bytes and fsync it; OSError -> StateWriteError."""
    try:
        fd = open_regular(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            _fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateWriteError(f"cannot truncate {path}: {describe_oserror(exc)}") from exc


def make_dir(directory: Path) -> None:
    """`mkdir` with mode 0750 exactly (whatever the umask); FileExistsError if it exists."""
    os.mkdir(directory, DIR_MODE)
    os.chmod(directory, DIR_MODE)


def make_dirs(directory: Path, *, unsynced: list[Path] | None = None) -> None:
    """Create `directory` and missing parents (0750), fsyncing each parent that gained an entry.

    With `unsynced`, those parents are appended to it instead of fsynced: the caller makes
    them durable (a group commit, `GroupCommit.write(sync_dirs=...)`) before anything in
    them counts as durable. At start-up 10,000 new state roots cost one fsync each of the
    same state directory, which was most of a fresh start.
    OSError -> StateWriteError("cannot create <dir>: <strerror>").
    """
    directory = Path(directory)
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    try:
        for d in reversed(missing):
            try:
                make_dir(d)
            except FileExistsError:
                if not d.is_dir():  # a file in the way: say so, not "File exists"
                    raise NotADirectoryError(errno_mod.ENOTDIR, str(d)) from None
                continue
            if unsynced is None:
                fsync_dir(d.parent)
            elif d.parent not in unsynced:
                unsynced.append(d.parent)
    except OSError as exc:
        raise StateWriteError(f"cannot create {directory}: {describe_oserror(exc)}") from exc


def remove_stale_tmp(directory: Path) -> list[Path]:
    """Delete the temp files a killed `atomic_write_bytes` left in `directory`.

    Only names of the form `.<name>.<pid>.<hex>.tmp` are removed; returns them. A missing
    directory gives []. Call it only while holding the state root's lock: a running
    writer's temp file looks the same.
    """
    removed: list[Path] = []
    try:
        candidates = sorted(Path(directory).iterdir())
    except FileNotFoundError:
        return removed
    for candidate in candidates:
        if not _TMP_RE.match(candidate.name) or not candidate.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def dumps_json(obj: Any, *, encoded: Mapping[str, Sequence[str] | str] | None = None) -> bytes:
    """`obj` as UTF-8 JSON with a final newline; NaN/Infinity raise ValueError.

    A dict is written one top-level key per line (list items one per line too) so the state
    file stays readable, but every value goes through the C encoder: `indent=` would switch
    json to its pure-Python encoder, which cost ~3 ms per checkpoint with a long history.
    `encoded` maps a key of `obj` to its list's items already as text (`json_text.compact`),
    or to one string of them joined by `LIST_ITEM_SEPARATOR` (this layout's): written as
    they are, in place of `obj`'s value.
    """
    if not isinstance(obj, dict) or not obj:
        return (compact(obj) + "\n").encode()
    lines = []
    for key, value in obj.items():
        items = encoded.get(key) if encoded else None
        if items is None and isinstance(value, list) and value:
            items = [compact(item) for item in value]
        if items is not None and not isinstance(items, str):
            items = LIST_ITEM_SEPARATOR.join(items)
        if items:
            text = "[\n    " + items + "\n  ]"
        else:
            text = "[]" if items is not None else compact(value)
        lines.append(f"  {compact(str(key))}: {text}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def reject_non_finite(name: str) -> float:
    """`json.loads(parse_constant=...)` hook: NaN and Infinity are errors in our files."""
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise ValueError(f"number out of range {text[:40]}")
    return value


def parse_json(text: str) -> Any:
    """`json.loads` for autoloopd's own files, which hold only finite numbers.

    NaN, Infinity and numbers that overflow to infinity (1e999) raise ValueError, and so
    does nesting too deep for the parser ("nested too deeply", never a RecursionError).
    json.JSONDecodeError (a ValueError) still says where the syntax broke.
    """
    try:
        return json.loads(text, parse_constant=reject_non_finite, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps_json_line(obj: Any) -> bytes:
    """`obj` as one compact JSON line ending in a newline; NaN/Infinity raise ValueError."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return (text + "\n").encode()


# --- async API ------------------------------------------------------------------------


async def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`atomic_write_bytes` in a worker thread."""
    await anyio.to_thread.run_sync(atomic_write_bytes, path, data)


async def write_json_atomic(path: Path, obj: Any) -> None:
    """Serialise `obj` (indent 2, no NaN) and replace `path` atomically, in one thread call.

    `obj` is serialised in the worker thread: do not let other tasks mutate it until this
    returns (or pass a copy).
    """

    def _work() -> None:
        atomic_write_bytes(path, dumps_json(obj))

    await anyio.to_thread.run_sync(_work)


async def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically, in one thread call."""
    await anyio.to_thread.run_sync(atomic_write_bytes, path, text.encode())


async def append_json_line(path: Path, obj: Any) -> None:
    """Append `obj` as one compact JSON line to `path` durably, in one thread call."""

    def _work() -> None:
        append_record(path, dumps_json_line(obj))

    await anyio.to_thread.run_sync(_work)
