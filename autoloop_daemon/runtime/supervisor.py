"""The supervisor: every target in one task group, the shared budget, shutdown and reload.

Its lifecycle reads as a table of contents: start (recover every target, READY), run (one
task per target), stop (every target checkpointed, STOPPING, exit code). Its public methods
are the command API that signals, tests and a control channel all call: `snapshot()`,
`request_shutdown()`, `reload()`, `stop_target()`. What happens is published on `events`.
The exit code is 1 when a target ended in `error` or could not start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskGroup

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.exceptions import AutoloopError, ConfigError, UnknownTargetError
from autoloop_daemon.exit_codes import EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.reload import Known, plan_reload
from autoloop_daemon.runtime import events as ev
from autoloop_daemon.runtime.budget import SharedBudget
from autoloop_daemon.runtime.snapshot import (
    BudgetSnapshot,
    FleetSnapshot,
    TargetSnapshot,
    count_phases,
    status_line,
)
from autoloop_daemon.runtime.target import TargetRunner
from autoloop_daemon.storage.base import Storage
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.supervisor")


@dataclass(frozen=True, slots=True)
class ReloadedConfig:
    """What a reload yields: the targets and the supervisor-wide limits."""

    targets: tuple[TargetSpec, ...]
    budget_cap_usd: float
    max_concurrent: int
    grace_s: float


Reloader = Callable[[], ReloadedConfig]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did, or why it was refused (`error`)."""

    ok: bool
    error: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


@dataclass(slots=True)
class TargetRecord:
    """Everything the supervisor knows of one target."""

    spec: TargetSpec
    runner: TargetRunner | None = None
    start_error: str | None = None
    result: str | None = None  # the final status once its cycle has ended
    accounted_usd: float = 0.0  # logged spending the budget already holds
    restart_spec: TargetSpec | None = None  # run again once the current cycle ends


@dataclass(slots=True)
class _Shutdown:
    requests: int = 0
    reasons: list[str] = field(default_factory=list)


