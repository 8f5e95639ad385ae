"""An in-memory storage backend: the protocols of storage/base.py without a disk.

For in-process tests: the same records and guarantees the files backend gives within one
process (one owner per target, the log as the source of truth, the state brought up to its
log on open, an in-flight run recorded as interrupted), and nothing survives the process.
It passes no handoffs to the orchestrator (there is no file to pass), so it keeps none.
Records are copied in and out, so a caller cannot change what was stored by mutating its
objects afterwards.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoloop_daemon import worker_threads
from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.exceptions import StateLockedError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.storage.base import Recovered, T
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import RunStatus

INTERRUPTED_ERROR = "autoloopd stopped while this iteration ran (recovered at start)"


@dataclass(slots=True)
class _Records:
    """What one state root holds."""

    entries: list[LogEntry] = field(default_factory=list)
    state: TargetState | None = None
    owned: bool = False


class MemoryTargetStore:
    """One target's records in a `MemoryStorage`."""

    def __init__(self, spec: TargetSpec, records: _Records) -> None:
        """A view on `records` (shared with later stores of the same state root)."""
        self._spec = spec
        self._records = records
        self._open = False

    @property
    def fence(self) -> str | None:
        """No lease, no fencing token (single-host mode)."""
        return None

    @property
    def location(self) -> str:
        """A name for users."""
        return f"memory:{self._spec.state_root}"

    async def open(self) -> Recovered:
        """Take ownership and bring the state up to the log (an in-flight run the log does
        not hold is recorded as interrupted, with no cost: nothing ran it here)."""
        if self._records.owned:
            raise StateLockedError(f"{self.location}: in use by another store of this process")
        self._records.owned = self._open = True
        records = self._records
        state = copy.deepcopy(records.state) or TargetState.new(self._spec, to_iso(now_utc()))
        last = records.entries[-1].iteration if records.entries else 0
        if state.in_flight is not None and state.in_flight.iteration == last + 1:
            records.entries.append(
                LogEntry(
                    iteration=last + 1,
                    started_at=state.in_flight.started_at,
                    finished_at=to_iso(now_utc()),
                    status=RunStatus.INTERRUPTED,
                    decision=None,
                    weighted_score=None,
                    cost_usd=0.0,
                    duration_seconds=0.0,
                    error=INTERRUPTED_ERROR,
                    cost_source="estimated",
                )
            )
        progress = Progress.from_entries(
            records.entries, self._spec.weights_map, self._spec.min_improvement
        )
        progress.apply_to(state)
        state.apply_limits(self._spec)
        state.in_flight = None
        records.state = copy.deepcopy(state)
        last_entry = records.entries[-1] if records.entries else None
        return Recovered(state=state, progress=progress, last_entry=last_entry)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"{self.location}: not opened")

    async def record(self, entry: LogEntry, handoff: str | None, state: TargetState | None) -> None:
        """Append the entry (numbers must follow on) and replace the state; the handoff is
        not kept (see `handoff_file`)."""
        self._check_open()
        expected = len(self._records.entries) + 1
        if entry.iteration != expected:
            raise ValueError(f"iteration {entry.iteration} out of order (expected {expected})")
        self._records.entries.append(entry)
        if state is not None:
            self._records.state = copy.deepcopy(state)

    async def save(self, state: TargetState) -> None:
        """Replace the saved state."""
        self._check_open()
        self._records.state = copy.deepcopy(state)

    async def save_then(self, state: TargetState, then: Callable[[], T]) -> T:
        """`save`, then `then()` in a worker thread."""
        await self.save(state)
        return await worker_threads.run_sync(then)

    async def read_log(self) -> list[LogEntry]:
        """Every entry, oldest first."""
        return list(self._records.entries)

    def handoff_file(self, iteration: int) -> Path | None:
        """None: this backend passes no handoffs."""
        return None

    async def close(self) -> None:
        """Give up ownership (idempotent)."""
        if self._open:
            self._open = False
            self._records.owned = False


class MemoryStorage:
    """Every state root's records, kept while the process lives."""

    def __init__(self) -> None:
        """An empty storage."""
        self._roots: dict[Path, _Records] = {}
        self._owned = False
        self._remembered: dict[str, float] = {}

    def target(self, spec: TargetSpec) -> MemoryTargetStore:
        """The store of `spec`'s state root (its records outlive the store)."""
        return MemoryTargetStore(spec, self._roots.setdefault(spec.state_root, _Records()))

    def acquire(self) -> None:
        """Become the one daemon using this storage."""
        if self._owned:
            raise StateLockedError("memory storage: in use by another supervisor")
        self._owned = True

    def release(self) -> None:
        """Give up the ownership (idempotent)."""
        self._owned = False

    async def lock_roots(self, specs: Sequence[TargetSpec]) -> None:
        """Nothing to take: the storage is owned as a whole (`acquire`)."""

    async def spent_elsewhere(self, active_roots: Iterable[Path]) -> dict[str, float]:
        """What the state roots not in `active_roots` spent (their logs, else the last
        remembered figure)."""
        active = {str(r) for r in active_roots}
        spent = dict(self._remembered)
        for root, records in self._roots.items():
            spent[str(root)] = max(
                spent.get(str(root), 0.0), math.fsum(e.cost_usd for e in records.entries)
            )
        return {root: usd for root, usd in spent.items() if root not in active}

    async def remember(self, spent_by_root: Mapping[Path, float]) -> None:
        """Keep the state roots' spending (never lowered)."""
        for root, usd in spent_by_root.items():
            self._remembered[str(root)] = max(usd, self._remembered.get(str(root), 0.0))
