"""Group commit: the atomic replaces that arrive within one loop tick made durable together.

At start-up and shutdown every target checkpoints its state at once, and one fsync chain
each (write, fsync, rename, directory fsync) costs a journal commit per file. Here the
first `write` of a tick becomes the batch's leader: it yields once so that the other
tasks of the tick can queue theirs, then ONE worker-thread call commits the batch:

1. every temp file is written (`.<name>.<pid>.<hex>.tmp`, as `fsio.atomic_write_bytes`);
2. they are made durable together: one `syncfs` per file system when the batch holds at
   least SYNCFS_MIN_FILES files there, else (or when syncfs is missing or fails, which
   also says which file failed) one fsync per file, all in the same worker call;
3. the renames, in arrival order (two writes of one path in a batch: the later wins);
4. the renames made durable: one more `syncfs` per file system when at least
   SYNCFS_MIN_FILES directories gained names there, else one directory fsync each; the
   directories a writer created without syncing (a new state root) are synced here too.

So the guarantee is `atomic_write_bytes`'s, file by file: a rename happens only once its
data is durable, and a reader (or a crash) sees the old file or the new one. A batch of one
is exactly `atomic_write_bytes`. Each caller gets its own file's StateWriteError.

It also releases the targets' state locks (`release`), never on the event loop: rewriting a
lock file waits for the journal, and once the kernel has written the file back (30 s after
its last write) it costs ~0.12 ms here, 1.1-1.3 s for a 10,000-target shutdown that the
loop spent stalled. While a batch is being committed a release waits for it: in the
batch's worker, right after the batch, or (when it came during that worker call) with those
the batch's leader releases afterwards. Otherwise the first `release` leads the others that
arrive meanwhile. Those are released in worker threads, up to RELEASE_THREADS at once for a
shutdown's thousands. Every release is done before the last writer of the last batch, or
the last releaser, returns.

Writes already queued always finish: the waits are shielded, so a cancelled caller returns
(raising its cancellation) only once its file is committed, and a leader never leaves the
others of its batch waiting. One batch is committed at a time; what arrives meanwhile
forms the next one, led by its first writer. A writer's `then` (its next blocking work, in
the same worker call: no hand-off of its own) runs after its batch is committed and the
lead handed on, so that one that blocks holds up its own writer only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread

from autoloop_daemon import worker_threads
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.lock import StateLock, check_owned_root

__all__ = ["GroupCommit", "commit_batch"]


# syncfs also writes back every other process's dirty data on the file system: worth it for
# a start-up's or a shutdown's thousands of files, not for a handful (one fsync each then).
SYNCFS_MIN_FILES = 16
RELEASE_THREADS = 4  # a shutdown's lock releases: 10,000 in ~0.6 s instead of ~1.1 s in one
RELEASE_CHUNK = 64  # fewer releases than this per thread are not worth another thread


@dataclass(eq=False)
class _Write:
    path: Path
    data: bytes
    check_root: bool
    dirs: tuple[Path, ...] = ()  # more directories to make durable with this file's rename
    done: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False  # set with `done` when this writer must commit the next batch
    error: StateWriteError | None = None
    then: Callable[[], object] | None = None  # called in the worker once the file is durable
    result: object = None  # what `then` returned
    then_error: BaseException | None = None  # what `then` raised


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_SYNCFS = _load_syncfs()


def _syncfs(fd: int) -> None:
    """syncfs(2) on the file system of `fd`; OSError when it fails or does not exist."""
    if _SYNCFS is None:
        raise OSError(38, "syncfs not available")
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _fail(item: _Write, exc: OSError, stage: str = "") -> None:
    if item.error is None:
        item.error = StateWriteError(
            f"cannot write {item.path}: {fsio.describe_oserror(exc)}{stage}"
        )


def _make_durable(items: list[_Write], tmps: dict[int, str], fds: dict[int, int]) -> None:
    """Step 2: one syncfs per file system; per-file fsyncs when that is not possible.

    `fds` holds the temp files still open (a small batch's); the others were closed after
    their write and are opened again only if they must be fsynced one by one.
    """
    by_device: dict[int, list[int]] = {}
    for i, tmp in tmps.items():
        try:
            st = os.fstat(fds[i]) if i in fds else os.stat(tmp)
            by_device.setdefault(st.st_dev, []).append(i)
        except OSError as exc:
            _fail(items[i], exc)
    for indices in by_device.values():
        if len(indices) >= SYNCFS_MIN_FILES and _syncfs_dir(items[indices[0]].path.parent):
            continue
        for i in indices:  # one file, or syncfs failed: fsync each (errors are per file)
            try:
                _fsync_tmp(fds.get(i), tmps[i])
            except OSError as exc:
                _fail(items[i], exc)


def _fsync_tmp(fd: int | None, tmp: str) -> None:
    """fsync a temp file through its open descriptor, or one opened for it (Linux fsyncs
    what was written through any descriptor of the file)."""
    if fd is not None:
        fsio._fsync(fd)
        return
    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fsio._fsync(fd)
    finally:
        os.close(fd)


def _syncfs_dir(directory: Path) -> bool:
    """syncfs on `directory`'s file system; False when it cannot be done."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        _syncfs(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _sync_dirs(renamed: dict[Path, list[_Write]]) -> None:
    """Step 4: the renames made durable. Where several directories of one file system
    gained names, one syncfs covers them all (each target's state has a directory of its
    own, and one fsync each cost as much as the rest of the batch); else, or when syncfs
    fails, one fsync per directory."""
    by_device: dict[int, list[Path]] = {}
    for directory, done in renamed.items():
        try:
            by_device.setdefault(os.stat(directory).st_dev, []).append(directory)
        except OSError as exc:
            for item in done:
                _fail(item, exc, " (directory sync after rename)")
    for dirs in by_device.values():
        if len(dirs) >= SYNCFS_MIN_FILES and _syncfs_dir(dirs[0]):
            continue
        for directory in dirs:
            try:
                fsio.fsync_dir(directory)
            except OSError as exc:
                for item in renamed[directory]:
                    _fail(item, exc, " (directory sync after rename)")


def commit_batch(items: list[_Write]) -> None:
    """Commit `items` (steps 1-4 of the module docstring); errors land in `item.error`."""
    if len(items) == 1:  # exactly `atomic_write_bytes` (then the item's own directories)
        item = items[0]
        try:
            if item.check_root:
                check_owned_root(item.path.parent)
            fsio.atomic_write_bytes(item.path, item.data)
            for directory in item.dirs:
                fsio.fsync_dir(directory)
        except StateWriteError as exc:
            item.error = exc
        except OSError as exc:
            _fail(item, exc, " (directory sync)")
        return
    tmps: dict[int, str] = {}
    fds: dict[int, int] = {}
    # A large batch (a shutdown's 10,000 states) closes each temp file once written: one
    # descriptor per file held until the syncfs ran out of descriptors beside the locks.
    keep_open = len(items) < SYNCFS_MIN_FILES
    try:
        for i, item in enumerate(items):
            _write_tmp(i, item, tmps, fds, keep_open)
        _make_durable(
            items,
            {i: tmp for i, tmp in tmps.items() if items[i].error is None},
            {i: fd for i, fd in fds.items() if items[i].error is None},
        )
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        fds.clear()
        renamed: dict[Path, list[_Write]] = {}
        for i, tmp in list(tmps.items()):
            item = items[i]
            if item.error is not None:
                continue
            try:
                fsio._replace(tmp, item.path)
            except OSError as exc:
                _fail(item, exc)
                continue
            del tmps[i]
            renamed.setdefault(item.path.parent, []).append(item)
            for directory in item.dirs:
                renamed.setdefault(directory, []).append(item)
        _sync_dirs(renamed)
    finally:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_tmp(
    i: int, item: _Write, tmps: dict[int, str], fds: dict[int, int], keep_open: bool
) -> None:
    """Step 1 for one item: its temp file written (`tmps[i]`; left open in `fds[i]` when
    `keep_open`); an error lands in `item.error`."""
    try:
        if item.check_root:
            check_owned_root(item.path.parent)
        tmp = fsio.tmp_name(item.path)
        fd = fsio.create_tmp(tmp)
        tmps[i] = tmp
        fds[i] = fd
        fsio.write_all(fd, item.data)
        if not keep_open:
            del fds[i]
            os.close(fd)
    except StateWriteError as exc:
        item.error = exc
    except OSError as exc:
        _fail(item, exc)


async def _in_threads(releases: list[Callable[[], None]]) -> None:
    """Call `releases` in worker threads: one, or up to RELEASE_THREADS for many."""
    threads = max(1, min(RELEASE_THREADS, len(releases) // RELEASE_CHUNK))
    if threads == 1:
        await anyio.to_thread.run_sync(_call_all, releases)
        return
    async with anyio.create_task_group() as tg:
        for k in range(threads):
            tg.start_soon(anyio.to_thread.run_sync, _call_all, releases[k::threads])


def _call_all(calls: Sequence[Callable[[], None]]) -> None:
    """Call each of `calls`, the others too when one raises (then the first error)."""
    errors = []
    for call in calls:
        try:
            call()
        except Exception as exc:  # a lock left held would wait for the process's exit
            errors.append(exc)
    if errors:
        raise errors[0]


def _call_thens(items: list[_Write]) -> None:
    """Each committed item's `then`, its result or error kept on the item."""
    for item in items:
        then, item.then = item.then, None
        if then is None or item.error is not None:
            continue
        try:
            item.result = then()
        except BaseException as exc:  # the writer's to handle, in its own task
            item.then_error = exc


def _commit_then_release(
    items: list[_Write],
    releases: Sequence[Callable[[], None]],
    committed: Callable[[], None] | None = None,
) -> None:
    """`commit_batch` and the lock releases handed over while it was being gathered; then,
    once `committed()` has told the loop (the next batch need not wait for them), the
    writers' `then` calls."""
    try:
        commit_batch(items)
    finally:
        for release in releases:
            release()
        # An idle anyio worker keeps its last call's arguments until its next call: without
        # this it would hold a state file's bytes (7.6 kB each) for as long as it idles.
        for item in items:
            item.data = b""
    if committed is not None:
        committed()
    _call_thens(items)


class GroupCommit:
    """Batches `write`s that arrive within one loop tick (see the module docstring).

    Bound to no event loop until the first `write`; use one per event loop.
    """

    def __init__(self) -> None:
        """An empty queue; nothing is started."""
        self._pending: list[_Write] = []
        self._busy = False  # a leader is gathering or committing a batch
        self._releasing = False  # a `release` is leading the releases (no batch is)
        self._releases: list[Callable[[], None]] = []  # lock releases not yet handed over

    async def release(self, lock: StateLock) -> None:
        """Release a target's state lock in a worker thread: right after the batch being
        committed, else with the other releases that arrive meanwhile (see the module
        docstring). An `acquire` of the root in this process waits for it."""
        self._releases.append(lock.release_later())
        if not self._busy:  # else the batch's worker, or its leader afterwards, takes it
            await self._lead_releases()

    async def _lead_releases(self) -> None:
        """Release what is queued, and what arrives meanwhile, in worker threads, until a
        batch starts (its leader takes the rest) or nothing is left; a no-op while another
        task leads them."""
        if self._releasing:
            return
        self._releasing = True
        try:
            with anyio.CancelScope(shield=True):
                while self._releases and not self._busy:
                    releases, self._releases = self._releases, []
                    await _in_threads(releases)
        finally:
            self._releasing = False

    async def write(
        self,
        path: Path,
        data: bytes,
        *,
        check_root: bool = False,
        sync_dirs: Sequence[Path] = (),
        then: Callable[[], object] | None = None,
    ) -> object:
        """Replace `path` with `data` atomically and durably, batched with the tick's others.

        `check_root`: refuse (StateWriteError) a state root replaced since it was locked
        (`lock.check_owned_root` on `path`'s directory). `sync_dirs`: directories whose new
        entries (created unsynced, `fsio.make_dirs`) are made durable with the rename (step
        4), so `path` is reachable after a crash once this returns. Raises StateWriteError.

        `then`: called in the batch's worker once the file is durable (never when it could
        not be written), so that the writer's next blocking work costs no hand-off of its
        own; returns what it returned and raises what it raised. None without it.
        """
        item = _Write(Path(path), data, check_root, tuple(sync_dirs), then=then)
        self._pending.append(item)
        with anyio.CancelScope(shield=True):
            if self._busy:
                await item.done.wait()
                if not item.lead:
                    return self._outcome(item)
            self._busy = True
            await self._lead()
        return self._outcome(item)

    @staticmethod
    def _outcome(item: _Write) -> object:
        """What `write` returns for `item`: its `then`'s result, or the error it met."""
        if item.error is not None:
            raise item.error
        if item.then_error is not None:
            raise item.then_error
        result, item.result = item.result, None
        return result

    async def _lead(self) -> None:
        """Gather one tick's writes, commit them in one worker call, hand on the lead: as
        soon as the batch is committed when its writers' `then` calls are still to run (one
        that blocks, on a target directory that hangs, holds up its own writer only)."""
        handed_on = False

        def hand_on() -> None:
            nonlocal handed_on
            if handed_on:
                return
            handed_on = True
            if self._pending:
                nxt = self._pending[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._busy = False

        try:
            await anyio.lowlevel.checkpoint()  # let the other tasks of this tick queue theirs
            batch, self._pending = self._pending, []
            releases, self._releases = self._releases, []
            thens = any(item.then is not None for item in batch)
            early = worker_threads.on_loop(hand_on) if thens else None
            try:
                await worker_threads.run_sync(_commit_then_release, batch, releases, early)
            except BaseException as exc:  # not an OSError (those are per item): all fail
                for item in batch:
                    if item.error is None:
                        item.error = StateWriteError(f"cannot write {item.path}: {exc!r}")
                raise
            finally:
                for item in batch:
                    if not item.lead:
                        item.done.set()
        finally:
            hand_on()
            if not self._busy:
                # Handed over during the worker call: a shutdown's thousands, off the loop.
                await self._lead_releases()
