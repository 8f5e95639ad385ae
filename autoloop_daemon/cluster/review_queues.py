"""Review queues in cluster mode: published by each target's holder, listed on every host.

The gate writes a held-back candidate into the state root of the host running the
iteration, so only that host can read the queue. After each round's verdicts, the holder
publishes the queue of every target it runs (storage/postgres/review_pending.py) when it
changed: the two files it depends on (the orchestrator's `pending_promote.json`, autoloopd's
review log) are looked at (`stat`) every round and read only when they changed or the lease
is new, so a claim republishes the target's queue, replacing what an earlier holder
published. A publish under a lease that has moved is refused by the database
(`review_queue_fenced`); one the database could not take is tried again next round.

`/api/reviews` on any host lists every configured target: those run here from the files,
as on a single host, the others as their holder last published them (less the entries a
verdict names), each saying which host published it (`host`), whether that host holds the
target now (`held`) and when (`published_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.policy.review_queue import PendingReview
from autoloop_daemon.storage.files.review_files import (
    ReviewQueue,
    pending_path,
    read_queue,
    review_log_path,
)
from autoloop_daemon.storage.postgres import review_pending
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.leases import Lease
from autoloop_daemon.storage.postgres.review_pending import PublishedQueue

log = structlog.get_logger("autoloopd.review")

Signature = tuple[tuple[int, int, int] | None, ...]


def _signature(state_root: Path) -> Signature:
    """What the queue read from `state_root` depends on: each file's inode, size and
    modification time (None: absent or unreadable, which read_queue reports itself)."""

    def one(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    return (one(pending_path(state_root)), one(review_log_path(state_root)))


def _published_entry(entry: PendingReview) -> dict[str, Any]:
    """An entry as it is published: its age is computed by whoever lists it."""
    data = entry.to_json()
    del data["age_s"]
    return data


class ReviewQueues:
    """Publish the queues of the targets held here; list the whole cluster's."""

    def __init__(
        self,
        db: Database,
        host: str,
        lease_of: Callable[[str], Lease | None],
        runner_of: Callable[[str], TargetRunner | None],
        holder_of: Callable[[str], str | None],
    ) -> None:
        """`lease_of(name)` is the lease held here on a target, `runner_of(name)` its live
        runner here (None: not run here), `holder_of(name)` the host holding it now."""
        self._db = db
        self._host = host
        self._lease_of = lease_of
        self._runner_of = runner_of
        self._holder_of = holder_of
        self._sent: dict[str, tuple[int, Signature]] = {}  # published: (token, signature)

    async def publish(self, held: Sequence[str]) -> None:
        """Publish the queue of each target of `held` run here whose files changed since
        its last publish under the same lease (all of them read in one worker call)."""
        todo: dict[str, tuple[Lease, Path]] = {}
        for name in held:
            lease, runner = self._lease_of(name), self._runner_of(name)
            if lease is not None and runner is not None:
                todo[name] = (lease, runner.spec.state_root)
        self._sent = {n: sent for n, sent in self._sent.items() if n in todo}
        sent = dict(self._sent)

        def read() -> dict[str, tuple[Signature, ReviewQueue]]:
            now, changed = now_utc(), {}
            for name, (lease, root) in todo.items():
                signature = _signature(root)  # before reading: a later change shows next round
                if sent.get(name) != (lease.token, signature):
                    changed[name] = (signature, read_queue(root, now))
            return changed

        if not todo:
            return
        for name, (signature, queue) in (await anyio.to_thread.run_sync(read)).items():
            await self._publish_one(todo[name][0], signature, queue)

    async def _publish_one(self, lease: Lease, signature: Signature, queue: ReviewQueue) -> None:
        name = lease.target
        entries = [_published_entry(e) for e in queue.entries]
        try:
            done = await review_pending.publish(self._db, lease, entries, queue.problem)
        except ClusterError as exc:
            log.warning("review_queue_unpublished", target=name, error=str(exc))
            return
        if not done:
            log.warning("review_queue_fenced", target=name, token=lease.token)
            return
        self._sent[name] = (lease.token, signature)
        log.info("review_queue_published", target=name, pending=len(entries), token=lease.token)

    async def listing(
        self, local: list[dict[str, Any]], names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Every target of `names` (and of `local`, the queues read from this host's files)
        as the module docstring says; a database that cannot be read is each remote
        queue's problem."""
        here = {q["target"]: q for q in local}
        remote = sorted(n for n in set(names) | set(here) if self._runner_of(n) is None)
        problem = None
        published: dict[str, PublishedQueue] = {}
        try:
            published = await review_pending.read(self._db, remote) if remote else {}
        except ClusterError as exc:
            problem = f"the cluster database could not be read: {exc}"
        now = now_utc()
        listed = []
        for name in sorted(set(names) | set(here)):
            if name not in remote:
                queue = here.get(name) or ReviewQueue().to_json(name)
                listed.append({**queue, "host": self._host, "held": True, "published_at": None})
            elif (pub := published.get(name)) is not None:
                listed.append({
                    "target": name,
                    "pending": [PendingReview.from_json(e, now).to_json() for e in pub.entries],
                    "problem": pub.problem, "host": pub.host,
                    "held": self._holder_of(name) == pub.host,
                    "published_at": to_iso(pub.published_at),
                })  # fmt: skip
            else:  # never published: what this host's files hold, if anything
                queue = here.get(name) or ReviewQueue().to_json(name)
                listed.append({
                    **queue, "problem": problem or queue["problem"],
                    "host": self._host if name in here else None, "held": False,
                    "published_at": None,
                })  # fmt: skip
        return listed
