"""One target's iterate / cooldown cycle, with graceful stop.

`TargetRunner.prepare()` opens the target's store (lock, recovery from the log). `run()` then
loops: check the stop conditions, wait (cooldown, schedule tick or failure backoff), reserve
budget, take a concurrency slot, run one iteration and record it, until a stop condition or a
stop request. What comes next is decided by the pure functions of `policy/`; what happened is
published as events (engine/events.py), never printed or logged here directly.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import WindowFull
from autoloop_daemon.engine.iteration import IterationSteps
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.policy import cycle
from autoloop_daemon.policy.deadline import deadline_after
from autoloop_daemon.policy.ledger import Reservation
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.stops import goal_reason, stop_reason, stop_sentence
from autoloop_daemon.policy.windows import local_zone
from autoloop_daemon.vocab import (
    FINAL_STATUSES,
    RunStatus,
    TargetStatus,
)

log = structlog.get_logger("autoloopd.target")

T = TypeVar("T")

# Long waits are slept in slices so a changed wall clock (NTP, suspend) is noticed.
MAX_SLEEP_SLICE_S = 60.0


class TargetRunner(IterationSteps):
    """Runs one target until a stop condition or a stop request; owns its store."""

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

    def _stop_reason(self) -> TargetStatus | None:
        if self.state.consecutive_errors >= self.spec.max_consecutive_errors:
            return TargetStatus.ERROR
        reason = stop_reason(self.progress.view(), self.limits()) or goal_reason(
            self._goals(),
            best=self.progress.best,
            scored=len(self.progress.scores),
            gain_per_usd=self.gain_per_usd,
            now=now_utc(),
        )
        return None if reason is None else TargetStatus(reason)

    def describe(self, status: str) -> str:
        """Why the target stopped (or would stop) with `status`, in words."""
        sentence = stop_sentence(
            status,
            self.progress.view(),
            self.limits(),
            consecutive_errors=self.state.consecutive_errors,
            max_consecutive_errors=self.spec.max_consecutive_errors,
            last_failure=self.state.last_failure_trace,
            budget_spent_usd=self._budget.spent_usd,
            budget_cap_usd=self._budget.cap_usd,
            next_run_at=self.state.next_run_at,
        )
        return status if sentence is None else sentence

    async def _begin(self) -> str | None:
        """Announce the start; the status to finish with at once, or None to go on."""
        spec, limits = self.spec, self.limits()
        if spec.deadline is not None:
            self._deadline_at = deadline_after(spec.deadline, now_utc(), local_zone())
        self._events.publish(
            ev.TargetStarting(
                spec.name, str(spec.path), spec.mode, limits.max_iterations, limits.max_cost_usd
            )
        )
        previous = self.state.known_status
        if previous == TargetStatus.ERROR:
            # Starting again after the circuit breaker tripped is the operator's retry: the
            # streak starts from zero (the log still holds the failures).
            self.state.consecutive_errors = self.progress.consecutive_errors = 0
            log.info("circuit_breaker_reset")
        reason = self._stop_reason()
        if reason is not None and previous == reason:
            self._events.publish(
                ev.TargetNotContinuing(self.spec.name, reason, self.describe(reason))
            )
            return await self._finish(reason, announce=False)
        if previous in FINAL_STATUSES and reason is None:
            log.info("target_resumed", previous_status=previous)
        return None

    async def _cycle(self) -> str:
        ended = await self._begin()
        if ended is not None:
            return ended
        while True:
            if self._pending_spec is not None:
                await self._apply_pending_spec()
            if self._stop_requested:
                return await self._finish(self._stop_status)
            reason = self._stop_reason()
            if reason is not None:
                return await self._finish(reason)
            if self.state.paused:
                await self._wait_paused()
                continue
            delay = self._delay_before_next()
            if delay > 0:
                await self._wait(delay)
                continue  # re-check everything after a wait
            ended = await self._turn()
            if ended is not None:
                return ended
            if self._turn_skipped:
                continue
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
        if isinstance(self._slots, RankedSlots):
            await self._slots.acquire_ranked(self.gain_per_usd)
        else:
            await self._slots.acquire()
        return True

    async def _take_slot(self) -> bool:
        """Wait for a concurrency slot (checkpointing first if it will wait); False when a
        stop request ended the wait."""
        if self._dirty and self._slots.available_tokens < 1:
            await self._save()  # about to wait for a slot: checkpoint first
        return bool(await self._interruptible(self._acquire_slot()))

    async def _turn(self) -> str | None:
        """Reserve the budget and take a slot, then run one iteration. Returns a status to
        finish with, or None (`_turn_skipped` set when nothing ran: go round again).

        First come first served reserves first, then waits for a slot (as always). With
        ranked slots (`allocation = "gain_per_usd"`) the slot comes first, so that the
        best-ranked target is also the next one to spend; it is given back before waiting
        for the next budget window.
        """
        self._turn_skipped = True
        ranked = isinstance(self._slots, RankedSlots)
        held = False
        try:
            if ranked:
                held = await self._take_slot()
                if not held or self._stop_requested:
                    return None
            estimate = self.next_estimate_usd()
            if self._dirty and not self._budget.ledger.fits(estimate):
                await self._save()  # about to wait for the budget: checkpoint first
            reservation = await self._interruptible(
                self._budget.reserve(
                    self.spec.name,
                    estimate,
                    metered=self._wall_time_priced(),
                    iteration=self.state.next_iteration,
                    rate_usd_per_s=self.spec.cost_per_minute_usd / 60.0,
                )
            )
            if self._stop_requested:
                if isinstance(reservation, Reservation):
                    self._budget.settle(reservation, 0.0)
                return None
            if reservation is None:
                return await self._finish(TargetStatus.STOPPED_BUDGET)
            if isinstance(reservation, WindowFull):
                if held:
                    held = False
                    self._slots.release()
                await self._wait_window(reservation)
                return None
            self._turn_skipped = False
            held = False  # _with_slot gives it back
            await self._with_slot(reservation, have_slot=ranked)
            return None
        finally:
            if held:
                self._slots.release()

    async def _with_slot(self, reservation: Reservation, *, have_slot: bool = False) -> None:
        cost = 0.0
        got_slot = have_slot
        try:
            if not got_slot:
                got_slot = await self._take_slot()
            if got_slot and not self._stop_requested and self._budget.may_start(self.spec.name):
                cost = await self._iterate()
        finally:
            if got_slot:
                self._slots.release()
            self._budget.settle(reservation, cost)

    def _delay_before_next(self) -> float:
        if self._run_now:
            self._run_now = False
            if self.state.next_run_at is not None:
                self.state.next_run_at, self._dirty = None, True
            return 0.0
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

    async def _wait_paused(self) -> None:
        self.phase = "paused"
        if self.state.status != TargetStatus.PAUSED or self._dirty:
            self.state.status = TargetStatus.PAUSED
            await self._save()
        await self._interruptible(anyio.sleep(MAX_SLEEP_SLICE_S))

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

    async def _wait_window(self, full: WindowFull) -> None:
        """The budget window's cap is reached: wait (`waiting_budget`) until it ends."""
        self.phase = "waiting"
        reset_at = to_iso(full.reset_at)
        if self.state.status != TargetStatus.WAITING_BUDGET or self._dirty:
            self.state.status = TargetStatus.WAITING_BUDGET
            self.state.next_run_at = reset_at
            await self._save()
        if self._announced_wait != reset_at:
            self._announced_wait = reset_at
            self._events.publish(ev.WaitingBudget(self.spec.name, reset_at))
        delay = (full.reset_at - now_utc()).total_seconds()
        await self._interruptible(anyio.sleep(min(max(0.0, delay) + 0.01, MAX_SLEEP_SLICE_S)))

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
                max_iterations=self.limits().max_iterations,
                total_cost_usd=self.state.total_cost_usd,
                estimated_usd=self.progress.estimated_cost_usd,
                best_score=self.progress.best,
                best_iteration=self.progress.best_iteration,
                location=self.location,
                announce=announce,
            )
        )
        return status
