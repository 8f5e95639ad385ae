"""The state roots are owned before READY=1 (issue 24: "READY once the config is loaded and
the roots are locked"): `FileStorage.lock_roots` takes every configured root that exists in
one worker call, each target's store adopts its lock when its state loads, a new root is
made as its target loads (as before), a root that cannot be taken is left for its target to
report as before, and what no target adopted is released cleanly at the end."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import StateCorruptError, StateLockedError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.files import group_commit
from autoloop_daemon.storage.files.lock import LOCK_NAME, StateLock
from autoloop_daemon.storage.files.root_locks import take_roots
from autoloop_daemon.storage.files.store import FileStorage
from autoloop_daemon.vocab import TargetStatus
from tests.helpers.lock_releases import record_release_threads

pytestmark = [pytest.mark.anyio]

_HOLDER = """
import sys
import threading
from autoloop_daemon.storage.files.lock import StateLock
lock = StateLock(__import__("pathlib").Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def spec(tmp_path: Path, name: str, *, fresh: bool = False, **overrides: Any) -> TargetSpec:
    """A dry-run single-run target whose state root is `tmp_path/state/<name>`, made
    (empty) unless `fresh`."""
    target = tmp_path / name
    target.mkdir(exist_ok=True)
    if not fresh:
        (tmp_path / "state" / name).mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "mode": "single-run", "max_iterations": 1, "dry_run": True, "simulated_seconds": 0.0,
    }  # fmt: skip
    values.update(overrides)
    return TargetSpec(name=name, path=target, state_root=tmp_path / "state" / name, **values)


