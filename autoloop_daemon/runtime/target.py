"""One target's iterate / cooldown cycle, with crash recovery and graceful stop.

`TargetRunner.prepare()` takes the state root's lock, recovers from the log (a torn tail, a
run that was in flight when the last process died) and checkpoints. `TargetRunner.run()` then
loops: check the stop conditions, wait (cooldown, schedule tick or failure backoff), reserve
budget, take a concurrency slot, run one iteration, record it (log line first, then the
state), until a stop condition or a stop request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.models import (
    FINAL_STATUSES,
    STATUS_COOLDOWN,
    STATUS_ERROR,
    STATUS_RUNNING,
    STATUS_STOPPED_BUDGET,
    STATUS_STOPPED_REMOVED,
    STATUS_STOPPED_SIGNAL,
    STATUS_WAITING,
    IterationResult,
    LogEntry,
    TargetSpec,
)
from autoloop_daemon.policy.budget import Reservation, SharedBudget, estimate_cost
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.schedule import next_tick
from autoloop_daemon.policy.stops import (
    Limits,
    LoopView,
    backoff_seconds,
    describe_stop,
    stop_reason,
    weighted_score,
)
from autoloop_daemon.runs.orchestrator import elapsed_cost_usd, run_iteration
from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files import state_file as state_mod
from autoloop_daemon.storage.files.lock import StateLock, check_owned_root
from autoloop_daemon.storage.files.recovery import recover

log = structlog.get_logger("autoloopd.target")

T = TypeVar("T")
Echo = Callable[[str], None]

# Reservation for a target's first iteration when it has no history and no estimate is
# configured: ten minutes at the target's rate.
FIRST_ESTIMATE_MINUTES = 10.0
# Long waits are slept in slices so a changed wall clock (NTP, suspend) is noticed.
MAX_SLEEP_SLICE_S = 60.0


def _no_echo(_line: str) -> None:
    return None


def _commit_iteration(
    log_file: Path,
    entry: LogEntry,
    handoff: tuple[Path, bytes] | None,
    state_file: Path,
    state_bytes: bytes | None,
) -> None:
    """Record one finished run in one worker-thread call, in crash-safe order.

    The log line first (durable: it is the source of truth), then the handoff (atomic but
    not fsynced: start-up rebuilds a lost one from the log), then the state (durable).
    """
    check_owned_root(log_file.parent)  # never write through a state root replaced by a link
    fsio.append_record(log_file, fsio.dumps_json_line(entry.to_json()))
    if handoff is not None:
        fsio.make_dirs(handoff[0].parent)
        fsio.atomic_write_bytes(handoff[0], handoff[1], durable=False)
    if state_bytes is not None:
        fsio.atomic_write_bytes(state_file, state_bytes)


class TargetRunner:
    """Runs one target until a stop condition or a stop request; owns its state root."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        budget: SharedBudget,
        slots: anyio.CapacityLimiter,
        echo: Echo | None = None,
        one_shot: bool = False,
    ) -> None:
        """Set up a runner; nothing here touches the disk (see `prepare`)."""
        self.spec = spec
        self._pending_spec: TargetSpec | None = None
        self._budget = budget
        self._slots = slots
        self._echo = echo or _no_echo
        self._one_shot = one_shot
        self._lock = StateLock(spec.state_root)
        self._state_file = state_mod.state_path(spec.state_root)
        self._log_file = artifacts.log_path(spec.state_root)
        self.state: dict[str, Any] = {}
        self._progress = Progress(spec.weights_map, spec.min_improvement)
        self._last_entry: LogEntry | None = None
        # True when the state in memory is ahead of the file and the save was deferred (see
        # _record); every wait, stop and the next iteration's in-flight save flush it.
        self._dirty = False
        self._stop_requested = False
        self._stop_status = STATUS_STOPPED_SIGNAL
        self._stop_deadline: float | None = None
        self._wait_scope: anyio.CancelScope | None = None
        self._iter_scope: anyio.CancelScope | None = None
        self._warned_no_scores = False
        self.phase = "starting"  # running | cooldown | waiting | stopped, for STATUS=
        self.final_status: str | None = None
        self.prepared_cost_usd = 0.0

    # ----------------------------------------------------------------- start-up

    async def prepare(self) -> None:
        """Lock the state root, recover from the log and checkpoint (see recovery.py).

        Raises StateLockedError, StateCorruptError or StateWriteError; the files are left
        untouched by a refusal.
        """
        with structlog.contextvars.bound_contextvars(target=self.spec.name):
            recovered = await recover(self.spec, self._lock)
        self.state = recovered.state
        self._progress = recovered.progress
        self._last_entry = recovered.last_entry
        self.prepared_cost_usd = float(self.state["total_cost_usd"])

    # ----------------------------------------------------------------- control

    def request_stop(self, grace_s: float, status: str = STATUS_STOPPED_SIGNAL) -> None:
        """Start no new iteration; let a running one finish within `grace_s`, then stop it."""
        if not self._stop_requested:
            self._stop_status = status
        self._stop_requested = True
        deadline = anyio.current_time() + grace_s
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        if self._iter_scope is not None:
            self._iter_scope.deadline = min(self._iter_scope.deadline, self._stop_deadline)

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

    # ----------------------------------------------------------------- the cycle

    async def run(self) -> str:
        """Run the cycle until it stops; returns the final status. Releases the lock."""
        with structlog.contextvars.bound_contextvars(target=self.spec.name):
            try:
                status = await self._cycle()
            except* StateWriteError as group:  # bare, or from _record's task group
                exc: BaseException = group
                while isinstance(exc, BaseExceptionGroup):
                    exc = exc.exceptions[0]
                status = STATUS_ERROR
                self.state["status"] = STATUS_ERROR
                self.state["last_failure_trace"] = str(exc)
                log.error("checkpoint_failed", error=str(exc))
                self._echo(f"Stopped: cannot write state: {exc}")
            finally:
                self.phase = "stopped"
                self._lock.release()
            self.final_status = status
            return status

    def _limits(self) -> Limits:
        return Limits(
            max_iterations=self.spec.max_iterations,
            max_cost_usd=self.spec.max_cost_usd,
            plateau_window=self.spec.plateau_window,
            min_improvement=self.spec.min_improvement,
            oscillation_window=self.spec.oscillation_window,
        )

    def _view(self) -> LoopView:
        return self._progress.view()

    def _stop_reason(self) -> str | None:
        if int(self.state.get("consecutive_errors", 0)) >= self.spec.max_consecutive_errors:
            return STATUS_ERROR
        return stop_reason(self._view(), self._limits())

    def _describe(self, status: str) -> str:
        if status == STATUS_ERROR:
            trace = str(self.state.get("last_failure_trace") or "").strip().splitlines()
            last = trace[0] if trace else "unknown error"
            return (
                f"circuit breaker tripped after {self.state.get('consecutive_errors')} "
                f"consecutive errors; last: {last}"
            )
        if status == STATUS_STOPPED_BUDGET:
            return (
                f"shared budget exhausted (${self._budget.spent_usd:.2f} of "
                f"${self._budget.cap_usd:.2f} spent)"
            )
        if status == STATUS_STOPPED_SIGNAL:
            return "interrupted by signal"
        if status == STATUS_STOPPED_REMOVED:
            return "removed from the configuration"
        return describe_stop(status, self._view(), self._limits())

    async def _cycle(self) -> str:
        previous = self.state.get("status")
        if previous == STATUS_ERROR:
            # Starting again after the circuit breaker tripped is the operator's retry.
            self.state["consecutive_errors"] = 0
            log.info("circuit_breaker_reset")
        reason = self._stop_reason()
        if reason is not None and previous == reason:
            self._echo(
                f"Not continuing: already stopped: {self._describe(reason)}. "
                "Raise the limit to continue."
            )
            log.info("target_not_continuing", status=reason)
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
                list(self._progress.recent_costs),
                self.spec.estimated_cost_usd,
                FIRST_ESTIMATE_MINUTES * self.spec.cost_per_minute_usd,
            )
            if self._dirty and not self._budget.ledger.fits(estimate):
                await self._save()  # about to wait for the budget: checkpoint first
            reservation = await self._interruptible(self._budget.reserve(self.spec.name, estimate))
            if self._stop_requested:
                if reservation is not None:
                    self._budget.settle(reservation, 0.0)
                continue
            if reservation is None:
                return await self._finish(STATUS_STOPPED_BUDGET)
            await self._with_slot(reservation)
            if self._one_shot and not self._stop_requested:
                status = self._stop_reason() or str(self.state.get("status"))
                return await self._finish(status, announce=self._stop_reason() is not None)

    async def _apply_pending_spec(self) -> None:
        assert self._pending_spec is not None
        old, self.spec, self._pending_spec = self.spec, self._pending_spec, None
        if (old.weights, old.min_improvement) != (self.spec.weights, self.spec.min_improvement):
            # Weighted scores and the plateau streak depend on these: rebuild from the log.
            entries, _torn = await anyio.to_thread.run_sync(artifacts.read_log, self._log_file)
            self._progress = Progress.from_entries(
                entries, self.spec.weights_map, self.spec.min_improvement
            )
            self._progress.apply_to(self.state)
        self.state = state_mod.apply_limits(self.state, self.spec)
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
        now = now_utc()
        delay = 0.0
        errors = int(self.state.get("consecutive_errors", 0))
        last_entry = self._last_entry
        if errors > 0 and last_entry is not None and last_entry.status == "failed":
            last = parse_iso(last_entry.finished_at) or now
            backoff = backoff_seconds(
                errors, self.spec.backoff_base_seconds, self.spec.backoff_max_seconds
            )
            delay = max(delay, (last - now).total_seconds() + backoff)
        if self._one_shot:
            return max(0.0, delay)
        if self.spec.mode in ("continuous", "scheduled"):
            next_run = parse_iso(self.state.get("next_run_at"))
            if next_run is None and self.spec.mode == "scheduled" and self.spec.schedule:
                next_run = next_tick(self.spec.schedule, now)
                self.state["next_run_at"] = to_iso(next_run)
            if next_run is not None:
                delay = max(delay, (next_run - now).total_seconds())
        return max(0.0, delay)

    async def _wait(self, delay_s: float) -> None:
        waiting = self.spec.mode == "scheduled" and not self.state.get("consecutive_errors")
        status = STATUS_WAITING if waiting else STATUS_COOLDOWN
        self.phase = "waiting" if waiting else "cooldown"
        if self.state.get("status") != status or self._dirty:
            self.state["status"] = status
            await self._save()
        log.debug("waiting", seconds=round(delay_s, 3), status=status)
        await self._interruptible(anyio.sleep(min(delay_s, MAX_SLEEP_SLICE_S)))

    # ----------------------------------------------------------------- one iteration

    def _last_handoff(self) -> Path | None:
        if not self._progress.history:
            return None
        last_completed = int(self._progress.history[-1]["iteration"])
        path = artifacts.handoff_path(self.spec.state_root, last_completed)
        return path if path.is_file() else None

    async def _iterate(self) -> float:
        """Run and record one iteration; returns what it cost (for the budget)."""
        spec = self.spec
        iteration = int(self.state.get("next_iteration") or 1)
        completed = int(self.state.get("iterations_completed", 0))
        errors = int(self.state.get("consecutive_errors", 0))
        retry = f" (retry {errors})" if errors else ""
        self._echo(f"--- Iteration {completed + 1}/{spec.max_iterations}{retry} ---")
        started = now_utc()
        t0 = time.monotonic()
        self.phase = "running"
        self.state["status"] = STATUS_RUNNING
        # No pid: its processes are found after a crash by their AUTOLOOPD_RUN marker, which
        # grandchildren inherit too (recording the pid would cost one more checkpoint).
        self.state["in_flight"] = {"iteration": iteration, "started_at": to_iso(started)}
        self.state["next_run_at"] = None
        before_scores = dict(self.state.get("current_scores") or {})
        await self._save()
        handoff = self._last_handoff()
        result: IterationResult | None = None
        with structlog.contextvars.bound_contextvars(iteration=iteration):
            log.info("iteration_started", handoff=str(handoff) if handoff else None)
            with anyio.CancelScope() as scope:
                self._iter_scope = scope
                if self._stop_deadline is not None:
                    scope.deadline = self._stop_deadline
                result = await run_iteration(spec, iteration, handoff=handoff)
            self._iter_scope = None
            cost = 0.0
            with anyio.CancelScope(shield=True):
                cost = await self._record(
                    iteration, started, time.monotonic() - t0, result, before_scores
                )
            return cost

    async def _record(
        self,
        iteration: int,
        started: datetime,
        duration_s: float,
        result: IterationResult | None,
        before: dict[str, float],
    ) -> float:
        spec = self.spec
        finished = now_utc()
        if result is None:
            status = "interrupted"
            cost = 0.0 if spec.dry_run else elapsed_cost_usd(duration_s, spec.cost_per_minute_usd)
            error: str | None = "stopped by autoloopd shutdown"
            scores: dict[str, float] = {}
            score = None
        else:
            status = result.status
            cost = (
                result.cost_usd
                if result.cost_usd is not None
                else elapsed_cost_usd(result.duration_s, spec.cost_per_minute_usd)
            )
            error = result.error
            scores = dict(result.scores)
            score = weighted_score(scores, spec.weights_map) if scores else result.weighted_score
        entry = LogEntry(
            iteration=iteration,
            started_at=to_iso(started),
            finished_at=to_iso(finished),
            status=status,  # type: ignore[arg-type]
            decision=result.decision if result else None,
            weighted_score=None if score is None else round(score, 6),
            cost_usd=round(cost, 6),
            duration_seconds=round(duration_s, 3),
            candidate_id=result.candidate_id if result else None,
            artifact_path=result.artifact_path if result else None,
            scores=scores,
            exit_code=result.exit_code if result else None,
            error=error,
        )
        self._last_entry = entry
        self._progress.add(entry)
        self._progress.apply_to(self.state)
        self.state["in_flight"] = None
        if result is not None and result.status == "failed":
            self.state["last_failure_trace"] = result.failure_trace or result.error
        if status == "completed":
            if spec.mode == "continuous" and not self._one_shot:
                self.state["next_run_at"] = to_iso(finished + timedelta(seconds=spec.cooldown_s))
            elif spec.mode == "scheduled" and spec.schedule and not self._one_shot:
                self.state["next_run_at"] = to_iso(next_tick(spec.schedule, finished))
        if status != "completed":
            self.state["status"] = STATUS_COOLDOWN  # backoff before the retry
        elif self._one_shot or spec.mode == "single-run":
            self.state["status"] = STATUS_RUNNING
        else:
            self.state["status"] = STATUS_WAITING if spec.mode == "scheduled" else STATUS_COOLDOWN
        handoff: tuple[Path, bytes] | None = None
        if status == "completed":
            text = artifacts.render_handoff(
                iteration=iteration,
                decision=entry.decision,
                candidate_id=entry.candidate_id,
                artifact_path=entry.artifact_path,
                before=before,
                after=scores,
            )
            handoff = (artifacts.handoff_path(spec.state_root, iteration), text.encode())
        state_bytes = None
        if self._may_defer_save(status):
            self._dirty = True
        else:
            self._dirty = False
            state_bytes = state_mod.encode_state(self.state)
        await anyio.to_thread.run_sync(
            _commit_iteration, self._log_file, entry, handoff, self._state_file, state_bytes
        )
        if status == "completed" and not scores and not self._warned_no_scores:
            self._warned_no_scores = True
            log.warning(
                "scores_missing",
                hint="no scores in the result, no scorer, no learner file; "
                "plateau detection neither advances nor resets",
            )
        total = float(self.state["total_cost_usd"])
        log_event = log.info if status == "completed" else log.warning
        log_event(
            "iteration_finished",
            status=status,
            decision=entry.decision,
            weighted_score=entry.weighted_score,
            cost_usd=entry.cost_usd,
            total_cost_usd=round(total, 6),
            duration_s=entry.duration_seconds,
            error=error,
        )
        if status == "completed":
            shown = "n/a" if entry.weighted_score is None else f"{entry.weighted_score:.4f}"
            self._echo(
                f"Decision: {entry.decision}  Weighted score: {shown}  "
                f"Cumulative cost: ${total:.4f}"
            )
        else:
            self._echo(f"Iteration {status}: {error}  Cumulative cost: ${total:.4f}")
        return entry.cost_usd

    # ----------------------------------------------------------------- finishing

    async def _finish(self, status: str, *, announce: bool = True) -> str:
        self.phase = "stopped"
        if status == STATUS_STOPPED_SIGNAL and self.state.get("status") in FINAL_STATUSES:
            status = str(self.state["status"])
        self.state["status"] = status
        self.state["in_flight"] = None
        with anyio.CancelScope(shield=True):
            await self._save()
        if announce:
            self._echo(f"Stopped: {self._describe(status)}")
        self._echo(f"State saved: {self._state_file}")
        log.info(
            "target_stopped",
            status=status,
            reason=self._describe(status),
            iterations_completed=self.state.get("iterations_completed"),
            total_cost_usd=self.state.get("total_cost_usd"),
        )
        return status

    def _may_defer_save(self, status: str) -> bool:
        """True when the next iteration normally starts at once and its in-flight save
        will carry this one's results: single-run mode after a completed run.

        The log line is already durable, so a crash before that save only leaves a state
        lagging its log, which start-up repairs.
        """
        return (
            status == "completed"
            and self.spec.mode == "single-run"
            and not self._one_shot
            and not self._stop_requested
        )

    async def _save(self) -> None:
        self._dirty = False
        await state_mod.save_state(self._state_file, self.state)
