"""The files backend: one directory per state root, written crash-safe.

`FileStorage` owns `daemon.state_dir` (a lock file) and hands out one `FileTargetStore` per
target; before READY it takes every configured target's existing state root (`lock_roots`,
root_locks.py). A store's `open` takes the state root's lock (or adopts the one taken
before READY) and recovers it from its log (recovery.py); `record` writes one finished run
in ONE worker-thread call, in the order the crash guarantees need: the log line (fsynced:
the source of truth), the handoff (atomic, not fsynced: recovery rebuilds a lost one from
the log), then the state (fsynced).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import anyio

from autoloop_daemon import worker_threads
from autoloop_daemon.clock import now_utc, parse_iso
from autoloop_daemon.exceptions import AutoloopError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.review_queue import PendingReview
from autoloop_daemon.policy.windows import spent_in_window
from autoloop_daemon.storage.base import Recovered, T
from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files import state_file as state_mod
from autoloop_daemon.storage.files.group_commit import GroupCommit
from autoloop_daemon.storage.files.lock import StateLock, check_owned_root
from autoloop_daemon.storage.files.recovery import Leftovers, ReviewLogAtOpen, recover
from autoloop_daemon.storage.files.review_files import read_queue, read_verdicts
from autoloop_daemon.storage.files.root_locks import release_all, take_roots
from autoloop_daemon.storage.files.worker_batch import WorkerBatch
from autoloop_daemon.target_state import TargetState


def _commit(
    log_file: Path,
    entry: LogEntry,
    handoff: tuple[Path, bytes] | None,
    state_file: Path,
    state_bytes: bytes | None,
) -> None:
    check_owned_root(log_file.parent)  # never write through a state root replaced by a link
    fsio.append_record(log_file, fsio.dumps_json_line(entry.to_json()))
    if handoff is not None:
        fsio.make_dirs(handoff[0].parent)
        fsio.atomic_write_bytes(handoff[0], handoff[1], durable=False)
    if state_bytes is not None:
        fsio.atomic_write_bytes(state_file, state_bytes)


class FileTargetStore:
    """One target's state root on disk (see the module docstring)."""

    __slots__ = (
        "_commits",
        "_leftovers",
        "_loads",
        "_lock",
        "_reviews_at_open",
        "_spec",
    )

    def __init__(
        self,
        spec: TargetSpec,
        commits: GroupCommit | None = None,
        loads: WorkerBatch | None = None,
        leftovers: Leftovers | None = None,
        taken: StateLock | None = None,
    ) -> None:
        """Describe the state root; nothing touches the disk until `open`.

        `commits`: the group commit shared with the other targets (FileStorage's), so that
        the checkpoints of many targets at once are made durable together; `loads`: the
        batch their start-up loads share (FileStorage's); `leftovers`: what stops the
        processes earlier runs left (None: nothing is looked for; recovery.py); `taken`:
        the root's lock, taken before READY (`FileStorage.lock_roots`), which `open` adopts.
        """
        self._spec = spec
        self._commits = commits if commits is not None else GroupCommit()
        self._loads = loads
        self._leftovers = leftovers
        self._lock = StateLock(spec.state_root) if taken is None else taken
        self._reviews_at_open: ReviewLogAtOpen | None = None  # `open`'s, for one read

    # Made when needed, not kept: ~0.3 kB each per target (issue 24, memory).
    @property
    def _state_file(self) -> Path:
        return state_mod.state_path(self._spec.state_root)

    @property
    def _log_file(self) -> Path:
        return artifacts.log_path(self._spec.state_root)

    @property
    def fence(self) -> str | None:
        """No lease, no fencing token (single-host mode)."""
        return None

    @property
    def location(self) -> str:
        """The state file's path: `str(self._state_file)` without building a Path (every
        status rendering asks it of every target)."""
        root = str(self._spec.state_root)  # a Path's str: normalised, and kept by the Path
        if root in ("/", "."):  # where `/` would not simply join
            return str(self._state_file)
        return f"{root}/{state_mod.STATE_NAME}"

    async def open(self) -> Recovered:
        """Lock the state root and recover it from its log (recovery.py)."""
        recovered, self._reviews_at_open = await recover(
            self._spec, self._lock, self._commits, self._loads, self._leftovers
        )
        return recovered

    async def record(self, entry: LogEntry, handoff: str | None, state: TargetState | None) -> None:
        """Append the log line, write the handoff, replace the state: one worker call."""
        handoff_file = None
        if handoff is not None:
            path = artifacts.handoff_path(self._spec.state_root, entry.iteration)
            handoff_file = (path, handoff.encode())
        state_bytes = None if state is None else state_mod.encode_state(state)
        await worker_threads.run_sync(
            _commit, self._log_file, entry, handoff_file, self._state_file, state_bytes
        )

    async def save(self, state: TargetState) -> None:
        """Replace the state file atomically and durably (group-committed)."""
        data = state_mod.encode_state(state)
        await self._commits.write(self._state_file, data, check_root=True)

    async def save_then(self, state: TargetState, then: Callable[[], T]) -> T:
        """`save`, then `then()` in the group commit's own worker call (no hand-off more)."""
        data = state_mod.encode_state(state)
        result = await self._commits.write(self._state_file, data, check_root=True, then=then)
        return cast(T, result)

    async def read_log(self) -> list[LogEntry]:
        """The whole iteration log (a torn tail is left for `open` to repair)."""
        # An idle anyio worker thread keeps its last result alive until its next job: the
        # entries come in a box emptied here, so no idle worker holds a whole log (issue 19:
        # memory grew with the log while `GET /api/targets/<name>/history` was polled).
        box = await anyio.to_thread.run_sync(
            lambda: [artifacts.read_log(self._log_file, repair=False)[0]]
        )
        return box.pop()

    async def read_verdicts(self) -> list[dict[str, Any]]:
        """The verdicts of the state root's review log (review_files.py), oldest first. The
        first call after `open` is answered with what `open` read, unless a verdict has been
        written since (the runner's start-up: no worker hand-off per target)."""
        at_open, self._reviews_at_open = self._reviews_at_open, None
        verdicts = None if at_open is None else at_open.current()
        if verdicts is not None:
            return verdicts
        return await anyio.to_thread.run_sync(read_verdicts, self._spec.state_root)

    async def pending_reviews(self) -> list[PendingReview]:
        """The state root's review queue minus its verdicts (review_files.py)."""
        root = self._spec.state_root
        queue = await anyio.to_thread.run_sync(lambda: read_queue(root, now_utc()))
        return queue.entries if queue.problem is None else []

    def handoff_file(self, iteration: int) -> Path | None:
        """`handoffs/iteration-N.md` (written with the run's record, restored by recovery;
        the orchestrator's runner checks it still exists, off the event loop)."""
        return artifacts.handoff_path(self._spec.state_root, iteration)

    async def close(self) -> None:
        """Release the state root's lock, in a worker thread (after the group commit in
        flight, if one is)."""
        await self._commits.release(self._lock)