class Supervisor:
    """Runs many targets concurrently under one budget until none can run any more."""

    def __init__(
        self,
        targets: Sequence[TargetSpec],
        *,
        storage: Storage,
        budget_cap_usd: float,
        max_concurrent: int,
        grace_s: float,
        reloader: Reloader | None = None,
        events: ev.EventBus | None = None,
        one_shot: bool = False,
        strict: bool = False,
    ) -> None:
        """Configure; nothing starts until `run()`.

        `strict` makes a target that cannot start (locked, corrupt state) fail the whole run
        with its error (the one-target command line); otherwise it is reported and skipped.
        """
        self._initial = tuple(targets)
        self._storage = storage
        self._grace_s = grace_s
        self._reloader = reloader
        self.events = events or ev.EventBus()
        self._one_shot = one_shot
        self._strict = strict
        self._records: dict[str, TargetRecord] = {}
        self._budget = SharedBudget(budget_cap_usd)
        self._slots = anyio.CapacityLimiter(max_concurrent)
        self._targets_tg: TaskGroup | None = None
        self._shutdown = _Shutdown()
        self._reload_lock = anyio.Lock()
        self._ready = False
        self._reload_before_ready = False
        self._started_at = to_iso(now_utc())
        self._retired: dict[str, float] = {}  # state roots no longer configured -> spent

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        """Run until every target has stopped; returns the process exit code."""
        self._storage.acquire()  # StateLockedError / StateWriteError if it cannot
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            # A strict start-up error (locked, corrupt state) is raised inside the task group,
            # which wraps it: raise it bare so the command line maps it to its exit code.
            matched, rest = group.split(AutoloopError)
            if matched is None or rest is not None:
                raise
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            self._storage.release()

    async def _run(self) -> int:
        runners = await self._prepare_all(self._initial)
        self._retired = await self._storage.spent_elsewhere(r.spec.state_root for r in runners)
        if self._retired:
            self._budget.charge(sum(self._retired.values()))
            log.info(
                "retired_spending_charged",
                state_roots=len(self._retired),
                spent_usd=round(sum(self._retired.values()), 6),
            )
        await self._remember_spending()
        self._ready = True
        self.events.publish(
            ev.DaemonReady(
                targets=len(runners),
                failed=len(self._failed_to_start()),
                spent_usd=self._budget.spent_usd,
                cap_usd=self._budget.cap_usd,
            )
        )
        async with anyio.create_task_group() as targets_tg:
            self._targets_tg = targets_tg
            for runner in runners:
                targets_tg.start_soon(self._run_target, runner)
            if self._reload_before_ready:
                targets_tg.start_soon(self.reload)
        self._targets_tg = None
        with anyio.CancelScope(shield=True):
            await self._remember_spending()
        errors = tuple(
            sorted(n for n, r in self._records.items() if r.result == TargetStatus.ERROR)
        )
        failed = self._failed_to_start()
        self.events.publish(
            ev.DaemonStopped(len(self._records), errors, failed, self._budget.spent_usd)
        )
        return EXIT_TARGET_ERROR if errors or failed else EXIT_OK

    async def _remember_spending(self) -> None:
        """Record every running target's state root and spending in the storage's registry."""
        spent = {
            r.runner.spec.state_root: r.runner.state.total_cost_usd
            for r in self._records.values()
            if r.runner is not None
        }
        try:
            await self._storage.remember(spent)
        except (OSError, AutoloopError) as exc:
            log.warning("spending_registry_not_written", error=str(exc))

    def _failed_to_start(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, r in self._records.items() if r.start_error is not None))

    async def _prepare_all(self, specs: Sequence[TargetSpec]) -> list[TargetRunner]:
        prepared: list[TargetRunner] = []
        strict_error: list[AutoloopError] = []

        async def prepare(spec: TargetSpec) -> None:
            record = self._records.setdefault(spec.name, TargetRecord(spec))
            record.spec = spec
            runner = TargetRunner(
                spec,
                store=self._storage.target(spec),
                budget=self._budget,
                slots=self._slots,
                events=self.events,
                one_shot=self._one_shot,
            )
            try:
                await runner.prepare()
            except AutoloopError as exc:
                if self._strict:
                    strict_error.append(exc)
                    return
                record.start_error, record.runner = str(exc), None
                self.events.publish(ev.TargetNotStarted(spec.name, str(exc)))
                return
            record.start_error, record.result, record.runner = None, None, runner
            # A state root counted as retired at start (its target was renamed or removed, and
            # is back): its spending is already charged.
            retired = self._retired.pop(str(spec.state_root), 0.0)
            record.accounted_usd = max(record.accounted_usd, retired)
            self._charge_prepared(record, runner)
            prepared.append(runner)
            if self._shutdown.requests:  # a stop arrived while this target was being prepared
                runner.request_stop(self._grace_s)

        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(prepare, spec)
        if strict_error:
            raise strict_error[0]
        return sorted(prepared, key=lambda r: r.spec.name)

    def _charge_prepared(self, record: TargetRecord, runner: TargetRunner) -> None:
        """Charge the budget what the target's log holds beyond what it already knows."""
        self._budget.charge(max(0.0, runner.prepared_cost_usd - record.accounted_usd))
        record.accounted_usd = max(record.accounted_usd, runner.prepared_cost_usd)

    async def _run_target(self, runner: TargetRunner) -> None:
        name = runner.spec.name
        try:
            status = await runner.run()
        except Exception:  # a bug in one target must not stop the others
            log.exception("target_crashed", target=name)
            status = TargetStatus.ERROR
        record = self._records[name]
        record.result = status
        record.accounted_usd = runner.state.total_cost_usd
        restart, record.restart_spec = record.restart_spec, None
        if restart is not None and not self._shutdown.requests and self._targets_tg is not None:
            for again in await self._prepare_all([restart]):
                self._targets_tg.start_soon(self._run_target, again)

    # ----------------------------------------------------------------- commands

    def request_shutdown(self, reason: str) -> None:
        """Stop gracefully; a second request skips the grace period."""
        self._shutdown.requests += 1
        self._shutdown.reasons.append(reason)
        runners = [r.runner for r in self._records.values() if r.runner is not None]
        running = tuple(sorted(r.spec.name for r in runners if r.phase == "running"))
        if self._shutdown.requests == 1:
            self.events.publish(ev.ShutdownRequested(reason, self._grace_s, running))
            for runner in runners:
                runner.request_stop(self._grace_s)
        else:
            self.events.publish(ev.ShutdownForced(reason, running))
            for runner in runners:
                runner.force_stop()

    @property
    def shutdown_requests(self) -> int:
        """How many stop requests arrived (0: running normally)."""
        return self._shutdown.requests

    def stop_target(self, name: str) -> None:
        """Stop one target gracefully (`stopped_signal`); UnknownTargetError if unknown."""
        record = self._records.get(name)
        if record is None:
            raise UnknownTargetError(f"no target named {name!r}")
        if record.runner is not None:
            record.runner.request_stop(self._grace_s)

    async def reload(self) -> ReloadReport:
        """Read the configuration again and apply it; reloads run one at a time.

        Before READY the reload is remembered and applied right after it.
        """
        if self._reloader is None:
            return ReloadReport(ok=False, error="no configuration file to reload")
        if not self._ready:
            self._reload_before_ready = True
            return ReloadReport(ok=True)
        async with self._reload_lock:
            if self._shutdown.requests:
                return ReloadReport(ok=False, error="shutting down")
            self.events.publish(ev.ReloadStarted())
            try:
                new = await anyio.to_thread.run_sync(self._reloader)
            except ConfigError as exc:
                self.events.publish(ev.ReloadFailed(str(exc)))
                return ReloadReport(ok=False, error=str(exc))
            report = await self._apply(new)
            self.events.publish(
                ev.ConfigReloaded(report.added, report.removed, report.changed, new.budget_cap_usd)
            )
            return report

    async def _apply(self, new: ReloadedConfig) -> ReloadReport:
        known = {
            name: Known(
                r.runner.spec, r.runner.latest_spec, r.runner.final_status, r.runner.stop_status
            )
            for name, r in self._records.items()
            if r.runner is not None
        }
        wanted = {t.name: t for t in new.targets}
        for name in [n for n, r in self._records.items() if r.runner is None and n not in wanted]:
            del self._records[name]  # failed to start and gone from the config
        plan = plan_reload(known, wanted, new.budget_cap_usd > self._budget.cap_usd)
        for name in plan.forget:
            self._records[name].runner = None
        for name in plan.stop:
            runner = self._records[name].runner
            assert runner is not None
            runner.request_stop(self._grace_s, TargetStatus.STOPPED_REMOVED)
        for name, spec in plan.change.items():
            runner = self._records[name].runner
            assert runner is not None
            runner.update_spec(spec)
        for name, spec in plan.restart_when_done.items():
            self._records[name].restart_spec = spec
        for name in plan.root_ignored:
            log.warning(
                "reload_state_root_ignored",
                target=name,
                hint="a new state_root takes effect after a restart",
            )
        start = plan.start
        self._budget.set_cap(new.budget_cap_usd)
        self._slots.total_tokens = new.max_concurrent
        self._grace_s = new.grace_s
        added = []
        for runner in await self._prepare_all(start):
            added.append(runner.spec.name)
            if self._targets_tg is not None:
                self._targets_tg.start_soon(self._run_target, runner)
        for name in plan.forget:
            if self._records[name].runner is None and name not in wanted:
                del self._records[name]
        return ReloadReport(
            ok=True,
            added=tuple(sorted(added)),
            removed=tuple(sorted(plan.stop)),
            changed=tuple(sorted(plan.change)),
        )

    # ----------------------------------------------------------------- snapshot

    def status_line(self) -> str:
        """The one-line summary (systemd's STATUS=), without building a whole snapshot."""
        phases = count_phases(
            r.runner.phase if r.runner is not None else "not_started"
            for r in self._records.values()
        )
        return status_line(phases, self._budget.spent_usd, self._budget.cap_usd)

    def snapshot(self) -> FleetSnapshot:
        """The daemon and every target now."""
        now = time.monotonic()
        targets = [self._target_snapshot(name, r, now) for name, r in sorted(self._records.items())]
        cap = self._budget.cap_usd
        return FleetSnapshot(
            pid=os.getpid(),
            started_at=self._started_at,
            ready=self._ready,
            shutting_down=self._shutdown.requests > 0,
            budget=BudgetSnapshot(
                spent_usd=round(self._budget.spent_usd, 6),
                reserved_usd=round(self._budget.ledger.reserved_usd, 6),
                retired_usd=round(sum(self._retired.values()), 6),
                cap_usd=cap if cap != float("inf") else None,
            ),
            targets=tuple(targets),
        )

    @staticmethod
    def _target_snapshot(name: str, record: TargetRecord, now: float) -> TargetSnapshot:
        runner = record.runner
        if runner is None:
            spec = record.spec
            return TargetSnapshot(
                target=name, status="not_started", phase="not_started", reason=record.start_error,
                iterations_completed=0, max_iterations=spec.max_iterations, total_cost_usd=0.0,
                max_cost_usd=spec.max_cost_usd, best_weighted_score=None,
                last_weighted_score=None, last_decision=None, consecutive_errors=0,
                next_run_at=None, running_iteration=None, running_for_s=None,
                state_location=str(spec.state_root),
            )  # fmt: skip
        state = runner.state
        since = runner.running_since
        return TargetSnapshot(
            target=name,
            status=str(state.status),
            phase=runner.phase,
            reason=runner.describe(runner.final_status) if runner.final_status else None,
            iterations_completed=state.iterations_completed,
            max_iterations=runner.spec.max_iterations,
            total_cost_usd=round(state.total_cost_usd, 6),
            max_cost_usd=runner.spec.max_cost_usd,
            best_weighted_score=state.best_weighted_score,
            last_weighted_score=runner.progress.last_score,
            last_decision=state.last_decision,
            consecutive_errors=state.consecutive_errors,
            next_run_at=state.next_run_at,
            running_iteration=state.in_flight.iteration if state.in_flight else None,
            running_for_s=None if since is None else round(now - since, 3),
            state_location=runner.location,
        )