def locked_elsewhere(root: Path) -> bool:
    """Whether `root`'s lock file is flock'ed: a new open file description cannot take it
    (flock locks belong to the open file, so this works from the holder's process too)."""
    fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        assert exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        return True
    finally:
        os.close(fd)  # also drops the lock if this took it
    return False


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of tmp_path/state/held until the test ends."""
    root = tmp_path / "state" / "held"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n", "the lock holder died"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.no_blocking
async def test_the_roots_are_locked_before_ready_and_each_store_adopts_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lock_roots` locks every existing root; a store's `open` then adopts that lock (a
    second `acquire` in this process would be refused). A new root is left to its load,
    which makes it and makes its directory entry durable with the first checkpoint."""
    synced: dict[Path, tuple[Path, ...]] = {}
    write = group_commit.GroupCommit.write

    async def spy(self: Any, path: Path, data: bytes, **kw: Any) -> None:
        synced[path.parent] = tuple(kw.get("sync_dirs", ()))
        await write(self, path, data, **kw)

    monkeypatch.setattr(group_commit.GroupCommit, "write", spy)
    specs = [spec(tmp_path, n) for n in ("a", "b")]
    new = spec(tmp_path, "new", fresh=True)
    storage = FileStorage(tmp_path / "state")
    await anyio.to_thread.run_sync(storage.acquire)  # as the daemon's own start does
    try:
        await storage.lock_roots([*specs, new])
        assert all(locked_elsewhere(s.state_root) for s in specs)
        for s in specs:
            assert (s.state_root / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert not new.state_root.exists()
        stores = [storage.target(s) for s in (*specs, new)]
        for store in stores:
            recovered = await store.open()
            assert recovered.state.iterations_completed == 0
        assert locked_elsewhere(new.state_root)
        # The new root's entry in the state directory is synced with its checkpoint.
        assert new.state_root.parent in synced[new.state_root]
        for store in stores:
            await store.close()
        assert not any(locked_elsewhere(s.state_root) for s in (*specs, new))
    finally:
        await anyio.to_thread.run_sync(storage.release)


@pytest.mark.no_blocking
async def test_a_root_that_cannot_be_taken_is_left_for_its_target_to_report(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """A root held by another process, or a symbolic link, is skipped without an error:
    the others are taken, and the store's `open` raises what it always raised."""
    held, free = spec(tmp_path, "held"), spec(tmp_path, "free")
    linked = spec(tmp_path, "linked", fresh=True)
    (tmp_path / "elsewhere").mkdir()
    linked.state_root.symlink_to(tmp_path / "elsewhere")
    storage = FileStorage(tmp_path / "state")
    await anyio.to_thread.run_sync(storage.acquire)  # as the daemon's own start does
    try:
        await storage.lock_roots([held, linked, free])
        assert locked_elsewhere(free.state_root)
        assert not (tmp_path / "elsewhere" / LOCK_NAME).exists()
        with pytest.raises(StateLockedError, match=f"pid {holder.pid}"):
            await storage.target(held).open()
        with pytest.raises(StateCorruptError, match="symbolic link"):
            await storage.target(linked).open()
    finally:
        await anyio.to_thread.run_sync(storage.release)


@pytest.mark.no_blocking
async def test_roots_no_target_adopted_are_released_cleanly(tmp_path: Path) -> None:
    """A stop during start-up leaves roots locked but never loaded: `release` gives them
    up, leaving no pid behind (the next start must not think a killed daemon left runs)."""
    specs = [spec(tmp_path, n) for n in ("a", "b")]
    storage = FileStorage(tmp_path / "state")
    await anyio.to_thread.run_sync(storage.acquire)
    await storage.lock_roots(specs)
    await anyio.to_thread.run_sync(storage.release)
    for s in specs:
        assert not locked_elsewhere(s.state_root)
        assert (s.state_root / LOCK_NAME).read_text().strip() == ""
    again = StateLock(specs[0].state_root)
    await anyio.to_thread.run_sync(again.acquire)
    try:
        assert again.stale_holder is None
    finally:
        await anyio.to_thread.run_sync(again.release)


def test_a_root_listed_twice_is_taken_once(tmp_path: Path) -> None:
    """Two targets on one state root: the first takes it, the second is left to report."""
    root = tmp_path / "state" / "shared"
    root.mkdir(parents=True)
    taken = take_roots([root, root])
    try:
        assert list(taken) == [root] and locked_elsewhere(root)
    finally:
        for lock in taken.values():
            lock.release()


async def test_every_root_is_owned_when_ready_is_announced(tmp_path: Path) -> None:
    """READY=1's event (`TargetsLoading`) is published with every configured target's
    state root already locked, before any state loads; the targets then run as usual."""
    specs = [spec(tmp_path, n) for n in ("a", "b", "c")]
    seen: dict[str, bool] = {}
    done: list[ev.Event] = []

    def at_ready(event: ev.Event) -> None:
        if isinstance(event, ev.TargetsLoading):
            seen.update(
                {s.name: s.state_root.is_dir() and locked_elsewhere(s.state_root) for s in specs}
            )
        elif isinstance(event, ev.TargetStopped):
            done.append(event)

    events = ev.EventBus()
    events.subscribe(at_ready)
    storage = FileStorage(tmp_path / "state")
    sup = Supervisor(
        specs, storage=storage, events=events, budget_cap_usd=100.0, max_concurrent=4, grace_s=5.0
    )
    with anyio.fail_after(60):
        assert await sup.run() == 0
    assert seen == dict.fromkeys("abc", True)
    assert sorted(e.target for e in done if isinstance(e, ev.TargetStopped)) == ["a", "b", "c"]
    assert {e.status for e in done if isinstance(e, ev.TargetStopped)} == {
        TargetStatus.STOPPED_MAX_ITER
    }
    assert not any(locked_elsewhere(s.state_root) for s in specs)  # released at exit


async def test_a_stop_before_the_states_load_releases_every_root(tmp_path: Path) -> None:
    """A stop requested before the states load (a SIGTERM during start-up): the roots were
    locked, no target is loaded, every root is released with no pid left in it, exit 0."""
    specs = [spec(tmp_path, n) for n in ("a", "b")]
    sup = Supervisor(
        specs, storage=FileStorage(tmp_path / "state"), budget_cap_usd=100.0,
        max_concurrent=4, grace_s=5.0,
    )  # fmt: skip
    sup.request_shutdown("test")
    with anyio.fail_after(60):
        assert await sup.run() == 0
    for s in specs:
        assert not locked_elsewhere(s.state_root)
        assert (s.state_root / LOCK_NAME).read_text().strip() == ""
        assert not (s.state_root / "autoloop_state.json").exists()


def test_a_lock_taken_before_ready_never_makes_its_root(tmp_path: Path) -> None:
    """`acquire(make_root=False)`, as `take_roots` asks: a missing root, or a file in its
    place, raises FileNotFoundError and nothing is made; `take_roots` skips both."""
    missing, file = tmp_path / "state" / "missing", tmp_path / "file"
    file.write_text("x")
    for root in (missing, file):
        lock = StateLock(root)
        with pytest.raises(FileNotFoundError, match="no state root here"):
            lock.acquire(make_root=False)
        assert not lock.held
    assert not (tmp_path / "state").exists() and file.read_text() == "x"
    assert take_roots([missing, file]) == {}
    assert not (tmp_path / "state").exists()


@pytest.mark.no_blocking
async def test_the_roots_table_is_let_go_once_every_lock_is_adopted(tmp_path: Path) -> None:
    """Once every store has taken its lock, the storage keeps no table sized for the fleet
    (a Python dict emptied by `pop` keeps its slots: 0.3 MB at 10,000 roots)."""
    specs = [spec(tmp_path, f"t{i:03d}") for i in range(200)]
    storage = FileStorage(tmp_path / "state")
    await anyio.to_thread.run_sync(storage.acquire)
    try:
        await storage.lock_roots(specs)
        stores = [storage.target(s) for s in specs]
        assert sys.getsizeof(storage._taken) == sys.getsizeof({})
        for store in stores:
            await store.open()
            await store.close()
    finally:
        await anyio.to_thread.run_sync(storage.release)


@pytest.mark.no_blocking
async def test_a_shutdowns_lock_releases_run_in_worker_threads_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores closed at once (every target of a stopping fleet) release their locks in
    worker threads, spread over up to RELEASE_THREADS of them, never on the event loop;
    each lock file is left without a pid, and every root is free once the closes return."""
    specs = [spec(tmp_path, f"t{i:03d}") for i in range(300)]
    storage = FileStorage(tmp_path / "state")
    await anyio.to_thread.run_sync(storage.acquire)
    loop_thread = threading.get_ident()
    released_on = record_release_threads(monkeypatch)
    try:
        await storage.lock_roots(specs)
        stores = [storage.target(s) for s in specs]
        for store in stores:
            await store.open()
        released_on.clear()
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.close)
        released_by_closes = list(released_on)
    finally:
        await anyio.to_thread.run_sync(storage.release)
    released_on = released_by_closes
    assert loop_thread not in released_on
    assert 2 <= len(set(released_on)) <= group_commit.RELEASE_THREADS + 1
    for s in specs:
        assert not locked_elsewhere(s.state_root)
        assert (s.state_root / LOCK_NAME).read_bytes() == b""
