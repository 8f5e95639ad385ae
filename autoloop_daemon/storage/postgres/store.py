"""The PostgreSQL backend: the files backend as each host's journal, the database as the
cluster's record.

`record` writes the local files first (the durable journal: a database outage loses
nothing), then pushes the entry to the database in one transaction under the target's lease:
idempotent on (target, iteration), so a retry after a lost commit acknowledgement is a
no-op, and refused when the fencing token is no longer the target's (a late write from a
host whose lease moved). Entries that could not be pushed wait in order and are pushed by
the next `record`, `push_pending` or `open`. `open` claims the target's lease (another live
holder: StateLockedError), recovers the local files and brings them and the cluster's log
together (sync.py: the first claim of an existing state root imports its log; a lease that
moved here brings the other host's iterations).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import structlog

from autoloop_daemon.exceptions import FencedWriteError, StateLockedError, StateWriteError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.review_queue import PendingReview
from autoloop_daemon.storage.base import Recovered, T
from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files.recovery import Leftovers
from autoloop_daemon.storage.files.store import FileStorage, FileTargetStore
from autoloop_daemon.storage.postgres import leases, retention, sync
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.ledger import DEFAULT_BUDGET, charge_in, money, settle_in
from autoloop_daemon.target_state import TargetState

log = structlog.get_logger("autoloopd.cluster")

Pushed = Literal["recorded", "duplicate"]
PUSH_TIMEOUT_S = 3.0  # a push takes milliseconds; past this it is deferred (the journal has it)

__all__ = [
    "FencedWriteError",
    "PostgresStorage",
    "PostgresTargetStore",
    "cluster_log",
    "push_entry",
]


async def push_entry(
    db: Database,
    lease: leases.Lease,
    entry: LogEntry,
    handoff: str | None,
    *,
    budget_id: str = DEFAULT_BUDGET,
) -> Pushed:
    """Insert `entry` under `lease` and settle its reservation in the same transaction
    (see the module docstring); FencedWriteError if the lease moved (the run's real cost is
    still booked, replacing what the takeover charged)."""
    body = json.dumps(entry.to_json(), sort_keys=True)

    async def work(conn: Any) -> Pushed | str:
        cur = await conn.execute(  # KEY SHARE: a claim waits, a renewal does not (ledger.py)
            "SELECT lease_holder, fencing_token FROM targets WHERE name = %s FOR KEY SHARE",
            (lease.target,),
        )
        holder, token = await cur.fetchone()
        cur = await conn.execute(
            """SELECT host, fencing_token, entry FROM iterations
               WHERE target = %s AND iteration = %s""",
            (lease.target, entry.iteration),
        )
        existing = await cur.fetchone()
        if existing is not None:
            if (existing[0], existing[1]) == (lease.host, lease.token) and existing[
                2
            ] == json.loads(body):
                return "duplicate"  # our own earlier commit whose acknowledgement was lost
            await _book(conn, budget_id, lease, entry)
            return (
                f"{lease.target}: iteration {entry.iteration} was already recorded by "
                f"{existing[0]} (token {existing[1]}); this write (token {lease.token}) is refused"
            )
        if (holder, token) != (lease.host, lease.token):
            await _book(conn, budget_id, lease, entry)
            return (
                f"{lease.target}: lease moved to {holder} (token {token}); the write of "
                f"iteration {entry.iteration} under token {lease.token} is refused"
            )
        await conn.execute(
            """INSERT INTO iterations (target, iteration, host, fencing_token, cost_usd, entry)
               VALUES (%s, %s, %s, %s, %s, %s::jsonb)""",
            (lease.target, entry.iteration, lease.host, lease.token, money(entry.cost_usd), body),
        )
        await _book(conn, budget_id, lease, entry)
        if handoff is not None:
            await conn.execute(
                "UPDATE targets SET handoff = %s, handoff_iteration = %s WHERE name = %s",
                (handoff, entry.iteration, lease.target),
            )
        return "recorded"

    # The journal has it: during an outage, defer it soon rather than hold the run's record.
    result = await db.run(work, timeout_s=min(db.timeout_s, PUSH_TIMEOUT_S))
    if result not in ("recorded", "duplicate"):
        raise FencedWriteError(result)  # raised after the commit: the late booking stays
    return result  # type: ignore[return-value]


async def _book(conn: Any, budget_id: str, lease: leases.Lease, entry: LogEntry) -> None:
    """Book the run's money exactly once: settle its reservation (made under this lease, or
    under an earlier one that a takeover expired: the real cost replaces the expiry charge);
    nothing when a reservation of it was already settled (a journaled run pushed again;
    its row may since have been pruned: retention.py);
    a charge when it never had one (an entry from before the cluster)."""
    settled = await settle_in(
        conn, budget_id, lease.target, entry.iteration, lease.token, entry.cost_usd
    )
    if settled is not None:
        return
    pruned = await retention.pruned_token(conn, lease.target, entry.iteration)
    if pruned == lease.token:
        return  # its reservation was settled, then its row pruned: booked already
    cur = await conn.execute(
        """SELECT fencing_token, state FROM reservations WHERE target = %s AND iteration = %s
           ORDER BY fencing_token DESC LIMIT 1""",
        (lease.target, entry.iteration),
    )
    row = await cur.fetchone()
    if pruned is not None and (row is None or row[0] < pruned):
        return  # the latest reservation was the pruned one, settled
    if row is not None:
        if row[1] in ("open", "expired"):
            await settle_in(conn, budget_id, lease.target, entry.iteration, row[0], entry.cost_usd)
        return
    if entry.cost_usd > 0:
        await charge_in(
            conn, budget_id, entry.cost_usd, f"{lease.target} iteration {entry.iteration}"
        )


async def cluster_log(db: Database, target: str) -> list[LogEntry]:
    """The cluster's iteration log of `target`, oldest first."""

    async def work(conn: Any) -> list[LogEntry]:
        cur = await conn.execute(
            "SELECT entry FROM iterations WHERE target = %s ORDER BY iteration", (target,)
        )
        return [LogEntry.from_json(row[0]) for row in await cur.fetchall()]

    return await db.run(work)


