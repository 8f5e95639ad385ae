"""One target's iterate / cooldown cycle, with graceful stop.

`TargetRunner.prepare()` opens the target's store (lock, recovery from the log). `run()` then
loops: check the stop conditions, wait (cooldown, schedule tick or failure backoff), reserve
budget, take a concurrency slot, run one iteration and record it, until a stop condition or a
stop request. What comes next is decided by the pure functions of `policy/`; what happened is
published as events (runtime/events.py), never printed or logged here directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.models import IterationResult, LogEntry, TargetSpec
from autoloop_daemon.policy import cycle
from autoloop_daemon.policy.budget import Reservation, estimate_cost
from autoloop_daemon.policy.live_cost import (
    REASON_BUDGET,
    REASON_ITERATION_COST,
    REASON_TARGET_COST,
    StopAt,
)
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.recording import build_entry
from autoloop_daemon.policy.stops import Limits, stop_reason
from autoloop_daemon.runs.orchestrator import run_iteration
from autoloop_daemon.runs.target_files import content_hash, save_best
from autoloop_daemon.runtime import events as ev
from autoloop_daemon.runtime.budget import Meter, SharedBudget
from autoloop_daemon.storage.base import TargetStore
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.target_state import InFlight, TargetState
from autoloop_daemon.vocab import (
    FINAL_STATUSES,
    KNOWN_DECISIONS,
    Decision,
    RunStatus,
    TargetStatus,
)

log = structlog.get_logger("autoloopd.target")

T = TypeVar("T")

# Reservation for a target's first iteration when it has no history and no estimate is
# configured: ten minutes at the target's rate.
FIRST_ESTIMATE_MINUTES = 10.0
# The stop a cap's live cut leads to (a per-iteration limit only fails the run).
CUT_STATUS = {
    REASON_BUDGET: TargetStatus.STOPPED_BUDGET,
    REASON_TARGET_COST: TargetStatus.STOPPED_COST,
}
# Long waits are slept in slices so a changed wall clock (NTP, suspend) is noticed.
MAX_SLEEP_SLICE_S = 60.0


class TargetRunner:
    """Runs one target until a stop condition or a stop request; owns its store."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        store: TargetStore,
        budget: SharedBudget,
        slots: anyio.CapacityLimiter,
        events: ev.EventBus,
        one_shot: bool = False,
    ) -> None:
        """Set up a runner; nothing here touches storage (see `prepare`)."""
        self.spec = spec
        self._pending_spec: TargetSpec | None = None
        self._store = store
        self._budget = budget
        self._slots = slots
        self._events = events
        self._one_shot = one_shot
        self.state = TargetState.new(spec, to_iso(now_utc()))
        self.progress = Progress(spec.weights_map, spec.min_improvement)
        self.last_entry: LogEntry | None = None
        # True when the state in memory is ahead of the store and the save was deferred
        # (policy.cycle.after_run); every wait, stop and the next in-flight save flush it.
        self._dirty = False
        self._stop_requested = False
        self._stop_status = TargetStatus.STOPPED_SIGNAL
        self._stop_deadline: float | None = None
        self._wait_scope: anyio.CancelScope | None = None
        self._iter_scope: anyio.CancelScope | None = None
        self._warned_no_scores = False
        self._cut: StopAt | None = None  # when a cap says the running iteration must stop
        self._cut_status: TargetStatus | None = None  # the stop a cap's cut leads to
        self._announced_wait: str | None = None
        self._warned_decisions: set[str] = set()
        self.phase = "starting"  # running | cooldown | waiting | stopped
        self.running_since: float | None = None  # monotonic start of the running iteration
        self.final_status: str | None = None
        self.prepared_cost_usd = 0.0

    # ----------------------------------------------------------------- start-up

    async def prepare(self) -> None:
        """Open the store: lock, recover from the log, checkpoint.

        Raises StateLockedError, StateCorruptError or StateWriteError; nothing is changed
        by a refusal.
        """
        with structlog.contextvars.bound_contextvars(target=self.spec.name):
            recovered = await self._store.open()
        self.state = recovered.state
        self.progress = recovered.progress
        self.last_entry = recovered.last_entry
        self.prepared_cost_usd = self.state.total_cost_usd

    # ----------------------------------------------------------------- control

    def request_stop(
        self, grace_s: float, status: TargetStatus = TargetStatus.STOPPED_SIGNAL
    ) -> None:
        """Start no new iteration; let a running one finish within `grace_s`, then stop it."""
        if not self._stop_requested:
            self._stop_status = status
        self._stop_requested = True
        deadline = anyio.current_time() + grace_s
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        self._apply_deadline()

    def force_stop(self) -> None:
        """Skip the grace period: stop a running iteration now."""
        self.request_stop(0.0, self._stop_status)

    def update_spec(self, spec: TargetSpec) -> None:
        """Apply changed limits from the next iteration on (config reload)."""
        self._pending_spec = None if spec == self.spec else spec

    @property
    def latest_spec(self) -> TargetSpec:
        """The spec of the newest configuration: a pending one, else the one in use."""
        return self._pending_spec or self.spec

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop_requested

    @property
    def stop_status(self) -> TargetStatus | None:
        """The status a requested stop ends with, or None when none was requested."""
        return self._stop_status if self._stop_requested else None

    @property
    def location(self) -> str:
        """Where the state lives (for users)."""
        return self._store.location

    # ----------------------------------------------------------------- the cycle

    async def run(self) -> str:
        """Run the cycle until it stops; returns the final status. Closes the store."""
        with structlog.contextvars.bound_contextvars(target=self.spec.name):
            try:
                status = await self._cycle()
            except* StateWriteError as group:  # bare, or from a task group
                exc: BaseException = group
                while isinstance(exc, BaseExceptionGroup):
                    exc = exc.exceptions[0]
                status = TargetStatus.ERROR
                self.state.status = status
                self.state.last_failure_trace = str(exc)
                self._events.publish(ev.CheckpointFailed(self.spec.name, str(exc)))
            finally:
                self.phase = "stopped"
                self._store.close()
            self.final_status = status
            return status

    def limits(self) -> Limits:
        """The limits the stop conditions compare against."""
        s = self.spec
        return Limits(
            s.max_iterations, s.max_cost_usd, s.plateau_window, s.min_improvement,
            s.oscillation_window,
        )  # fmt: skip

    def _stop_reason(self) -> TargetStatus | None:
        if self.state.consecutive_errors >= self.spec.max_consecutive_errors:
            return TargetStatus.ERROR
        reason = stop_reason(self.progress.view(), self.limits())
        return None if reason is None else TargetStatus(reason)

    def describe(self, status: str) -> str:
        """Why the target stopped (or would stop) with `status`, in words."""
        return cycle.stop_sentence(
            status,
            self.progress.view(),
            self.limits(),
            consecutive_errors=self.state.consecutive_errors,
            max_consecutive_errors=self.spec.max_consecutive_errors,
            last_failure=self.state.last_failure_trace,
            budget_spent_usd=self._budget.spent_usd,
            budget_cap_usd=self._budget.cap_usd,
        )

    async def _cycle(self) -> str:
        spec = self.spec
        self._events.publish(
            ev.TargetStarting(
                spec.name, str(spec.path), spec.mode, spec.max_iterations, spec.max_cost_usd
            )
        )
        previous = self.state.known_status
        if previous == TargetStatus.ERROR:
            # Starting again after the circuit breaker tripped is the operator's retry.
            self.state.consecutive_errors = 0
            log.info("circuit_breaker_reset")
        reason = self._stop_reason()
        if reason is not None and previous == reason:
            self._events.publish(
                ev.TargetNotContinuing(self.spec.name, reason, self.describe(reason))
            )
            return await self._finish(reason, announce=False)
        if previous in FINAL_STATUSES and reason is None:
            log.info("target_resumed", previous_status=previous)
        while True:
            if self._pending_spec is not None:
                await self._apply_pending_spec()
            if self._stop_requested:
                return await self._finish(self._stop_status)
            reason = self._stop_reason()
            if reason is not None:
                return await self._finish(reason)
            delay = self._delay_before_next()
            if delay > 0:
                await self._wait(delay)
                continue  # re-check everything after a wait
            estimate = estimate_cost(
                list(self.progress.recent_costs),
                self.spec.estimated_cost_usd,
                FIRST_ESTIMATE_MINUTES * self.spec.cost_per_minute_usd,
                fleet_recent_usd=self._budget.recent_costs,
                iteration_limit_usd=self.spec.max_iteration_cost_usd,
            )
            if self._dirty and not self._budget.ledger.fits(estimate):
                await self._save()  # about to wait for the budget: checkpoint first
            reservation = await self._interruptible(
                self._budget.reserve(self.spec.name, estimate, metered=self._wall_time_priced())
            )
            if self._stop_requested:
                if reservation is not None:
                    self._budget.settle(reservation, 0.0)
                continue
            if reservation is None:
                return await self._finish(TargetStatus.STOPPED_BUDGET)
            await self._with_slot(reservation)
            if self._cut_status is not None:
                return await self._finish(self._cut_status)
            if self._one_shot and not self._stop_requested:
                stop = self._stop_reason()
                if stop is None:
                    self._events.publish(ev.ScheduledExit(self.spec.name))
                return await self._finish(stop or self.state.status, announce=stop is not None)

    async def _apply_pending_spec(self) -> None:
        assert self._pending_spec is not None
        old, self.spec, self._pending_spec = self.spec, self._pending_spec, None
        if (old.weights, old.min_improvement) != (self.spec.weights, self.spec.min_improvement):
            # Weighted scores and the plateau streak depend on these: rebuild from the log.
            entries = await self._store.read_log()
            self.progress = Progress.from_entries(
                entries, self.spec.weights_map, self.spec.min_improvement
            )
            self.progress.apply_to(self.state)
        self.state.apply_limits(self.spec)
        log.info("limits_applied")

    async def _interruptible(self, awaitable: Awaitable[T]) -> T | None:
        """Await `awaitable` unless a stop request cancels the wait (then None)."""
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            if self._stop_requested:
                scope.cancel()
            try:
                return await awaitable
            finally:
                self._wait_scope = None
        return None

    async def _acquire_slot(self) -> bool:
        await self._slots.acquire()
        return True

    async def _with_slot(self, reservation: Reservation) -> None:
        cost = 0.0
        got_slot = False
        try:
            if self._dirty and self._slots.available_tokens < 1:
                await self._save()  # about to wait for a slot: checkpoint first
            got_slot = bool(await self._interruptible(self._acquire_slot()))
            if got_slot and not self._stop_requested:
                cost = await self._iterate()
        finally:
            if got_slot:
                self._slots.release()
            self._budget.settle(reservation, cost)

    def _delay_before_next(self) -> float:
        last = self.last_entry
        failed = last is not None and last.status == RunStatus.FAILED
        wait = cycle.delay_before_next(
            now=now_utc(),
            mode=self.spec.mode,
            one_shot=self._one_shot,
            consecutive_errors=self.state.consecutive_errors,
            last_failed_at=parse_iso(last.finished_at) if failed and last else None,
            backoff_base_s=self.spec.backoff_base_seconds,
            backoff_max_s=self.spec.backoff_max_seconds,
            next_run_at=parse_iso(self.state.next_run_at),
            last_finished_at=parse_iso(last.finished_at) if last else None,
            cooldown_s=self.spec.cooldown_s,
            schedule=self.spec.schedule,
        )
        stored = None if wait.next_run_at is None else to_iso(wait.next_run_at)
        if stored != self.state.next_run_at and not self._one_shot:
            self.state.next_run_at = stored
            self._dirty = True
        return wait.delay_s

    async def _wait(self, delay_s: float) -> None:
        waiting = self.spec.mode == "scheduled" and not self.state.consecutive_errors
        status = TargetStatus.WAITING if waiting else TargetStatus.COOLDOWN
        self.phase = "waiting" if waiting else "cooldown"
        if self.state.status != status or self._dirty:
            self.state.status = status
            await self._save()
        next_run = self.state.next_run_at
        if status == TargetStatus.COOLDOWN and next_run and next_run != self._announced_wait:
            self._announced_wait = next_run
            self._events.publish(ev.CoolingDown(self.spec.name, delay_s, next_run))
        log.debug("waiting", seconds=round(delay_s, 3), status=status)
        await self._interruptible(anyio.sleep(min(delay_s, MAX_SLEEP_SLICE_S)))

    # ----------------------------------------------------------------- one iteration

    def _last_handoff(self) -> Path | None:
        if not self.progress.history:
            return None
        return self._store.handoff_file(int(self.progress.history[-1]["iteration"]))

    async def _iterate(self) -> float:
        """Run and record one iteration; returns what it cost (for the budget)."""
        spec = self.spec
        iteration = self.state.next_iteration
        started = now_utc()
        t0 = time.monotonic()
        self.phase = "running"
        self.running_since = t0
        self.state.status = TargetStatus.RUNNING
        # No pid: its processes are found after a crash by their AUTOLOOPD_RUN marker, which
        # grandchildren inherit too (recording the pid would cost one more checkpoint).
        self.state.in_flight = InFlight(iteration, to_iso(started))
        self.state.next_run_at = None
        before_scores = dict(self.state.current_scores)
        await self._save()
        handoff = self._last_handoff()
        run_log = None if spec.dry_run else artifacts.run_log_path(spec.state_root, iteration)
        with structlog.contextvars.bound_contextvars(iteration=iteration):
            self._events.publish(
                ev.IterationStarted(
                    target=spec.name,
                    iteration=iteration,
                    completed=self.state.iterations_completed,
                    max_iterations=spec.max_iterations,
                    retry=self.state.consecutive_errors,
                    handoff=None if handoff is None else str(handoff),
                    run_log=None if run_log is None else str(run_log),
                )
            )
            result: IterationResult | None = None
            self._cut = None
            meter = self._open_meter()
            try:
                with anyio.CancelScope() as scope:
                    self._iter_scope = scope
                    self._apply_deadline()
                    result = await run_iteration(
                        spec, iteration, handoff=handoff, on_cost=meter.report
                    )
            finally:
                self._iter_scope = None
                live = meter.live_usd()
                meter.close()
            self.running_since = None
            cut = (
                self._cut.reason
                if result is None and self._cut is not None and self._cut_due()
                else None
            )
            with anyio.CancelScope(shield=True):
                changed = await self._files_changed(result)
                entry = build_entry(
                    spec, iteration, started, now_utc(), time.monotonic() - t0, result, changed,
                    cut=cut, live_cost_usd=live,
                )  # fmt: skip
                if cut is not None and cut in CUT_STATUS:
                    self._cut_status = CUT_STATUS[cut]
                await self._record(entry, result, before_scores)
                await self._keep_best(entry)
            return entry.cost_usd

    def _wall_time_priced(self) -> bool:
        """True when the next run is metered by wall time: its orchestrator did not report
        its cost last time (or has not run yet) and the rate is not zero."""
        spec = self.spec
        return not spec.dry_run and spec.cost_per_minute_usd > 0 and not self.progress.reports_cost

    def _open_meter(self) -> Meter:
        """Meter the run's live cost: by wall time unless its orchestrator reports cost."""
        spec = self.spec
        wall_time = self._wall_time_priced()
        target_left = spec.max_cost_usd - self.state.total_cost_usd
        limit = spec.max_iteration_cost_usd
        own_reason = REASON_TARGET_COST
        if limit is not None and limit < target_left:
            target_left, own_reason = limit, REASON_ITERATION_COST
        return self._budget.open_meter(
            rate_usd_per_s=spec.cost_per_minute_usd / 60.0 if wall_time else 0.0,
            own_limit_usd=target_left,
            own_reason=own_reason,
            on_plan=self._on_plan,
        )

    def _on_plan(self, plan: StopAt) -> None:
        self._cut = plan if plan.reason is not None else None
        self._apply_deadline()

    def _apply_deadline(self) -> None:
        """The running iteration ends at the stop deadline or when a cap says so."""
        if self._iter_scope is None:
            return
        deadline = math.inf if self._stop_deadline is None else self._stop_deadline
        if self._cut is not None:
            deadline = min(deadline, self._cut.at_s)
        self._iter_scope.deadline = deadline

    def _cut_due(self) -> bool:
        return self._cut is not None and anyio.current_time() >= self._cut.at_s - 1e-3

    def _state_root_inside_target(self) -> Path | None:
        root, target = self.spec.state_root, self.spec.path
        return root if root.is_relative_to(target) else None

    async def _files_changed(self, result: IterationResult | None) -> bool | None:
        """Whether the run changed the target's files (None: not checked)."""
        if self.spec.dry_run or result is None or result.status != "completed":
            return None
        before = self.state.content_hash
        try:
            after = await anyio.to_thread.run_sync(
                content_hash, self.spec.path, self._state_root_inside_target()
            )
        except OSError as exc:
            log.warning("content_hash_failed", error=str(exc))
            return None
        self.state.content_hash = after
        return None if before is None else after != before

    async def _keep_best(self, entry: LogEntry) -> None:
        """Copy the target to best/ when a kept run that changed files reached a new best."""
        if (
            entry.decision != Decision.KEEP
            or entry.changed is not True
            or self.progress.best_iteration != entry.iteration
        ):
            return
        try:
            await anyio.to_thread.run_sync(
                save_best,
                self.spec.path,
                self.spec.state_root,
                entry.iteration,
                self._state_root_inside_target(),
            )
        except OSError as exc:
            log.warning("best_copy_failed", iteration=entry.iteration, error=str(exc))
            return
        self.state.best_copy_iteration = entry.iteration
        self._dirty = True
        log.info("best_version_saved", iteration=entry.iteration, score=self.progress.best)

    async def _record(
        self, entry: LogEntry, result: IterationResult | None, before: dict[str, float]
    ) -> None:
        self.last_entry = entry
        self.progress.add(entry)
        self.progress.apply_to(self.state)
        self.state.in_flight = None
        if result is not None and entry.status == RunStatus.FAILED:
            self.state.last_failure_trace = result.failure_trace or result.error
        finished = parse_iso(entry.finished_at) or now_utc()
        plan = cycle.after_run(
            run_status=RunStatus(entry.status),
            mode=self.spec.mode,
            one_shot=self._one_shot,
            stop_requested=self._stop_requested,
            finished=finished,
            cooldown_s=self.spec.cooldown_s,
            schedule=self.spec.schedule,
        )
        if plan.next_run_at is not None:
            self.state.next_run_at = to_iso(plan.next_run_at)
        self.state.status = plan.status
        handoff = None
        if entry.completed:
            handoff = artifacts.render_handoff(
                iteration=entry.iteration,
                decision=entry.decision,
                candidate_id=entry.candidate_id,
                artifact_path=entry.artifact_path,
                before=before,
                after=dict(entry.scores),
            )
        self._dirty = plan.may_defer_save
        await self._store.record(entry, handoff, None if self._dirty else self.state)
        if (
            entry.decision is not None
            and entry.decision not in KNOWN_DECISIONS
            and entry.decision not in self._warned_decisions
        ):
            self._warned_decisions.add(entry.decision)
            log.warning(
                "unknown_decision",
                decision=entry.decision,
                hint="recorded verbatim as a completed iteration; it counts as not-keep",
            )
        if entry.completed and not entry.scores and not self._warned_no_scores:
            self._warned_no_scores = True
            log.warning(
                "scores_missing",
                hint="no scores in the result, no scorer, no learner file; "
                "plateau detection neither advances nor resets",
            )
        self._events.publish(
            ev.IterationFinished(
                self.spec.name, entry, self.state.total_cost_usd, self.progress.estimated_cost_usd
            )
        )

    # ----------------------------------------------------------------- finishing

    async def _finish(self, status: str, *, announce: bool = True) -> str:
        self.phase = "stopped"
        if status == TargetStatus.STOPPED_SIGNAL and self.state.is_final:
            status = self.state.status
        self.state.status = status
        self.state.in_flight = None
        with anyio.CancelScope(shield=True):
            await self._save()
        self._events.publish(
            ev.TargetStopped(
                target=self.spec.name,
                status=status,
                reason=self.describe(status),
                iterations_completed=self.state.iterations_completed,
                max_iterations=self.spec.max_iterations,
                total_cost_usd=self.state.total_cost_usd,
                estimated_usd=self.progress.estimated_cost_usd,
                best_score=self.progress.best,
                best_iteration=self.progress.best_iteration,
                location=self.location,
                announce=announce,
            )
        )
        return status

    async def _save(self) -> None:
        self._dirty = False
        await self._store.save(self.state)
