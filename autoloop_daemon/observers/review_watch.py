"""Watching every target's review queue: counts for `/metrics`, `review_requested` once per entry.

The orchestrator appends held-back candidates to its own file, at any moment of its run, so
the queue is polled: that target's after each of its iterations (gathered: the targets that
finished within `gather_s` of each other are read together; a stopping daemon reads those
left at once, `flush`), and all of them at start, after a reload and every `interval_s`,
each scan in one worker call. A new entry is
logged (`review_requested`) and published as a
`ReviewRequested` event once in this process; the alerter keeps its own record of what it
sent, so a restart does not page again (observers/alerts.py). Each scan first declines what
waited longer than its target's `review_expire_hours` (`review_expired`, a `ReviewExpired`
event; the target's loop counts it as a reject before its next turn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoloop_daemon.clock import now_utc
from autoloop_daemon.engine import events as ev
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.policy.review_queue import PendingReview
from autoloop_daemon.storage.files.review_files import ReviewQueue, expire_overdue, read_queue

log = structlog.get_logger("autoloopd.review")
INTERVAL_S = 30.0
GATHER_S = 0.2
"""After an iteration's notice, how long the watch lets others come before it scans: one
worker call for every target that finished meanwhile. A fleet finishing hundreds of
iterations a second (or one target looping without a cooldown) would otherwise pay one
worker hand-off per iteration for a file that is almost never there; a candidate is
announced at most this much later."""


class ReviewWatch:
    """The queues of the targets `roots()` names; call it with events (a bus subscriber)."""

    def __init__(
        self,
        roots: Callable[[set[str] | None], dict[str, Path]],
        publish: Callable[[ev.Event], None],
        interval_s: float = INTERVAL_S,
        expiry: Callable[[set[str] | None], dict[str, tuple[Path, float]]] | None = None,
        gather_s: float = GATHER_S,
    ) -> None:
        """Watch the state roots `roots(names)` returns (by target name; `names` None: every
        target, else those of them that exist); nothing runs until `run`.

        `expiry(names)` gives, by target name, the target's directory and its
        `review_expire_hours`, for the targets that have one (asked at every scan, so a
        reload applies at once). Both are asked for the names of a scan after iterations
        only, so that such a scan costs nothing per target of the fleet.
        """
        self._roots = roots
        self._expiry = expiry
        self._publish = publish
        self._interval_s = interval_s
        self._gather_s = gather_s
        self._wake = anyio.Event()
        self._finished: set[str] = set()  # targets whose iteration ended since the last scan
        self._everything = True  # the next scan reads every queue
        self._announced: set[tuple[str, str]] = set()
        self.pending: dict[str, list[PendingReview]] = {}
        self.problems: dict[str, str] = {}

    def __call__(self, event: ev.Event) -> None:
        """Rescan a target's queue after each of its iterations (the gate writes during it),
        and every queue once the targets run and after a reload (a new
        `review_expire_hours` applies at once)."""
        if isinstance(event, ev.IterationFinished):
            self._finished.add(event.target)
            self._wake.set()
        elif isinstance(event, ev.DaemonReady | ev.ConfigReloaded):
            self._everything = True
            self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Scan at once, then `gather_s` after an iteration's notice and every `interval_s`,
        until cancelled."""
        task_status.started()
        while True:
            only = None if self._everything else self._finished
            self._everything, self._finished = False, set()
            await self.scan(only)
            with anyio.move_on_after(self._interval_s) as waited:
                await self._wake.wait()
            if not waited.cancelled_caught:
                await anyio.sleep(self._gather_s)  # notices meanwhile join this scan
            self._everything |= waited.cancelled_caught  # the periodic scan reads them all
            self._wake = anyio.Event()

    async def flush(self) -> None:
        """Scan now the targets whose iterations ended since the last scan, without waiting
        for the gathering time: a stopping daemon (a one-shot run that exits after its
        iteration) announces its last candidates before its alerts are drained."""
        only, self._finished = self._finished, set()
        if only:
            await self.scan(only)

    async def scan(self, only: set[str] | None = None) -> None:
        """Read every queue, or those of the targets `only` names (one worker call), and
        announce the entries not seen before."""
        roots = self._roots(only)
        expiry = {} if self._expiry is None else self._expiry(only)

        def read() -> tuple[dict[str, ReviewQueue], list[tuple[str, PendingReview, float]]]:
            now = now_utc()
            expired = []
            for name, (target, hours) in expiry.items():
                if name in roots:
                    try:
                        done = expire_overdue(roots[name], target, hours, now)
                    except StateWriteError as exc:
                        log.warning("review_expiry_failed", target=name, error=str(exc))
                        continue
                    expired += [(name, entry, hours) for entry in done]
            return {name: read_queue(root, now) for name, root in roots.items()}, expired

        queues, expired = await anyio.to_thread.run_sync(read)
        for name, entry, hours in expired:
            log.warning("review_expired", target=name, review_id=entry.review_id, hours=hours)
            self._publish(
                ev.ReviewExpired(name, entry.review_id, entry.candidate_id, entry.title, hours)
            )
        for name, q in queues.items():
            if q.problem is not None and self.problems.get(name) != q.problem:
                log.warning("review_queue_unreadable", target=name, error=q.problem)
        seen = {name: q.entries for name, q in queues.items()}
        problems = {name: q.problem for name, q in queues.items() if q.problem}
        if only is None:  # targets gone from the config go from the gauge
            self.pending, self.problems = seen, problems
        else:
            self.pending.update(seen)
            self.problems = {n: p for n, p in self.problems.items() if n not in seen}
            self.problems.update(problems)
        for name, q in queues.items():
            for entry in q.entries:
                self._announce(name, entry)

    def _announce(self, name: str, entry: PendingReview) -> None:
        if (name, entry.review_id) in self._announced:
            return
        self._announced.add((name, entry.review_id))
        log.info("review_requested", target=name, review_id=entry.review_id, title=entry.title)
        self._publish(
            ev.ReviewRequested(
                name, entry.review_id, entry.candidate_id, entry.title, entry.risk_level
            )
        )


class ReviewCollector(Collector):
    """`autoloopd_reviews_pending{target}`: candidates awaiting a human, per target."""

    def __init__(self, watch: ReviewWatch) -> None:
        """Render `watch`'s last scan."""
        self._watch = watch

    def collect(self) -> Iterator[Metric]:
        """The gauge, one sample per watched target."""
        gauge = GaugeMetricFamily(
            "autoloopd_reviews_pending", "Held-back candidates awaiting review", labels=["target"]
        )
        for name, entries in sorted(self._watch.pending.items()):
            gauge.add_metric([name], float(len(entries)))
        yield gauge