ROOTS_NAME = ".autoloopd-roots.json"
MAX_SPENT_USD = 1e15  # an integer above this in the registry is damage (and too big a float)


def _read_roots(path: Path) -> dict[str, float]:
    """The registry of state roots (root -> last known spending); {} if absent or unreadable."""
    try:  # a regular file only: a FIFO planted here must not hang the daemon
        data = fsio.parse_json(fsio.read_regular(path, 64 * 1024 * 1024).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    roots = data.get("roots") if isinstance(data, dict) else None
    if not isinstance(roots, dict):
        return {}
    return {str(k): v for k, v in ((k, _spent(v)) for k, v in roots.items()) if v is not None}


def _spent(value: object) -> float | None:
    """A registry figure as a float, or None when it is not a plausible amount."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= MAX_SPENT_USD:  # also keeps integers too big for a float out
        return None
    return float(value)


def _logged_spending(root: Path) -> float | None:
    """The sum of a state root's logged costs; None when it has no readable log."""
    try:
        entries, _torn = artifacts.read_log(artifacts.log_path(root), repair=False)
    except AutoloopError:
        return None
    if not entries and not artifacts.log_path(root).exists():
        return None
    return round(math.fsum(e.cost_usd for e in entries), 9)


def _spent_elsewhere(state_dir: Path, active: frozenset[str]) -> dict[str, float]:
    known = _read_roots(state_dir / ROOTS_NAME)
    with contextlib.suppress(OSError):
        for child in state_dir.iterdir():
            if (child / artifacts.LOG_NAME).is_file():
                known.setdefault(str(child), 0.0)
    spent: dict[str, float] = {}
    for root, last_known in known.items():
        if root in active:
            continue
        logged = _logged_spending(Path(root))
        spent[root] = last_known if logged is None else max(logged, last_known)
    return spent


def _spent_since(roots: Iterable[str], since: datetime) -> float:
    total = 0.0
    for root in roots:
        try:
            entries, _torn = artifacts.read_log(artifacts.log_path(Path(root)), repair=False)
        except AutoloopError:
            continue
        total += spent_in_window(((parse_iso(e.started_at), e.cost_usd) for e in entries), since)
    return total


class FileStorage:
    """The files backend for a daemon whose targets live under `state_dir`.

    Besides the lock, `state_dir` keeps a registry of every state root the daemon has run
    (`.autoloopd-roots.json`, root -> last known spending), so that money spent by a target
    that was renamed, removed or given another state root is still charged to the budget.
    """

    def __init__(self, state_dir: Path | None, *, leftovers: Leftovers | None = None) -> None:
        """`state_dir` None: no daemon-wide lock (the one-target command line). `leftovers`:
        what stops the processes a killed daemon's runs left (runs/leftovers.py, given by
        the composition root; None in tests and benchmarks: nothing is looked for)."""
        self._state_dir = state_dir
        self._leftovers = leftovers
        self._lock = StateLock(state_dir) if state_dir is not None else None
        self._commits = GroupCommit()
        self._loads = WorkerBatch()
        self._taken: dict[Path, StateLock] = {}  # roots locked before READY, not yet adopted

    async def spent_elsewhere(self, active_roots: Iterable[Path]) -> dict[str, float]:
        """Per state root not in `active_roots`: what it spent (its log, else the registry's
        last figure). Roots found under `state_dir` count even if never registered."""
        if self._state_dir is None:
            return {}
        active = frozenset(str(r) for r in active_roots)
        return await anyio.to_thread.run_sync(_spent_elsewhere, self._state_dir, active)

    async def spent_since(self, roots: Iterable[str], since: datetime) -> float:
        """What the logs of `roots` hold for runs started at or after `since`."""
        return await anyio.to_thread.run_sync(_spent_since, tuple(roots), since)

    async def remember(self, spent_by_root: Mapping[Path, float]) -> None:
        """Add or update state roots in the registry (atomically; never forgets one)."""
        if self._state_dir is None or not spent_by_root:
            return
        path = self._state_dir / ROOTS_NAME

        def work() -> None:
            roots = _read_roots(path)
            for root, spent in spent_by_root.items():
                roots[str(root)] = max(round(spent, 9), roots.get(str(root), 0.0))
            fsio.atomic_write_bytes(path, fsio.dumps_json({"roots": roots}))

        await anyio.to_thread.run_sync(work)

    def target(self, spec: TargetSpec) -> FileTargetStore:
        """The store of `spec`'s state root (with its lock, if `lock_roots` took it)."""
        taken = self._taken.pop(spec.state_root, None)
        if taken is not None and not self._taken:
            self._taken = {}  # an emptied dict keeps its table: 0.3 MB for 10,000 roots
        return FileTargetStore(spec, self._commits, self._loads, self._leftovers, taken)

    async def lock_roots(self, specs: Sequence[TargetSpec]) -> None:
        """Take the existing state roots of `specs` before READY, in one worker call
        (root_locks.py); a new root is made by its target's `open`, and one that cannot be
        taken now is left for that `open` to report."""
        roots = [s.state_root for s in specs if s.state_root not in self._taken]
        if not roots:
            return
        with anyio.CancelScope(shield=True):  # never lose locks taken to a cancellation
            taken = await anyio.to_thread.run_sync(take_roots, roots)
        self._taken.update(taken)

    def acquire(self) -> None:
        """Lock `state_dir` (creating it); StateLockedError names the holder."""
        if self._lock is not None:
            self._lock.acquire()

    def release(self) -> None:
        """Release the roots no target adopted (a stop during start-up), then `state_dir`'s
        lock."""
        taken, self._taken = self._taken, {}
        release_all(taken.values())
        if self._lock is not None:
            self._lock.release()