class PostgresTargetStore:
    """One target: the local state root (journal) plus its rows in the cluster database."""

    def __init__(
        self, storage: PostgresStorage, spec: TargetSpec, lease: leases.Lease | None = None
    ) -> None:
        """Describe the store; `open` claims the lease unless `lease` is one already held."""
        self._storage = storage
        self._spec = spec
        self._local = FileTargetStore(spec, leftovers=storage.leftovers)
        self.lease: leases.Lease | None = lease
        self._pending: list[tuple[LogEntry, str | None]] = []
        self._pushing = anyio.Lock()

    @property
    def location(self) -> str:
        """The local state file, and the database row."""
        return f"{self._local.location} (cluster row targets/{self._spec.name})"

    @property
    def target(self) -> str:
        """The target's name."""
        return self._spec.name

    @property
    def fence(self) -> str | None:
        """`<target>:<fencing token>` for the orchestrator's AUTOLOOPD_FENCE (sinks that can
        check it refuse a fenced host's late writes too)."""
        return None if self.lease is None else f"{self._spec.name}:{self.lease.token}"

    async def open(self) -> Recovered:
        """Claim the lease (unless held), recover the local journal and bring it and the
        cluster's log together (sync.py): push what the database lacks, take what the
        journal lacks, and the last handoff when it was written on another host."""
        db, host = self._storage.db, self._storage.host_id
        if self.lease is None:
            await leases.register(db, [self._spec.name])
            got = await leases.claim(db, host, [self._spec.name], self._storage.lease_s)
            if not got:
                holder = (await leases.holders(db)).get(self._spec.name, (None, False))[0]
                raise StateLockedError(f"{self._spec.name}: leased by host {holder} in the cluster")
            self.lease = got[0]
        recovered = await self._local.open()
        try:
            return await self._sync(recovered)
        except BaseException:  # the database went away meanwhile: let the local root go
            await self._local.close()
            raise

    async def _sync(self, recovered: Recovered) -> Recovered:
        """`open`'s second half: the journal and the cluster's log brought together."""
        cluster = await cluster_log(self._storage.db, self._spec.name)
        plan = sync.plan(await self._local.read_log(), cluster)
        if plan.append or plan.replace:
            root = self._spec.state_root
            kept = await anyio.to_thread.run_sync(sync.apply_locally, root, plan, cluster)
            log.info("cluster_journal_synced", target=self._spec.name, added=len(plan.append),
                     fenced_journal_kept=None if kept is None else str(kept))  # fmt: skip
            await self._local.close()
            recovered = await self._local.open()  # the state follows the completed log
        await self._restore_handoff()
        self._pending = [(e, None) for e in plan.push]
        await self.push_pending()
        return recovered

    async def _restore_handoff(self) -> None:
        """Write the cluster's last handoff locally when this host lacks it (moved lease)."""

        async def work(conn: Any) -> tuple[str | None, int | None]:
            cur = await conn.execute(
                "SELECT handoff, handoff_iteration FROM targets WHERE name = %s",
                (self._spec.name,),
            )
            row = await cur.fetchone()
            return (None, None) if row is None else (row[0], row[1])

        text, iteration = await self._storage.db.run(work)
        if text is None or iteration is None:
            return
        path = artifacts.handoff_path(self._spec.state_root, iteration)
        written = await anyio.to_thread.run_sync(_write_missing, path, text.encode())
        if written:
            log.info("cluster_handoff_restored", target=self._spec.name, iteration=iteration)

    async def record(self, entry: LogEntry, handoff: str | None, state: TargetState | None) -> None:
        """Journal locally (durable), then push to the database (kept for later if it is
        unreachable). FencedWriteError when the lease moved: the local journal keeps it."""
        await self._local.record(entry, handoff, state)
        self._pending.append((entry, handoff))
        await self.push_pending()

    async def push_pending(self) -> int:
        """Push the entries waiting for the database, in order; how many are left (they are
        pushed by the next record, or by the storage's `push_waiting`). One push at a time
        per store: the push loop, a target's end and a record may all push at once, and
        two of them would push the same entry and drop two (one never pushed)."""
        async with self._pushing:
            return await self._push_in_order()

    async def _push_in_order(self) -> int:
        if self.lease is None:
            raise StateWriteError(f"{self._spec.name}: not opened")
        while self._pending:
            entry, handoff = self._pending[0]
            try:
                await push_entry(self._storage.db, self.lease, entry, handoff)
            except FencedWriteError:
                self._pending.clear()  # never retried: the lease is gone
                raise
            except ClusterError as exc:
                log.warning("cluster_push_deferred", target=self._spec.name,
                            iteration=entry.iteration, error=str(exc))  # fmt: skip
                break
            self._pending.pop(0)
        self._storage.waiting(self, bool(self._pending))
        return len(self._pending)

    async def save(self, state: TargetState) -> None:
        """Replace the local state (a cache of the log)."""
        await self._local.save(state)

    async def save_then(self, state: TargetState, then: Callable[[], T]) -> T:
        """The local store's `save_then` (one worker call)."""
        return await self._local.save_then(state, then)

    async def read_log(self) -> list[LogEntry]:
        """The local journal."""
        return await self._local.read_log()

    async def read_verdicts(self) -> list[dict[str, Any]]:
        """The local review log: the verdicts given here, and those other hosts recorded in
        the database once this host applied them (cluster/reviews.py)."""
        return await self._local.read_verdicts()

    async def pending_reviews(self) -> list[PendingReview]:
        """The local state root's review queue minus its verdicts."""
        return await self._local.pending_reviews()

    def handoff_file(self, iteration: int) -> Path | None:
        """The local handoff file."""
        return self._local.handoff_file(iteration)

    async def close(self) -> None:
        """Release the local lock; the lease is released by `release` (or expires)."""
        await self._local.close()

    async def release(self) -> None:
        """Give the lease up (graceful stop), so another host takes over at once."""
        lease, self.lease = self.lease, None
        if lease is not None:
            await leases.release(self._storage.db, lease)


