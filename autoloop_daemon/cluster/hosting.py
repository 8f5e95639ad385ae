"""The supervisor in cluster mode: targets run when this host claims their lease.

`ClusterHosting` sits in the supervisor chain (`SupervisorBase` -> `ClusterHosting` ->
`FleetCommands` -> ...). Without a cluster it changes nothing. With one, `_run_cluster`
replaces the single-host start: the budget is the cluster's (cluster/budget.py),
no target is prepared up front, and the member's rounds (cluster/member.py) claim leases
and start the targets, stop those whose lease was lost, and give the leases back when the
targets end. The operator's commands on a target held by another host go through the
cluster's row (`ctl pause`, `resume`, `run-now`, `stop` apply wherever it runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import structlog

from autoloop_daemon.cluster.budget import ClusterSharedBudget, settle_remaining
from autoloop_daemon.cluster.member import ClusterMember, LocalTarget, TargetRow
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.snapshot import ClusterSnapshot, TargetSnapshot
from autoloop_daemon.engine.supervisor_base import SupervisorBase, TargetRecord
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import CommandRefusedError, UnknownTargetError
from autoloop_daemon.exit_codes import EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.ledger import ClusterBudget, money
from autoloop_daemon.storage.postgres.store import PostgresStorage
from autoloop_daemon.target_row import blank_state
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.cluster")

SETTLE_AT_EXIT_S = 10.0  # the last settlements' bound at shutdown


@dataclass(frozen=True, slots=True)
class ClusterLink:
    """What the supervisor needs to run as a member of a cluster."""

    db: Database
    storage: PostgresStorage
    host: str
    lease_s: float
    renew_s: float


class ClusterHosting(SupervisorBase):
    """Cluster mode's part of the supervisor (see the module docstring)."""

    def __init__(
        self, targets: Sequence[TargetSpec], *, cluster: ClusterLink | None = None, **kwargs: Any
    ) -> None:
        """As `SupervisorBase`; with `cluster`, run as a member of that cluster."""
        super().__init__(targets, **kwargs)
        self._member: ClusterMember | None = None
        if cluster is not None:
            self._join_cluster(cluster)

    def _join_cluster(self, link: ClusterLink) -> None:
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
        )
        member = self._member
        self._budget = ClusterSharedBudget(
            ClusterBudget(link.db),
            self._budget.cap_usd,
            lease_of=member.lease_of,
            may_start=lambda: member.keeper.fresh,
            on_lost=lambda name: self._stop_for_cluster(name, TargetStatus.LEASE_LOST),
            on_change=self._budget_changed,
            window=self._budget.window,
        )

    @property
    def cluster(self) -> ClusterMember | None:
        """This host's membership (None in single-host mode)."""
        return self._member

    # ----------------------------------------------------------------- the run

    async def _run_cluster(self) -> int:
        member, budget = self._member, self._budget
        assert member is not None and isinstance(budget, ClusterSharedBudget)
        await budget.start(budget.cap_usd)
        await member.join(self._initial)
        for spec in self._initial:
            self._records.setdefault(spec.name, TargetRecord(spec))
        self._ready = True
        self.events.publish(
            ev.DaemonReady(
                targets=len(self._initial),
                failed=0,
                spent_usd=budget.spent_usd,
                cap_usd=budget.cap_usd,
            )
        )
        async with anyio.create_task_group() as services:
            services.start_soon(budget.run, member.renew_s)
            services.start_soon(self._push_loop, member.renew_s)
            async with anyio.create_task_group() as targets_tg:
                self._targets_tg = targets_tg
                targets_tg.start_soon(self._rounds)
                if self._reload_before_ready:
                    targets_tg.start_soon(self._reload_after_ready)
            self._targets_tg = None
            with anyio.CancelScope(shield=True):
                await self._link.storage.push_waiting()
                await member.leave()
                left = await settle_remaining(budget, SETTLE_AT_EXIT_S)
                if left:
                    log.warning("cluster_settlements_left", left=left)
            services.cancel_scope.cancel()
        errors = tuple(
            sorted(n for n, r in self._records.items() if r.result == TargetStatus.ERROR)
        )
        failed = self._failed_to_start()
        self.events.publish(ev.DaemonStopped(len(self._records), errors, failed, budget.spent_usd))
        return EXIT_TARGET_ERROR if errors or failed else EXIT_OK

    async def _reload_after_ready(self) -> None:
        """A reload asked for before READY (the supervisor's `reload`)."""
        raise NotImplementedError  # Reloading overrides it

    def _record(self, name: str) -> TargetRecord:
        """The target's record; UnknownTargetError if there is none."""
        record = self._records.get(name)
        if record is None:
            raise UnknownTargetError(f"no target named {name!r}")
        return record

    async def _push_loop(self, every_s: float) -> None:
        """Push the journal entries a database outage held back, until cancelled."""
        while True:
            await anyio.sleep(every_s)
            await self._link.storage.push_waiting()

    async def _rounds(self) -> None:
        """The member's rounds, until every target is finished or a shutdown is asked."""
        assert self._member is not None and self._shutdown_event is not None
        shutdown = self._shutdown_event
        async with anyio.create_task_group() as tg:

            async def stop_at_shutdown() -> None:
                await shutdown.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_at_shutdown)
            await self._member.run(lambda: self._stay_up)
            if self._stay_up:  # every target finished: idle until a stop request
                await shutdown.wait()
            tg.cancel_scope.cancel()

    # ----------------------------------------------------------------- callbacks

    async def _start_claimed(self, spec: TargetSpec) -> None:
        """A lease was claimed: prepare and run the target under it."""
        assert self._member is not None
        lease = self._member.lease_of(spec.name)
        if lease is None or self._shutdown.requests or self._targets_tg is None:
            return
        self._link.storage.hold(lease)
        runners = await self._prepare_all([spec])
        if not runners:  # cannot start here (locked, corrupt): give the lease back
            await self._member.ended(spec.name, "not_started")
            return
        row = self._member.view.targets.get(spec.name)
        if row is not None:
            await self._apply_extension(runners[0], row)
            await self._apply_flags(spec.name, row)
        self._targets_tg.start_soon(self._run_target, runners[0])

    def _stop_for_cluster(self, name: str, status: TargetStatus) -> None:
        record = self._records.get(name)
        if record is None or record.runner is None or record.runner.final_status is not None:
            return
        grace = {TargetStatus.LEASE_LOST: 0.0, TargetStatus.HANDED_OVER: math.inf}
        record.runner.request_stop(grace.get(status, self._grace_s), status)

    def _local_target(self, name: str) -> LocalTarget | None:
        record = self._records.get(name)
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
            running=runner.phase in ("running", "starting"),
        )  # fmt: skip

    async def _apply_flags(self, name: str, row: TargetRow) -> None:
        runner = self._records[name].runner if name in self._records else None
        if runner is None or runner.final_status is not None or runner.stopping:
            return
        if runner.state.paused != row.paused:
            await runner.set_paused(row.paused)
        if row.run_now:
            runner.run_now()
            await self._set_flag(name, "run_now", False)

    async def _run_target(self, runner: TargetRunner) -> None:
        await super()._run_target(runner)
        if self._member is not None:
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

    def _charge_prepared(self, record: TargetRecord, runner: TargetRunner) -> None:
        if self._member is None:
            super()._charge_prepared(record, runner)
        else:  # the cluster's budget row holds every pushed entry already
            record.accounted_usd = max(record.accounted_usd, runner.prepared_cost_usd)

    # ----------------------------------------------------------------- operator

    async def _update_row(self, name: str, assignments: str, params: tuple[Any, ...]) -> None:
        """`UPDATE targets SET <assignments>` on `name`'s row for an operator's command
        (a database error refuses the command in one line), then a round soon."""
        assert self._member is not None

        async def work(conn: Any) -> None:
            await conn.execute(
                f"UPDATE targets SET {assignments} WHERE name = %s",  # our own SQL text
                (*params, name),
            )

        try:
            await self._member.db.run(work)
        except ClusterError as exc:
            raise CommandRefusedError(f"{name}: the cluster database refused: {exc}") from exc
        self._member.wake()

    async def _set_flag(self, name: str, flag: str, value: bool) -> None:
        assert flag in ("paused", "run_now", "stopped")
        await self._update_row(name, f"{flag} = %s", (value,))

    def _holder(self, name: str) -> str | None:
        assert self._member is not None
        row = self._member.view.targets.get(name)
        return row.holder if row is not None and row.live else None

    async def cluster_command(self, verb: str, name: str) -> str | None:
        """`pause`, `resume`, `run-now`, `stop` for the whole cluster: the flag is set on the
        target's row, and applied by whichever host runs it (at once when it is this one).
        None in single-host mode (the caller acts locally)."""
        if self._member is None:
            return None
        self._record(name)  # UnknownTargetError
        if verb in ("pause", "resume"):
            await self._set_flag(name, "paused", verb == "pause")
        elif verb == "run-now":
            await self._set_flag(name, "run_now", True)
        else:
            await self._set_flag(name, "stopped", True)
        holder = self._holder(name) or "no host yet"
        row = self._member.view.targets.get(name)
        if holder == self._member.host and verb == "stop":
            self._stop_for_cluster(name, TargetStatus.STOPPED_SIGNAL)
        elif holder == self._member.host and row is not None:  # as its next round would
            if verb == "run-now":
                row = replace(row, run_now=True)
            else:
                row = replace(row, paused=verb == "pause")
            await self._apply_flags(name, row)
        done = {"pause": "paused", "resume": "resumed", "run-now": "runs now", "stop": "stopping"}
        return f"{name}: {done[verb]} (cluster-wide; held by {holder})"

    async def cluster_reset(self, name: str) -> str | None:
        """`reset` in cluster mode for a target this host does not run: clear the
        operator's stop and the finished status, so that a host claims it again (its
        circuit breaker is reset when it starts). None when this host runs it, or without
        a cluster (the caller acts locally)."""
        if self._member is None or self._local_target(name) is not None:
            return None
        self._record(name)

        await self._update_row(
            name, "stopped = false, finished_status = NULL, finished_limits = NULL", ()
        )
        return f"{name}: reset cluster-wide; the next host with room claims it"

    async def cluster_extend(self, name: str, iterations: int, cost_usd: float) -> str | None:
        """`extend` in cluster mode: the extension is added on the target's row (it moves
        with the lease) and its finished status and operator stop are cleared, so a host
        claims it again; the host running it applies it at once (this one) or at its next
        claim. None without a cluster (the caller acts locally)."""
        if self._member is None:
            return None
        self._record(name)

        await self._update_row(
            name,
            """extra_iterations = extra_iterations + %s, extra_cost_usd = extra_cost_usd + %s,
               finished_status = NULL, finished_limits = NULL, stopped = false""",
            (iterations, money(cost_usd)),
        )
        added = f"+{iterations} iterations, +${cost_usd:.2f}"
        runner = self._records[name].runner
        if runner is not None and runner.final_status is None and not runner.stopping:
            await runner.extend(iterations, cost_usd)
            return f"{name}: limits extended ({added}; cluster-wide, runs here)"
        holder = self._holder(name)
        where = f"held by {holder}" if holder else "the next host with room claims it"
        return f"{name}: limits extended ({added}; cluster-wide, {where})"

    async def _apply_extension(self, runner: TargetRunner, row: TargetRow) -> None:
        """A claimed target takes the cluster's extension (`ctl extend` on any host)."""
        state = runner.state
        more_n = row.extra_iterations - state.extra_iterations
        more_usd = round(row.extra_cost_usd - state.extra_cost_usd, 6)
        if more_n > 0 or more_usd > 0:
            await runner.extend(max(0, more_n), max(0.0, more_usd))

    # ----------------------------------------------------------------- status

    def _remote_snapshot(self, name: str, record: TargetRecord) -> TargetSnapshot | None:
        """A target this host does not run, as the cluster's row says (None: no row)."""
        if self._member is None or record.start_error is not None:
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
        return TargetSnapshot.of(
            state, name=name, phase=phase, reason=None, max_iterations=spec.max_iterations,
            max_cost_usd=spec.max_cost_usd, last_weighted_score=None, running_for_s=None,
            state_location=f"cluster row targets/{name}", host=holder,
        )  # fmt: skip

    def _cluster_snapshot(self) -> ClusterSnapshot | None:
        member = self._member
        if member is None:
            return None
        return member.view.snapshot(member.host, member.keeper.fresh)
