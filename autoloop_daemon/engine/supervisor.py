"""The supervisor: every target in one task group, the shared budget, shutdown and reload.

Its lifecycle reads as a table of contents: start (READY=1, then the hosting takes up the
configured targets), run (one task per target, among the hosting's services), stop (every
target checkpointed, STOPPING, exit code). Where targets run is its `Hosting`
(engine/hosting.py), chosen by the composition root; the operator's verbs are
`Commands(supervisor)` (engine/commands.py). Signals, systemd, metrics, the control channel
and tests call `snapshot()`, `target_rows()`, `status_line()`, `request_shutdown()`,
`reload()` and `stop_target()`. What happens is published on `events`. The exit code is 1
when a target ended in `error` or could not start."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import BudgetWindow
from autoloop_daemon.engine.fan_out import each_at_most
from autoloop_daemon.engine.hosting import Hosting, LocalHosting
from autoloop_daemon.engine.parking import Parking
from autoloop_daemon.engine.records import ReloadedConfig, Reloader, ReloadReport, TargetRecord
from autoloop_daemon.engine.reload import apply_to_runners, apply_window, plan_for
from autoloop_daemon.engine.reload_queue import ReloadQueue
from autoloop_daemon.engine.snapshot import (
    FleetSnapshot,
    budget_snapshot,
    count_phases,
    set_apart_queued,
    status_line,
)
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import AutoloopError, ConfigError, UnknownTargetError
from autoloop_daemon.exit_codes import EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs.process import kill_running_groups
from autoloop_daemon.storage.base import Storage
from autoloop_daemon.target_row import TargetRow, not_started_row, row_json
from autoloop_daemon.vocab import Phase, TargetStatus

log = structlog.get_logger("autoloopd.supervisor")
# Targets prepared at once: enough to fill a storage's start-up load batch (the files
# backend's holds 128), few enough to bound what they hold meanwhile. Each holds its
# loaded files until it is checkpointed: with 512, a warm fleet of 1,000 targets with full
# histories peaked at 98 MB before its first run, with 128 at 74 (bench/README.md).
PREPARE_AT_ONCE = 128


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
        hosting: Hosting | None = None,
        reloader: Reloader | None = None,
        events: ev.EventBus | None = None,
        one_shot: bool = False,
        strict: bool = False,
        stay_up: bool = False,
        window: BudgetWindow | None = None,
        allocation: str = "fcfs",
    ) -> None:
        """Configure; nothing starts until `run()`.

        `hosting` is where the targets run (default: all of them here, `LocalHosting`).
        `stay_up` keeps the daemon running (idle, reloadable, controllable) after every
        target has stopped, until a shutdown request (`daemon.exit_when_idle`).

        `budget_cap_usd` is the lifetime cap; `window` adds a cap per budget window.
        `allocation` "gain_per_usd" hands concurrency slots out by estimated gain per
        dollar (engine/admission.py) instead of first come first served.

        `strict` makes a target that cannot start (locked, corrupt state) fail the whole run
        with its error (the one-target command line); otherwise it is reported and skipped."""
        self._initial = tuple(targets)
        self._storage = storage
        self._grace_s = grace_s
        self._reloader = reloader
        self.events = events or ev.EventBus()
        self._one_shot = one_shot
        self._strict = strict
        self._stay_up = stay_up
        self._records: dict[str, TargetRecord] = {}
        self.hosting: Hosting = hosting or LocalHosting()
        self.hosting.attach(self)
        self._budget = self.hosting.make_budget(budget_cap_usd, window, self._budget_changed)
        self._slots = RankedSlots(max_concurrent, fair_turns=allocation != "gain_per_usd")
        self._targets_tg: TaskGroup | None = None
        self._parking = Parking(functools.partial(self._run_target, resume=True))
        self._shutdown_requests = 0
        self._shutdown_event: anyio.Event | None = None
        self._reloads = ReloadQueue(self._reload_now)
        self._ready = False
        self._reload_before_ready = False
        self._started_at = to_iso(now_utc())

    # ----------------------------------------------------------------- lifecycle

    async def run(self, after_lock: Callable[[], Awaitable[object]] | None = None) -> int:
        """Run until every target has stopped; returns the process exit code.

        `after_lock` runs once the storage is owned, before any target is prepared (the
        control server binds its socket there, so a second daemon is told who holds the lock)."""
        self._storage.acquire()  # StateLockedError / StateWriteError if it cannot
        try:
            if after_lock is not None:
                await after_lock()
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
        self._shutdown_event = anyio.Event()
        if self._shutdown_requests:
            self._shutdown_event.set()
        runners = await self._start()
        await self.hosting.run(lambda: self._run_targets(runners))
        return self._stop()

    async def _start(self) -> list[TargetRunner]:
        """Every configured target recorded, its state root owned (READY=1 then) and taken
        up by the hosting; READY."""
        for spec in self._initial:
            self._records.setdefault(spec.name, TargetRecord(spec))
        await self._storage.lock_roots(self._initial)
        self.events.publish(ev.TargetsLoading(len(self._records)))  # READY=1: loading is slow
        runners = await self.hosting.start(self._initial)
        self._ready = True
        failed, budget = len(self._failed_to_start()), self._budget
        targets = len(self._records) - failed
        self.events.publish(ev.DaemonReady(targets, failed, budget.spent_usd, budget.cap_usd))
        return runners

    async def _run_targets(self, runners: list[TargetRunner]) -> None:
        """One task per target (and the hosting's own) until every one has ended."""
        assert self._shutdown_event is not None
        async with anyio.create_task_group() as targets_tg:
            self._targets_tg = targets_tg
            self._parking.open(targets_tg)
            for runner in runners:
                self.launch(runner)
            targets_tg.start_soon(self.hosting.serve, self._shutdown_event, self._stay_up)
            if self._reload_before_ready:
                targets_tg.start_soon(self.reload)
        self._targets_tg = None

    def _stop(self) -> int:
        """STOPPING, and the exit code."""
        records = self._records.items()
        errors = tuple(sorted(n for n, r in records if r.result == TargetStatus.ERROR))
        failed = self._failed_to_start()
        self.events.publish(
            ev.DaemonStopped(len(self._records), errors, failed, self._budget.spent_usd)
        )
        return EXIT_TARGET_ERROR if errors or failed else EXIT_OK

    def _failed_to_start(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, r in self._records.items() if r.start_error is not None))

    # ----------------------------------------------------------------- targets (the Fleet)

    @property
    def grace_s(self) -> float:
        """The shutdown grace period a graceful stop gives a running iteration."""
        return self._grace_s

    @property
    def loading(self) -> bool:
        """True at start-up while the targets' states load (READY=1 came before)."""
        return not self._ready

    @property
    def accepting(self) -> bool:
        """True while targets may start: the run is under way and no shutdown was asked."""
        return not self._shutdown_requests and self._targets_tg is not None

    @property
    def storage(self) -> Storage:
        """Where the targets' states and logs live."""
        return self._storage

    def record(self, name: str) -> TargetRecord | None:
        """The target's record (None: no such target)."""
        return self._records.get(name)

    def runners(self) -> list[TargetRunner]:
        """Every target's current runner (targets that never started have none)."""
        return [r.runner for r in self._records.values() if r.runner is not None]

    async def prepare(
        self, specs: Sequence[TargetSpec], *, transient: tuple[type[Exception], ...] = ()
    ) -> list[TargetRunner]:
        """Prepare `specs` concurrently; the runners of those that could start, by name. One
        that cannot is reported (`TargetNotStarted`), or with `strict` raises its error; one
        whose error is `transient` (the cluster's database gone for a moment) is logged and
        counts as no failure (the caller tries again later)."""
        prepared: list[TargetRunner] = []
        strict_error: list[AutoloopError] = []

        async def prepare(spec: TargetSpec) -> None:
            record = self._records.setdefault(spec.name, TargetRecord(spec))
            record.spec = spec
            if self._shutdown_requests:  # stopped while loading: the rest stay as they are
                return
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
                if isinstance(exc, transient):
                    log.warning("target_start_deferred", target=spec.name, error=str(exc))
                    return
                record.start_error, record.runner = str(exc), None
                self.events.publish(ev.TargetNotStarted(spec.name, str(exc)))
                return
            record.start_error, record.result, record.runner = None, None, runner
            record.accounted_usd = self.hosting.charge_prepared(runner, record.accounted_usd)
            prepared.append(runner)
            if self._shutdown_requests:  # a stop arrived while this target was being prepared
                runner.request_stop(self._grace_s)

        await each_at_most(PREPARE_AT_ONCE, specs, prepare)
        if strict_error:
            raise strict_error[0]
        return sorted(prepared, key=lambda r: r.spec.name)

    def launch(self, runner: TargetRunner) -> bool:
        """Run a prepared runner in the targets' task group; False once that has closed."""
        if self._targets_tg is None:
            return False
        # Named by its target: the task shows it, and anyio makes no name string of its own
        # (`module.qualname`, ~100 B a target).
        self._targets_tg.start_soon(self._run_target, runner, name=runner.spec.name)
        return True

    async def _run_target(self, runner: TargetRunner, *, resume: bool = False) -> None:
        name = runner.spec.name
        status: str | None
        try:
            status = await runner.run(self._parking.park, resume=resume)
        except Exception:  # a bug in one target must not stop the others
            log.exception("target_crashed", target=name)
            status = TargetStatus.ERROR
        if status is None:
            return  # parked: a new task goes on once it has its slot (engine/parking.py)
        record = self._records[name]
        if record.runner is runner:  # else replaced by `reset` or `extend` while finishing
            record.result = status
            record.accounted_usd = runner.state.total_cost_usd
            restart, record.restart_spec = record.restart_spec, None
            if restart is not None and self.accepting:
                for again in await self.prepare([restart]):
                    self.launch(again)
        await self.hosting.target_ended(runner)

    def _budget_changed(self) -> None:
        b = self._budget.ledger
        changed = (b.spent_usd, b.reserved_usd, b.cap_usd, b.window)
        self.events.publish(ev.BudgetChanged(*changed, b.window_spent_usd, b.window_cap_usd))

    # ----------------------------------------------------------------- shutdown and stop

    def request_shutdown(self, reason: str) -> None:
        """Stop gracefully; a second request skips the grace period; a third SIGKILLs every
        running orchestrator's process group at once."""
        self._shutdown_requests += 1
        if self._shutdown_event is not None:
            self._shutdown_event.set()
        runners = self.runners()
        running = tuple(sorted(r.spec.name for r in runners if r.phase == Phase.RUNNING))
        if self._shutdown_requests == 1:
            self.events.publish(ev.ShutdownRequested(reason, self._grace_s, running))
            for runner in runners:
                runner.request_stop(self._grace_s)
        elif self._shutdown_requests == 2:
            self.events.publish(ev.ShutdownForced(reason, running))
            for runner in runners:
                runner.force_stop()
        else:  # the third: no more waiting for anything
            for runner in runners:
                runner.force_stop()
            groups = kill_running_groups()
            self.events.publish(ev.ShutdownKilled(reason, tuple(groups)))

    def stop_target(self, name: str, status: TargetStatus = TargetStatus.STOPPED_SIGNAL) -> None:
        """Stop one target gracefully (with `status`); UnknownTargetError if unknown."""
        record = self._records.get(name)
        if record is None:
            raise UnknownTargetError(f"no target named {name!r}")
        if record.runner is not None:
            record.runner.request_stop(self._grace_s, status)

    # ----------------------------------------------------------------- reload

    async def reload(self) -> ReloadReport:
        """Read the configuration again and apply it; reloads run one at a time. While the
        states load (start-up) it is remembered and applied right after."""
        if self._reloader is None:
            return ReloadReport(ok=False, error="no configuration file to reload")
        if not self._ready:
            self._reload_before_ready = True
            return ReloadReport(ok=True)
        return await self._reloads.request()  # coalesced: engine/reload_queue.py

    async def _reload_now(self) -> ReloadReport:
        """One reload (ReloadQueue runs one at a time)."""
        if self._shutdown_requests or self._reloader is None:
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
        wanted = {t.name: t for t in new.targets}
        plan = plan_for(self._records, wanted, new.budget_cap_usd > self._budget.cap_usd)
        apply_to_runners(self._records, plan, self._grace_s)
        self._budget.set_cap(new.budget_cap_usd)
        apply_window(self._budget, new.window)
        self._slots.total_tokens = new.max_concurrent
        self._grace_s = new.grace_s
        for spec in plan.start:
            self._records.setdefault(spec.name, TargetRecord(spec)).spec = spec
        added = await self.hosting.reconfigure(new.targets, plan.start)
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
        phases = count_phases(r.phase(not self._ready) for r in self._records.values())
        if self._slots.statistics().tasks_waiting:  # not "4 running" with 2 slots
            runners = (r.runner for r in self._records.values() if r.runner is not None)
            turns = ((u.phase, u.state.in_flight is not None, u.state.next_run_at) for u in runners)
            phases = set_apart_queued(phases, turns, time.time())
        budget = self._budget
        if budget.window is not None:
            return status_line(
                phases, budget.window_spent_usd, budget.window.cap_usd, budget.window.window.name
            )
        return status_line(phases, budget.spent_usd, budget.cap_usd)

    def snapshot(self, targets: bool = True) -> FleetSnapshot:
        """The daemon and every target now (`targets=False`: with none, for callers that
        take the targets from `target_rows()`, which is much cheaper at 10,000 targets)."""
        rows = self.target_rows() if targets else []
        hard_caps = (r.spec.max_iteration_cost_usd for r in self.runners() if r.spec.hard_cap)
        return FleetSnapshot(
            pid=os.getpid(),
            started_at=self._started_at,
            ready=self._ready,
            shutting_down=self._shutdown_requests > 0,
            budget=budget_snapshot(
                self._budget, self.hosting.retired_usd, hard_caps, int(self._slots.total_tokens)
            ),
            targets=tuple(TargetRow(**row) for row in rows),
            queued=self._slots.statistics().tasks_waiting,
            cluster=self.hosting.cluster_snapshot(),
        )

    def target_rows(self) -> list[dict[str, Any]]:
        """Every target now, by name, as the fields of its `TargetRow` in their order
        (what `snapshot().to_json()["targets"]` holds, without building the dataclasses:
        a frozen one costs ~5 µs, a fifth of a second per status request at 10,000)."""
        now = time.monotonic()
        records = self._records
        return [self._target_row(name, records[name], now) for name in sorted(records)]

    def _target_row(self, name: str, record: TargetRecord, now: float) -> dict[str, Any]:
        runner = record.runner
        ended_here = runner is None or runner.final_status is not None
        remote = self.hosting.remote_snapshot(name, record) if ended_here else None
        if remote is not None:
            return remote.to_json()
        if runner is None:
            phase = record.phase(not self._ready)
            return not_started_row(name, record.spec, record.start_error, phase)
        since = runner.running_since
        final = runner.final_status
        return row_json(
            runner.state,
            name=name,
            phase=runner.phase,
            reason=runner.describe(final) if final else None,
            max_iterations=runner.max_iterations_now,
            max_cost_usd=runner.max_cost_usd_now,
            last_weighted_score=runner.progress.last_score,
            running_for_s=None if since is None else round(now - since, 3),
            state_location=runner.location,
            host=self.hosting.host,
        )