def _write_missing(path: Path, body: bytes) -> bool:
    """Write `body` to `path` durably unless it exists; True when written (blocking)."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fsio.atomic_write_bytes(path, body)
    return True


class PostgresStorage:
    """The cluster backend: a `FileStorage` for the local journal, a database for the rest."""

    def __init__(
        self,
        db: Database,
        host_id: str,
        state_dir: Path | None,
        *,
        lease_s: float = 60.0,
        leftovers: Leftovers | None = None,
    ) -> None:
        """Bind to an opened `Database` as `host_id` (`leftovers`: as FileStorage's)."""
        self.db = db
        self.host_id = host_id
        self.lease_s = lease_s
        self.leftovers = leftovers
        self._files = FileStorage(state_dir, leftovers=leftovers)
        self._held: dict[str, leases.Lease] = {}
        self._waiting: set[PostgresTargetStore] = set()

    def target(self, spec: TargetSpec) -> PostgresTargetStore:
        """The store of `spec` (`open` claims its lease)."""
        return PostgresTargetStore(self, spec, self._held.get(spec.name))

    def waiting(self, store: PostgresTargetStore, has_entries: bool) -> None:
        """`store` has entries the database does not have yet (or no longer)."""
        if has_entries:
            self._waiting.add(store)
        else:
            self._waiting.discard(store)

    async def push_waiting(self) -> int:
        """Push every store's waiting entries (after a database outage the runs may have
        ended: nothing else would push them); how many entries are still waiting."""
        left = 0
        for store in list(self._waiting):
            try:
                left += await store.push_pending()
            except FencedWriteError as exc:  # the journal keeps it; its money was booked
                log.warning("cluster_write_fenced", error=str(exc))
        return left

    def has_waiting(self, target: str) -> bool:
        """True when `target`'s store still has entries the database lacks."""
        return any(store.target == target for store in self._waiting)

    def hold(self, lease: leases.Lease) -> None:
        """A lease the host claimed: the next store of its target opens under it."""
        self._held[lease.target] = lease

    def drop(self, target: str) -> None:
        """The lease of `target` is no longer held."""
        self._held.pop(target, None)

    def acquire(self) -> None:
        """Lock the local state directory (one daemon per host and state_dir)."""
        self._files.acquire()

    def release(self) -> None:
        """Release the local state directory."""
        self._files.release()

    async def lock_roots(self, specs: Sequence[TargetSpec]) -> None:
        """Nothing before READY: a target's root is taken when this host claims its lease
        (its store's `open`); until then the target may be running on another host."""

    async def spent_elsewhere(self, active_roots: Iterable[Path]) -> dict[str, float]:
        """As the files backend (this host's roots)."""
        return await self._files.spent_elsewhere(active_roots)

    async def spent_since(self, roots: Iterable[str], since: datetime) -> float:
        """As the files backend (this host's retired roots)."""
        return await self._files.spent_since(roots, since)

    async def remember(self, spent_by_root: Mapping[Path, float]) -> None:
        """As the files backend."""
        await self._files.remember(spent_by_root)
