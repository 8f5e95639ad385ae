"""This host as a member of a cluster: claim targets, keep their leases, give them back.

Two loops (`ClusterMember.run`), every `renew_seconds`. One renews the held leases (a lease
missing from the answer was lost: its run is stopped at once; past the renew deadline
without a successful renewal every run is stopped: self-fencing, storage/postgres/keeper.py).
The other runs the rounds: read the cluster's view (each target's holder, finished status
and operator flags; the live hosts), apply the flags and the verdicts reviewers gave on other
hosts (cluster/reviews.py) to the targets run here, hand over
targets beyond a fair share, and claim free or expired leases of targets this host may
run, up to its fair share:
`ceil(open targets / live hosts)`. A host may run a target when the target is configured,
not finished with its current limits, not stopped by an operator, its `hosts` list (if
any) names this host, and its directory exists here: a host that cannot see a target's
path never claims it.

When every configured target is finished cluster-wide and none runs here, the loop ends
(so does the daemon, unless `exit_when_idle = false`). What the supervisor does with a
claimed lease (prepare and run the target) and with a lost one (stop it) are callbacks.
After a round, every ten minutes, it prunes a batch of old settled reservation rows
(storage/postgres/retention.py).
The rows it reads and writes are storage/postgres/membership.py's (and leases.py's).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import anyio
import structlog

from autoloop_daemon.engine.snapshot import ClusterSnapshot, HostSnapshot
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.postgres import leases, membership, retention
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.keeper import LeaseKeeper
from autoloop_daemon.storage.postgres.membership import (
    ClusterTargetRow,
    ClusterView,
    TargetReport,
    read_view,
)
from autoloop_daemon.vocab import FINAL_STATUSES, TargetStatus

log = structlog.get_logger("autoloopd.cluster")


# A target run here ends with one of these: it goes on elsewhere (not finished).
def limits_key(spec: TargetSpec) -> str:
    """What a finished status depends on: the same on every host with the same config."""
    fields = (
        spec.max_iterations, spec.max_cost_usd, spec.plateau_window, spec.min_improvement,
        spec.oscillation_window, spec.max_consecutive_errors, spec.target_score,
        spec.min_gain_per_usd,
    )  # fmt: skip
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def cluster_snapshot(view: ClusterView, host: str, leases_fresh: bool) -> ClusterSnapshot:
    """For `status`, the API and metrics: `host`'s view of every host, with the live leases
    each holds."""
    held: dict[str, int] = {}
    for row in view.targets.values():
        if row.holder is not None and row.live:
            held[row.holder] = held.get(row.holder, 0) + 1
    return ClusterSnapshot(
        host=host,
        leases_fresh=leases_fresh,
        hosts=tuple(
            HostSnapshot(h.host, h.seen_at, h.live, h.stopped, held.get(h.host, 0))
            for h in view.hosts
        ),
    )


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """What the member needs to know of a target run here."""

    status: str
    iterations_completed: int
    total_cost_usd: float
    running: bool


class ClusterMember:
    """This host's part in the cluster (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        host: str,
        *,
        lease_s: float,
        renew_s: float,
        start: Callable[[TargetSpec], Awaitable[None]],
        stop: Callable[[str, TargetStatus], None],
        local: Callable[[str], LocalTarget | None],
        apply_flags: Callable[[str, ClusterTargetRow], Awaitable[None]],
        retention_days: float = retention.RETENTION_DAYS,
        apply_reviews: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        """`start(spec)` runs a target whose lease was just claimed; `stop(name, status)`
        stops one (lease lost, handed over, stopped by an operator); `local(name)` is a
        target run here now (None if none); `apply_flags` hands it the operator's flags;
        `apply_reviews(names)` the verdicts other hosts recorded on the targets held here;
        settled reservations are kept `retention_days` (storage/postgres/retention.py)."""
        self.db = db
        self.host = host
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.keeper = LeaseKeeper(db, host, lease_s=lease_s, renew_s=renew_s, on_lost=self._lost)
        self._start = start
        self._stop = stop
        self._local = local
        self._apply_flags = apply_flags
        self._apply_reviews = apply_reviews
        self.specs: dict[str, TargetSpec] = {}
        self.view = ClusterView()
        self._wake = anyio.Event()
        self._closing = False
        self._handing_over: set[str] = set()
        self.retention_days = retention_days
        self._prune_due = 0.0  # anyio.current_time() of the next pruning batch

    # ----------------------------------------------------------------- set-up

    async def join(self, specs: Iterable[TargetSpec]) -> None:
        """Register this host and the configured targets (rows for new ones)."""
        self.configure(specs)
        await membership.register_host(self.db, self.host, os.getpid())
        await leases.register(self.db, list(self.specs))
        self.view = await read_view(self.db, self.lease_s)

    def configure(self, specs: Iterable[TargetSpec]) -> None:
        """The configured targets (at start and after a reload); new ones are registered
        at the next round."""
        self.specs = {s.name: s for s in specs}
        self.wake()

    def wake(self) -> None:
        """Run the next round now (a target ended, the config changed)."""
        self._wake.set()

    # ----------------------------------------------------------------- the loop

    async def run(self, stay_up: Callable[[], bool]) -> None:
        """Renew the leases (its own task: a slow round never delays a renewal) and run
        rounds, until shutdown (cancelled) or until every target is finished everywhere and
        `stay_up()` is False."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.keeper.run)
            while not self._closing:
                try:
                    await self.round()
                    await self.prune()
                except ClusterError as exc:
                    log.warning("cluster_round_failed", error=str(exc))
                if not stay_up() and self.all_finished():
                    log.info("cluster_all_finished", targets=len(self.specs))
                    break
                with anyio.move_on_after(self.renew_s):
                    await self._wake.wait()
                self._wake = anyio.Event()
            tg.cancel_scope.cancel()

    async def round(self) -> None:
        """One round (see the module docstring; the renewals run beside it). Raises
        ClusterError."""
        new = [n for n in self.specs if n not in self.view.targets]
        if new:
            await leases.register(self.db, new)
        await self._report()
        self.view = await read_view(self.db, self.lease_s)
        for name in list(self.keeper.held):
            row = self.view.targets.get(name)
            if row is None:
                continue
            if row.stopped or name not in self.specs:
                self._stop(name, TargetStatus.STOPPED_SIGNAL)
                continue
            await self._apply_flags(name, row)
        await self._apply_reviews(sorted(self.keeper.held))
        if self._closing or not self.keeper.fresh:
            return
        self._hand_over_excess()
        wanted = [n for n in sorted(self.specs) if self._may_claim(n)]
        limit = self.fair_share() - len(self.keeper.held)
        got = await self.keeper.claim(wanted, limit=limit) if wanted and limit > 0 else []
        for lease in got:
            log.info("cluster_lease_claimed", target=lease.target, token=lease.token)
            await self._start(self.specs[lease.target])

    async def prune(self) -> int:
        """One batch of old settled reservation rows pruned, every PRUNE_EVERY_S (sooner
        while batches come back full); how many rows went. Raises ClusterError."""
        if anyio.current_time() < self._prune_due:
            return 0
        pruned = await retention.prune_reservations(self.db, retention_days=self.retention_days)
        if pruned:
            log.info("cluster_reservations_pruned", rows=pruned, days=self.retention_days)
        if pruned < retention.BATCH:
            self._prune_due = anyio.current_time() + retention.PRUNE_EVERY_S
        return pruned

    def fair_share(self) -> int:
        """The targets this host runs when the open ones are shared by the live hosts."""
        open_targets = sum(1 for n in self.specs if not self._finished(n))
        return math.ceil(open_targets / self.view.live_hosts)

    def _hand_over_excess(self) -> None:
        """Give up targets beyond the fair share, idle ones first (a host that joined later
        gets its share without waiting for a death); a running one hands over once its
        iteration has finished (`handing_over`: never cut short for this)."""
        excess = len(self.keeper.held) - self.fair_share() - len(self._handing_over)
        if excess <= 0 or self.view.live_hosts < 2:
            return

        def busy(name: str) -> bool:
            local = self._local(name)
            return local is None or local.running

        candidates = [n for n in sorted(self.keeper.held) if n not in self._handing_over]
        order = sorted(candidates, key=busy)  # idle ones first (a stable sort keeps names)
        for name in order[:excess]:
            self._handing_over.add(name)
            log.info("cluster_handing_over", target=name, share=self.fair_share())
            self._stop(name, TargetStatus.HANDED_OVER)

    def _finished(self, name: str) -> bool:
        row = self.view.targets.get(name)
        spec = self.specs.get(name)
        return (
            row is not None
            and spec is not None
            and row.finished_status is not None
            and row.finished_limits == limits_key(spec)
        )

    def all_finished(self) -> bool:
        """Every configured target finished with its current limits (or stopped by an
        operator), none running here."""

        def done(name: str) -> bool:
            row = self.view.targets.get(name)
            return self._finished(name) or (row is not None and row.stopped)

        return bool(self.view.targets) and all(map(done, self.specs)) and not self.keeper.held

    def _may_claim(self, name: str) -> bool:
        spec = self.specs[name]
        row = self.view.targets.get(name)
        if name in self.keeper.held or self._local(name) is not None:
            return False
        if row is not None and (row.stopped or (row.live and row.holder != self.host)):
            return False
        if self._finished(name):
            return False
        if spec.hosts and self.host not in spec.hosts:
            return False
        return spec.path.is_dir()  # never claim a target whose directory is not here

    def _lost(self, name: str) -> None:
        self._stop(name, TargetStatus.LEASE_LOST)

    def lease_of(self, name: str) -> leases.Lease | None:
        """The lease held on `name` (None when not held)."""
        return self.keeper.held.get(name)

    # ----------------------------------------------------------------- ends

    def forget(self, name: str) -> None:
        """Stop renewing `name`'s lease without releasing it (it expires by itself)."""
        self.keeper.held.pop(name, None)
        self._handing_over.discard(name)
        self.wake()

    async def ended(self, name: str, status: str, final: LocalTarget | None = None) -> None:
        """A target run here ended with `status` (`final`: its last numbers): record a
        finished status for every host (with the limits it holds for), then give the
        lease back."""
        lease = self.keeper.held.pop(name, None)
        self._handing_over.discard(name)
        spec = self.specs.get(name)
        finished = status in FINAL_STATUSES and spec is not None
        report = None
        if final is not None:
            report = TargetReport(name, status, final.iterations_completed, final.total_cost_usd)
        try:
            await membership.target_ended(
                self.db,
                self.host,
                name,
                finished_status=status if finished else None,
                finished_limits=None if spec is None else limits_key(spec),
                report=report,
                lease=lease,
            )
        except ClusterError as exc:  # the lease expires by itself; a later holder finishes it
            log.warning("cluster_release_failed", target=name, error=str(exc))
        self.wake()

    async def _report(self) -> None:
        """Tell the cluster how the targets run here are doing (for status on any host)."""
        rows = [(n, self._local(n)) for n in self.keeper.held]
        known = [
            TargetReport(n, t.status, t.iterations_completed, t.total_cost_usd)
            for n, t in rows
            if t is not None
        ]
        if known:
            await membership.report_status(self.db, known)

    async def leave(self) -> None:
        """Graceful stop: give every lease back and say this host stopped."""
        self._closing = True
        await self.keeper.release_all()
        try:
            await membership.host_stopped(self.db, self.host)
        except ClusterError as exc:
            log.warning("cluster_leave_failed", error=str(exc))
