"""The storage interface: everything a target and the budget need from a backend.

A backend keeps, per target, the iteration log (the source of truth), the state (a cache of
the log plus the target's position in its cycle) and the handoffs; and, for the whole
daemon, one owner at a time. `files/` is the first backend (one directory per state root,
crash-safe files); `memory.py` keeps everything in memory for in-process tests. A database
backend (several hosts sharing one budget) implements the same two protocols and runs the
same contract suite (tests/storage/test_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.review_queue import PendingReview
from autoloop_daemon.target_state import TargetState

T = TypeVar("T")


@dataclass(slots=True)
class Recovered:
    """A target's storage opened and brought up to its log, ready for the cycle."""

    state: TargetState
    progress: Progress
    last_entry: LogEntry | None


class TargetStore(Protocol):
    """One target's records. Methods that write are atomic: all or nothing."""

    @property
    def location(self) -> str:
        """Where the state lives, for users (a path, or a database row's name)."""
        ...

    @property
    def fence(self) -> str | None:
        """Cluster mode: `<target>:<fencing token>` of the lease the store writes under,
        passed to the orchestrator as AUTOLOOPD_FENCE; None without leases."""
        ...

    async def open(self) -> Recovered:
        """Take ownership of the target and recover it from its log.

        Raises StateLockedError (another owner), StateCorruptError (a record cannot be read
        safely; nothing is changed) or StateWriteError.
        """
        ...

    async def record(self, entry: LogEntry, handoff: str | None, state: TargetState | None) -> None:
        """Record one finished run: its log entry (durable first), the handoff text it left
        for the next run (if any), then the state (if given; else the state may lag the log,
        which `open` repairs)."""
        ...

    async def save(self, state: TargetState) -> None:
        """Replace the saved state (durably)."""
        ...

    async def save_then(self, state: TargetState, then: Callable[[], T]) -> T:
        """`save`, then `then()` (blocking work) off the event loop; returns what it returned
        and raises what it raised. `then` is not called when the save fails. The files
        backend calls it in the save's own worker call: an iteration's in-flight checkpoint
        and its run's preparation cost one hand-off (engine/iteration.py)."""
        ...

    async def read_log(self) -> list[LogEntry]:
        """Every log entry, oldest first."""
        ...

    def handoff_file(self, iteration: int) -> Path | None:
        """A file holding iteration `iteration`'s handoff, to pass to the orchestrator."""
        ...

    async def close(self) -> None:
        """Give up ownership (idempotent), even when the caller is cancelled (its waits are
        shielded). A file store's lock may still be being released when this returns; an
        `acquire` of its root in this process waits for it."""
        ...


@runtime_checkable
class ReviewSource(Protocol):
    """A target store that also sees the orchestrator's held-back candidates and the
    reviewers' verdicts on them (the files backend: `state/pending_promote.json` and the
    review log of the state root). With a store without it, no verdict reaches the loop."""

    async def read_verdicts(self) -> list[dict[str, Any]]:
        """Every verdict of the target's review log, oldest first. OSError (or
        UnicodeDecodeError) when it cannot be read."""
        ...

    async def pending_reviews(self) -> list[PendingReview]:
        """The candidates awaiting a verdict now (none when the queue cannot be read)."""
        ...


class Storage(Protocol):
    """A backend: target stores, and one owner for the whole daemon."""

    def target(self, spec: TargetSpec) -> TargetStore:
        """The store of `spec`'s records (nothing is opened yet)."""
        ...

    def acquire(self) -> None:
        """Become the daemon that owns this storage; StateLockedError if another one does."""
        ...

    async def lock_roots(self, specs: Sequence[TargetSpec]) -> None:
        """Before READY: own the existing state roots of `specs` (their stores adopt them);
        a new root is made by its store's `open`, which also reports one that cannot be
        owned now."""
        ...

    def release(self) -> None:
        """Give up the daemon-wide ownership (idempotent)."""
        ...

    async def spent_elsewhere(self, active_roots: Iterable[Path]) -> dict[str, float]:
        """Money spent by targets the daemon runs no more (renamed, removed, moved), per
        state root: it stays charged to the shared budget."""
        ...

    async def spent_since(self, roots: Iterable[str], since: datetime) -> float:
        """Money logged by the state roots `roots` (retired ones) for runs started at or
        after `since`: their share of the current budget window."""
        ...

    async def remember(self, spent_by_root: Mapping[Path, float]) -> None:
        """Record the targets' state roots and spending, so that none is ever forgotten."""
        ...
