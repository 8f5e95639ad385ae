"""Cluster mode's `Hosting`: targets run here when this host claims their lease.

`ClusterHosting` holds what cluster mode needs (the member, the link, the cluster's
budget) and implements engine/hosting.py's hooks with them: the budget is the cluster's
(cluster/budget.py), no target is prepared up front, and the member's rounds
(cluster/member.py) claim leases and start the targets, stop those whose lease was lost, and
give the leases back when the targets end. The operator's commands on a target held by
another host go through the cluster's row (`ctl pause`, `resume`, `run-now`, `stop` apply
wherever it runs; storage/postgres/target_flags.py), and reviewers' verdicts through the
database (cluster/reviews.py); the held targets' review queues are published there for
every host to list (cluster/review_queues.py).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import structlog

from autoloop_daemon.cluster.budget import ClusterSharedBudget, settle_remaining
from autoloop_daemon.cluster.member import ClusterMember, LocalTarget, cluster_snapshot
from autoloop_daemon.cluster.review_queues import ReviewQueues
from autoloop_daemon.cluster.reviews import ClusterReviews
from autoloop_daemon.engine.budget import Budget, BudgetWindow
from autoloop_daemon.engine.hosting import Fleet
from autoloop_daemon.engine.records import TargetRecord
from autoloop_daemon.engine.snapshot import ClusterSnapshot
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import CommandRefusedError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.postgres import retention, target_flags
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget
from autoloop_daemon.storage.postgres.membership import ClusterTargetRow
from autoloop_daemon.storage.postgres.store import PostgresStorage
from autoloop_daemon.target_row import TargetRow, blank_state
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.cluster")

SETTLE_AT_EXIT_S = 10.0  # the last settlements' bound at shutdown


@dataclass(frozen=True, slots=True)
class ClusterLink:
    """What this host needs to run as a member of a cluster."""

    db: Database
    storage: PostgresStorage
    host: str
    lease_s: float
    renew_s: float
    retention_days: float = retention.RETENTION_DAYS  # [cluster] reservation_retention_days


class ClusterHosting:
    """The supervisor's targets as this host's share of a cluster (module docstring)."""

    def __init__(self, link: ClusterLink) -> None:
        """Configure the membership; nothing touches the database until `start`."""
        self._link = link
        self._member = ClusterMember(
            link.db,
            link.host,
            lease_s=link.lease_s,
            renew_s=link.renew_s,
            start=self._start_claimed,
            stop=self._stop_for_cluster,
            local=self._local_target,
            apply_flags=self._apply_flags,
            retention_days=link.retention_days,
            apply_reviews=self._sync_reviews,
        )
        self._reviews = ClusterReviews(
            link.db, link.host, self._live_runner, self._holder, self._member.wake
        )
        self._queues = ReviewQueues(
            link.db, link.host, self._member.lease_of, self._live_runner, self._holder
        )
        self._fleet: Fleet | None = None
        self._budget: ClusterSharedBudget | None = None

    @property
    def host(self) -> str | None:
        """This host's id, for the rows of the targets run here."""
        return self._link.host

    @property
    def retired_usd(self) -> float:
        """0: the cluster's budget row holds every host's spending."""
        return 0.0

    @property
    def _attached(self) -> tuple[Fleet, ClusterSharedBudget]:
        assert self._fleet is not None and self._budget is not None, "not attached"
        return self._fleet, self._budget

    def attach(self, fleet: Fleet) -> None:
        """Remember the fleet."""
        self._fleet = fleet

    def make_budget(
        self, cap_usd: float, window: BudgetWindow | None, on_change: Callable[[], None]
    ) -> Budget:
        """The cluster's budget row, reserved under the targets' leases."""
        member = self._member
        self._budget = ClusterSharedBudget(
            ClusterBudget(self._link.db),
            cap_usd,
            lease_of=member.lease_of,
            may_start=lambda: member.keeper.fresh,
            on_lost=lambda name: self._stop_for_cluster(name, TargetStatus.LEASE_LOST),
            on_change=on_change,
            window=window,
            clock=member.keeper.clock.now,  # every host's windows start together
        )
        return self._budget

    # ----------------------------------------------------------------- the run

    async def start(self, specs: Sequence[TargetSpec]) -> list[TargetRunner]:
        """Join: the budget row and this host's row; nothing runs before a claim."""
        budget = self._attached[1]
        await budget.start(budget.cap_usd)
        await self._member.join(specs)
        return []

    async def run(self, targets: Callable[[], Awaitable[None]]) -> None:
        """The budget's and the journal's background work around the targets; then push
        what is left, give every lease back and settle (bounded)."""
        member, budget = self._member, self._attached[1]
        async with anyio.create_task_group() as services:
            services.start_soon(budget.run, member.renew_s)
            services.start_soon(self._push_loop, member.renew_s)
            await targets()
            with anyio.CancelScope(shield=True):
                await self._link.storage.push_waiting()
                await member.leave()
                left = await settle_remaining(budget, SETTLE_AT_EXIT_S)
                if left:
                    log.warning("cluster_settlements_left", left=left)
            services.cancel_scope.cancel()

    async def _push_loop(self, every_s: float) -> None:
        """Push the journal entries a database outage held back, until cancelled."""
        while True:
            await anyio.sleep(every_s)
            await self._link.storage.push_waiting()

    async def serve(self, shutdown: anyio.Event, stay_up: bool) -> None:
        """The member's rounds, until every target is finished or a shutdown is asked."""
        async with anyio.create_task_group() as tg:

            async def stop_at_shutdown() -> None:
                await shutdown.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_at_shutdown)
            await self._member.run(lambda: stay_up)
            if stay_up:  # every target finished: idle until a stop request
                await shutdown.wait()
            tg.cancel_scope.cancel()

    # ----------------------------------------------------------------- the member's callbacks

    async def _start_claimed(self, spec: TargetSpec) -> None:
        """A lease was claimed: prepare and run the target under it."""
        fleet = self._attached[0]
        lease = self._member.lease_of(spec.name)
        if lease is None or not fleet.accepting:
            return
        self._link.storage.hold(lease)
        # The database gone between the claim and the open is no failure of this host: the
        # lease goes back and a later round (here or elsewhere) claims the target again.
        runners = await fleet.prepare([spec], transient=(ClusterError,))
        if not runners:  # cannot start here (locked, corrupt): give the lease back
            await self._member.ended(spec.name, "not_started")
            return
        row = self._member.view.targets.get(spec.name)
        if row is not None:
            await self._apply_extension(runners[0], row)
            try:
                await self._apply_flags(spec.name, row)
            except ClusterError as exc:  # still set on the row: the next round applies them
                log.warning("cluster_flags_unapplied", target=spec.name, error=str(exc))
        fleet.launch(runners[0])
        await self._queues.publish([spec.name])  # replaces what an earlier holder published

    async def _sync_reviews(self, held: list[str]) -> None:
        """Each round: apply the verdicts given elsewhere, then publish changed queues."""
        await self._reviews.apply(held)
        await self._queues.publish(held)

    def _stop_for_cluster(self, name: str, status: TargetStatus) -> None:
        fleet = self._attached[0]
        record = fleet.record(name)
        if record is None or record.runner is None or record.runner.final_status is not None:
            return
        grace = {TargetStatus.LEASE_LOST: 0.0, TargetStatus.HANDED_OVER: math.inf}
        record.runner.request_stop(grace.get(status, fleet.grace_s), status)

    def _local_target(self, name: str) -> LocalTarget | None:
        record = self._attached[0].record(name)
        if record is None:
            return None
        if record.start_error is not None:
            return LocalTarget("not_started", 0, 0.0, running=False)
        runner = record.runner
        if runner is None or runner.final_status is not None:
            return None
        state = runner.state
        return LocalTarget(
            str(state.status), state.iterations_completed, state.total_cost_usd,
            running=runner.phase.counts_as_running,
        )  # fmt: skip

    def _live_runner(self, name: str) -> TargetRunner | None:
        record = self._attached[0].record(name)
        runner = None if record is None else record.runner
        return runner if runner is not None and runner.live else None

    async def _apply_flags(self, name: str, row: ClusterTargetRow) -> None:
        runner = self._live_runner(name)
        if runner is None:
            return
        if runner.state.paused != row.paused:
            await runner.set_paused(row.paused)
        # The flag is taken before the run: the command and a round that read the flag
        # meanwhile both get here, and only the one that cleared it runs it.
        if row.run_now and await target_flags.take_run_now(self._link.db, name):
            runner.run_now()

    async def _apply_extension(self, runner: TargetRunner, row: ClusterTargetRow) -> None:
        """A claimed target takes the cluster's extension (`ctl extend` on any host)."""
        state = runner.state
        more_n = row.extra_iterations - state.extra_iterations
        more_usd = round(row.extra_cost_usd - state.extra_cost_usd, 6)
        if more_n > 0 or more_usd > 0:
            await runner.extend(max(0, more_n), max(0.0, more_usd))

    async def target_ended(self, runner: TargetRunner) -> None:
        """Push its last entries, then mark it finished for every host and give the lease
        back (or, with the database still unreachable, let the lease expire)."""
        name = runner.spec.name
        self._link.storage.drop(name)
        with anyio.CancelScope(shield=True):
            # Its last entries first: a target is never marked finished before the
            # database has the iterations that finished it.
            await self._link.storage.push_waiting()
            if self._link.storage.has_waiting(name):
                # Still unreachable: no renewal, the lease expires; the journal keeps them
                # and the push loop goes on trying.
                self._member.forget(name)
                return
            state = runner.state
            final = LocalTarget(
                str(state.status), state.iterations_completed, state.total_cost_usd, False
            )
            await self._member.ended(name, runner.final_status or TargetStatus.ERROR, final)

    def charge_prepared(self, runner: TargetRunner, accounted_usd: float) -> float:
        """Nothing: the cluster's budget row holds every pushed entry already."""
        return max(accounted_usd, runner.prepared_cost_usd)

    # ----------------------------------------------------------------- operator

    async def _write(self, name: str, update: Awaitable[None]) -> None:
        """An operator's change of `name`'s row (a database error refuses the command in
        one line), then a round soon."""
        try:
            await update
        except ClusterError as exc:
            raise CommandRefusedError(f"{name}: the cluster database refused: {exc}") from exc
        self._member.wake()

    def _holder(self, name: str) -> str | None:
        row = self._member.view.targets.get(name)
        return row.holder if row is not None and row.live else None

    async def command(self, verb: str, name: str) -> str | None:
        """`pause`, `resume`, `run-now`, `stop` for the whole cluster: the flag is set on the
        target's row, and applied by whichever host runs it (at once when it is this one)."""
        db = self._link.db
        if verb in ("pause", "resume"):
            await self._write(name, target_flags.set_flag(db, name, "paused", verb == "pause"))
        elif verb == "run-now":
            await self._write(name, target_flags.set_flag(db, name, "run_now", True))
        else:
            await self._write(name, target_flags.set_flag(db, name, "stopped", True))
        holder = self._holder(name) or "no host yet"
        row = self._member.view.targets.get(name)
        if holder == self._member.host and verb == "stop":
            self._stop_for_cluster(name, TargetStatus.STOPPED_OPERATOR)
        elif holder == self._member.host and row is not None:  # as its next round would
            if verb == "run-now":
                row = replace(row, run_now=True)
            else:
                row = replace(row, paused=verb == "pause")
            await self._write(name, self._apply_flags(name, row))
        done = {"pause": "paused", "resume": "resumed", "run-now": "runs now", "stop": "stopping"}
        return f"{name}: {done[verb]} (cluster-wide; held by {holder})"

    async def reset(self, name: str) -> str | None:
        """For a target this host does not run: clear the operator's stop and the finished
        status, so that a host claims it again (its circuit breaker is reset when it
        starts). None when this host runs it (reset here)."""
        if self._local_target(name) is not None:
            return None
        await self._write(name, target_flags.reset(self._link.db, name))
        return f"{name}: reset cluster-wide; the next host with room claims it"

    async def extend(self, name: str, iterations: int, cost_usd: float) -> str | None:
        """The extension is added on the target's row (it moves with the lease) and its
        finished status and operator stop are cleared, so a host claims it again; the host
        running it applies it at once (this one) or at its next claim."""
        await self._write(name, target_flags.extend(self._link.db, name, iterations, cost_usd))
        added = f"+{iterations} iterations, +${cost_usd:.2f}"
        runner = self._live_runner(name)
        if runner is not None:
            await runner.extend(iterations, cost_usd)
            return f"{name}: limits extended ({added}; cluster-wide, runs here)"
        holder = self._holder(name)
        where = f"held by {holder}" if holder else "the next host with room claims it"
        return f"{name}: limits extended ({added}; cluster-wide, {where})"

    async def review(
        self, name: str, wanted: str | None, verb: str, note: str | None, by: str
    ) -> dict[str, Any] | None:
        """A verdict on a target another host runs goes through the database
        (cluster/reviews.py); one on a target run here is decided here and recorded as
        applied (never None: cluster mode always answers itself)."""
        return await self._reviews.route(name, wanted, verb, note, by)

    async def review_queues(self, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every configured target's queue: from the files when run here, else as its
        holder published it (cluster/review_queues.py)."""
        return await self._queues.listing(local, sorted(self._member.specs))

    async def reconfigure(
        self, targets: Sequence[TargetSpec], start: Sequence[TargetSpec]
    ) -> list[str]:
        """The member's next round registers and claims them; added: those it did not know."""
        added = [s.name for s in start if s.name not in self._member.specs]
        self._member.configure(targets)
        return added

    # ----------------------------------------------------------------- status

    def remote_snapshot(self, name: str, record: TargetRecord) -> TargetRow | None:
        """A target this host does not run, as the cluster's row says (None: no row)."""
        if record.start_error is not None:
            return None
        row = self._member.view.targets.get(name)
        spec = record.spec
        if row is None:
            return None
        holder = row.holder if row.live else None
        phase = "stopped" if row.finished_status or row.stopped else "elsewhere"
        state = blank_state(spec, status=row.finished_status or row.status or "idle")
        state.iterations_completed = row.iterations_completed
        state.total_cost_usd = row.total_cost_usd
        state.paused = row.paused
        return TargetRow.of(
            state, name=name, phase=phase, reason=None, max_iterations=spec.max_iterations,
            max_cost_usd=spec.max_cost_usd, last_weighted_score=None, running_for_s=None,
            state_location=f"cluster row targets/{name}", host=holder,
        )  # fmt: skip

    def cluster_snapshot(self) -> ClusterSnapshot | None:
        """This host's view of every host and the leases each holds."""
        member = self._member
        return cluster_snapshot(member.view, member.host, member.keeper.fresh)
