"""Group commit: the saves of one loop tick are made durable together, each still atomic.

Pinned down: one worker call commits a tick's writes; every file holds its new bytes; a
failure (a missing directory, a failing fsync) fails that file's writer only and leaves its
old file intact; two writes of one path keep the later; a target's lock released while a
batch commits is released in the worker right after it (and an acquire of that root waits
for it rather than refusing); and a process SIGKILLed while it group-commits leaves every
file whole (old or new, never torn) and only temp files that start-up removes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.storage.files import fsio, group_commit, lock
from autoloop_daemon.storage.files.group_commit import GroupCommit
from autoloop_daemon.storage.files.lock import LOCK_NAME, StateLock
from tests.helpers.lock_releases import record_release_threads
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.anyio


def _tmp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


async def _write_all(commits: GroupCommit, writes: list[tuple[Path, bytes]]) -> list[Any]:
    results: list[Any] = [None] * len(writes)

    async def one(i: int, path: Path, data: bytes) -> None:
        try:
            await commits.write(path, data)
        except StateWriteError as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i, (path, data) in enumerate(writes):
            tg.start_soon(one, i, path, data)
    return results


async def test_one_ticks_writes_are_committed_in_one_worker_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    real = group_commit.commit_batch

    def counting(items: list[Any]) -> None:
        batches.append(len(items))
        real(items)

    monkeypatch.setattr(group_commit, "commit_batch", counting)
    dirs = [tmp_path / f"d{i % 3}" for i in range(30)]
    for d in set(dirs):
        d.mkdir()
    writes = [(d / f"f{i}.json", f"new {i}\n".encode()) for i, d in enumerate(dirs)]
    syncs: list[int] = []
    real_syncfs = group_commit._syncfs

    def counting_syncfs(fd: int) -> None:
        syncs.append(fd)
        real_syncfs(fd)

    monkeypatch.setattr(group_commit, "_syncfs", counting_syncfs)
    results = await _write_all(GroupCommit(), writes)
    assert results == [None] * 30
    assert batches == [30]
    assert len(syncs) == 1  # the 30 files; 3 directories are fsynced one by one
    for path, data in writes:
        assert path.read_bytes() == data
    assert not [p for d in set(dirs) for p in _tmp_files(d)]


async def test_a_failing_file_fails_only_its_writer_and_keeps_its_old_bytes(
    tmp_path: Path,
) -> None:
    good = [tmp_path / f"ok{i}" for i in range(5)]
    kept = tmp_path / "kept"
    kept.write_bytes(b"old\n")
    writes = [(p, b"new\n") for p in good] + [(tmp_path / "missing" / "x", b"new\n")]
    results = await _write_all(GroupCommit(), writes)
    assert results[:5] == [None] * 5
    assert isinstance(results[5], StateWriteError)
    assert "missing/x" in str(results[5])
    assert kept.read_bytes() == b"old\n"
    assert all(p.read_bytes() == b"new\n" for p in good)


async def test_a_failing_sync_fails_that_file_and_leaves_it_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs fails: each file is fsynced on its own and only the failing one is refused."""
    paths = [tmp_path / f"f{i}" for i in range(4)]
    for p in paths:
        p.write_bytes(b"old\n")

    def no_syncfs(_fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    real_fsync = fsio._fsync
    calls = 0

    def fsync_fails_second(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(group_commit, "SYNCFS_MIN_FILES", 2)  # so that syncfs is tried
    monkeypatch.setattr(group_commit, "_syncfs", no_syncfs)
    monkeypatch.setattr(fsio, "_fsync", fsync_fails_second)
    results = await _write_all(GroupCommit(), [(p, b"new\n") for p in paths])
    failed = [i for i, r in enumerate(results) if r is not None]
    assert failed == [1]
    assert "No space left on device" in str(results[1])
    assert [p.read_bytes() for p in paths] == [b"new\n", b"old\n", b"new\n", b"new\n"]
    assert not _tmp_files(tmp_path)


async def test_two_writes_of_one_path_in_a_batch_keep_the_later(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    results = await _write_all(GroupCommit(), [(path, b"first\n"), (path, b"second\n")])
    assert results == [None, None]
    assert path.read_bytes() == b"second\n"


async def test_writes_arriving_during_a_commit_form_the_next_batch(tmp_path: Path) -> None:
    commits = GroupCommit()
    paths = [tmp_path / f"f{i}" for i in range(40)]

    async def later(i: int) -> None:
        await anyio.sleep(0.001 * (i % 7))
        await commits.write(paths[i], f"{i}\n".encode())

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(later, i)
    assert [p.read_bytes() for p in paths] == [f"{i}\n".encode() for i in range(40)]


@pytest.mark.parametrize("batch", [1, 5])
async def test_directories_created_unsynced_are_synced_with_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """A new state root's entry (made by make_dirs(unsynced=...)) is durable once the first
    file written into it is: its parent is fsynced in the same commit."""
    synced: list[Path] = []
    real = fsio.fsync_dir

    def recording(directory: Path) -> None:
        synced.append(Path(directory))
        real(directory)

    monkeypatch.setattr(fsio, "fsync_dir", recording)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    roots, unsynced = [state_dir / f"t{i}" for i in range(batch)], []
    for root in roots:
        fsio.make_dirs(root, unsynced=unsynced)
    assert unsynced == [state_dir] and synced == []
    await _write_all_synced(GroupCommit(), roots, unsynced)
    assert state_dir in synced
    assert all((root / "s.json").read_bytes() == b"{}" for root in roots)


async def _write_all_synced(commits: GroupCommit, roots: list[Path], dirs: list[Path]) -> None:
    async with anyio.create_task_group() as tg:
        for root in roots:
            tg.start_soon(partial(commits.write, root / "s.json", b"{}", sync_dirs=dirs))


async def test_a_lock_released_during_a_commit_is_released_right_after_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, go = threading.Event(), threading.Event()
    real = group_commit.commit_batch

    def held_open(items: list[Any]) -> None:
        entered.set()
        go.wait(30)
        real(items)

    monkeypatch.setattr(group_commit, "commit_batch", held_open)
    commits = GroupCommit()
    root = tmp_path / "root"
    state_lock = StateLock(root)
    state_lock.acquire()
    released_on = record_release_threads(monkeypatch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(commits.write, tmp_path / "state.json", b"{}")
        assert await anyio.to_thread.run_sync(entered.wait, 10)
        await commits.release(state_lock)  # a batch is in the worker: handed over to it
        assert (root / LOCK_NAME).read_text().strip() == str(os.getpid())
        go.set()
    assert (root / LOCK_NAME).read_text().strip() == ""  # released before the write returned
    # Handed over during the worker call, it is released after the batch, off the loop.
    assert len(released_on) == 1 and released_on[0] != threading.get_ident()
    again = StateLock(root)
    again.acquire()
    assert again.stale_holder is None
    again.release()


def test_an_acquire_waits_for_a_release_handed_to_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target re-added by a reload at once: its new lock waits instead of refusing."""
    waiting = threading.Event()

    class Observed(threading.Condition):
        def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
            waiting.set()
            return super().wait_for(predicate, timeout)

    monkeypatch.setattr(lock, "_released", Observed(threading.Lock()))
    root = tmp_path / "root"
    first = StateLock(root)
    first.acquire()
    release = first.release_later()
    second = StateLock(root)
    outcome: list[BaseException | None] = []

    def take() -> None:
        try:
            second.acquire()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    taker = threading.Thread(target=take)
    taker.start()
    assert waiting.wait(10), "the acquire did not wait for the pending release"
    release()
    taker.join(10)
    assert outcome == [None]
    assert second.held and second.stale_holder is None
    second.release()
    assert root not in lock._releasing  # nothing left pending


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import anyio
    from autoloop_daemon.storage.files.group_commit import GroupCommit

    async def main(root: Path, n: int) -> None:
        commits = GroupCommit()
        generation = 0
        print("ready", flush=True)
        while True:
            generation += 1
            body = (f'{{"generation": {generation}, "pad": "' + "x" * 3000 + '"}\\n').encode()
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(commits.write, root / f"d{i % 4}" / f"s{i}.json", body)

    anyio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
    """
)


def test_sigkill_during_group_commits_leaves_every_file_whole(tmp_path: Path) -> None:
    """A real process group-commits 64 files in a loop; SIGKILL it at 12 random instants."""
    import json
    import random

    n = 64
    for d in range(4):
        (tmp_path / f"d{d}").mkdir()
    rng = random.Random()
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(n)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        for i in range(n):
            path = tmp_path / f"d{i % 4}" / f"s{i}.json"
            if path.exists():  # the first generation may not have reached it
                assert json.loads(path.read_bytes())["generation"] >= 1
        for d in range(4):
            fsio.remove_stale_tmp(tmp_path / f"d{d}")
            assert not [p for p in (tmp_path / f"d{d}").iterdir() if p.name.endswith(".tmp")]


async def test_temp_names_are_never_interned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp file's name is used once: neither a batch's writes nor `atomic_write_bytes`
    put it in the interpreter's table of interned strings (pathlib interns every name it
    parses; at two or three per run that table was reallocated every few thousand runs,
    +1.7 MB of peak memory in a 1,000-target fleet)."""
    interned: list[str] = []
    real_intern = sys.intern

    def recording(text: str) -> str:
        interned.append(text)
        return real_intern(text)

    monkeypatch.setattr(sys, "intern", recording)
    writes = [(tmp_path / f"f{i}.json", b"x\n") for i in range(3)]
    assert await _write_all(GroupCommit(), writes) == [None] * 3
    await anyio.to_thread.run_sync(fsio.atomic_write_bytes, tmp_path / "g.json", b"y\n")
    assert not [text for text in interned if text.endswith(fsio.TMP_SUFFIX)]
    assert [p.read_bytes() for p, _ in writes] == [b"x\n"] * 3
    assert (tmp_path / "g.json").read_bytes() == b"y\n"
    assert not _tmp_files(tmp_path)
    # the check sees pathlib's interning: a Path made from such a name is recorded
    Path(fsio.tmp_name(tmp_path / "h.json"))
    assert [text for text in interned if text.endswith(fsio.TMP_SUFFIX)]


def test_a_release_that_fails_does_not_keep_the_others_of_its_thread_from_running() -> None:
    """The releases handed to one worker thread all run even when one raises; the first
    error is raised once they have."""
    called: list[int] = []

    def ok(i: int) -> None:
        called.append(i)

    def broken() -> None:
        raise OSError(errno.EBADF, "bad descriptor")

    with pytest.raises(OSError, match="bad descriptor"):
        group_commit._call_all([partial(ok, 1), broken, partial(ok, 2)])
    assert called == [1, 2]


async def test_each_writers_then_runs_in_the_batch_worker_once_its_file_is_written(
    tmp_path: Path,
) -> None:
    """`then` sees its own file's new bytes, runs off the event loop in the batch's worker
    call, and its result (or error) goes back to its writer only; a writer whose file could
    not be written gets the write's error and its `then` is never called."""
    loop_thread = threading.get_ident()
    seen: dict[str, tuple[bytes, int]] = {}

    def then(path: Path) -> str:
        seen[path.name] = (path.read_bytes(), threading.get_ident())
        if path.name == "bad-then":
            raise ValueError("then failed (this test)")
        return f"after {path.name}"

    paths = [tmp_path / "a", tmp_path / "b", tmp_path / "bad-then", tmp_path / "no" / "c"]
    commits = GroupCommit()
    results: dict[str, object] = {}

    async def one(path: Path) -> None:
        try:
            results[path.name] = await commits.write(path, b"new\n", then=partial(then, path))
        except (StateWriteError, ValueError) as exc:
            results[path.name] = exc

    async with anyio.create_task_group() as tg:
        for path in paths:
            tg.start_soon(one, path)
    assert results["a"] == "after a" and results["b"] == "after b"
    assert isinstance(results["bad-then"], ValueError)
    assert isinstance(results["c"], StateWriteError) and "no/c" in str(results["c"])
    assert sorted(seen) == ["a", "b", "bad-then"]  # never for the file that failed
    assert {data for data, _ in seen.values()} == {b"new\n"}
    threads = {thread for _, thread in seen.values()}
    assert len(threads) == 1 and loop_thread not in threads  # one worker call, off the loop
    assert await commits.write(tmp_path / "a", b"plain\n") is None  # no `then`: None


async def test_a_then_that_blocks_holds_up_its_own_writer_only(tmp_path: Path) -> None:
    """A writer's `then` that hangs (a target directory on a mount that stopped answering)
    runs after its batch was committed and the lead handed on: later writes are committed
    meanwhile, and the writer gets its result once its `then` returns."""
    release = threading.Event()
    commits = GroupCommit()
    results: list[object] = []

    async def hanging_writer() -> None:
        results.append(await commits.write(tmp_path / "a", b"a\n", then=partial(_wait, release)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(hanging_writer)
        await wait_until(lambda: (tmp_path / "a").exists(), timeout_s=10)
        with anyio.fail_after(10):  # not held up by the `then` still waiting
            for i in range(3):
                await commits.write(tmp_path / f"b{i}", b"b\n")
                assert await commits.write(tmp_path / "c", b"c\n", then=partial(int, i)) == i
        assert results == []
        release.set()
    assert results == ["released"]


def _wait(event: threading.Event) -> str:
    assert event.wait(30), "the test never released the hanging `then`"
    return "released"
