"""One target's iterate / cooldown cycle, with graceful stop.

`TargetRunner.prepare()` opens the target's store (lock, recovery from the log). `run()` then
goes round: check the stop conditions, wait (pause, cooldown, schedule tick or failure backoff),
take a turn (reserve budget, take a concurrency slot, run one iteration and record it), until a
stop condition or a stop request. What comes next is decided by the pure functions of `policy/`;
what happened is published as events (engine/events.py), never printed here. Its parts keep
their own state: `StopControl` (engine/stop_control.py), `Waits` (engine/waits.py), and the
`Iteration` (engine/iteration.py) built per turn."""

from __future__ import annotations

from datetime import datetime

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import Budget, WindowFull
from autoloop_daemon.engine.iteration import Iteration
from autoloop_daemon.engine.review_apply import ReviewApplier
from autoloop_daemon.engine.stop_control import StopControl
from autoloop_daemon.engine.waits import ParkHook, Waits
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy import stops
from autoloop_daemon.policy.allocation import closure
from autoloop_daemon.policy.deadline import deadline_after
from autoloop_daemon.policy.first_fit import metered_live
from autoloop_daemon.policy.ledger import Reservation
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.windows import local_zone, spent_in_window
from autoloop_daemon.storage.base import Recovered, TargetStore
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import FINAL_STATUSES, REQUESTED_STOPS, Phase, TargetStatus

log = structlog.get_logger("autoloopd.target")
NO_WARNINGS: frozenset[str] = frozenset()  # shared: each frozenset() is 216 new bytes


class TargetRunner:
    """Runs one target until a stop condition or a stop request; owns its store."""

    __slots__ = (
        "_budget", "_deadline_at", "_dirty", "_events", "_one_shot", "_pending_spec", "_phase",
        "_slots", "_stop", "_store", "_waits", "_warned", "final_status", "last_entry",
        "prepared_cost_usd", "prepared_window_cost_usd", "progress", "reviews", "running_since",
        "spec", "state")  # fmt: skip

    def __init__(
        self,
        spec: TargetSpec,
        *,
        store: TargetStore,
        budget: Budget,
        slots: RankedSlots,
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
        self._stop = StopControl()
        self._waits = Waits(self)
        self.reviews = ReviewApplier(self)  # reviewers' verdicts, applied between turns
        self.state = TargetState.new(spec, to_iso(now_utc()))
        self.progress = Progress(spec.weights_map, spec.min_improvement)
        self.last_entry: LogEntry | None = None
        self._phase = Phase.STARTING
        # True when the state in memory is ahead of the store and the save was deferred
        # (policy.cycle.after_run); every wait, stop and the next in-flight save flush it.
        self._dirty = False
        self.running_since: float | None = None  # monotonic start of the running iteration
        self.final_status: str | None = None
        self.prepared_cost_usd = 0.0
        self.prepared_window_cost_usd = 0.0  # of it, in the budget's current window
        self._deadline_at: datetime | None = None  # `deadline`, fixed when the cycle begins
        self._warned: frozenset[str] = NO_WARNINGS  # given once (iteration.py)

    # ----------------------------------------------------------------- status and phase

    @property
    def phase(self) -> Phase:
        """Where the runner is in its cycle now."""
        return self._phase

    def _enter(self, status: str, phase: Phase) -> None:
        """The one place a runner's status and phase change (supervisord's `change_state`).

        A changed status makes the state dirty: the next checkpoint writes it. The events a
        transition publishes are published by the caller after that checkpoint, so that no
        subscriber hears of a status the store does not hold yet."""
        self._phase = phase
        if status != self.state.status:
            self.state.status = status
            self._dirty = True

    @property
    def live(self) -> bool:
        """True while its cycle runs and no stop was requested: commands act on it directly
        (otherwise a stopped target is started again, or the command refused)."""
        return self.final_status is None and not self._stop.requested

    @property
    def stop_status(self) -> TargetStatus | None:
        """The status a requested stop ends with, or None when none was requested."""
        return self._stop.status if self._stop.requested else None

    @property
    def location(self) -> str:
        """Where the state lives (for users)."""
        return self._store.location

    # ----------------------------------------------------------------- start-up

    async def prepare(self) -> None:
        """Open the store: lock, recover from the log, checkpoint. Raises StateLockedError,
        StateCorruptError or StateWriteError; nothing is changed by a refusal."""
        with structlog.contextvars.bound_contextvars(target=self.spec.name):
            recovered = await self._store.open()
            try:
                await self._after_open(recovered)
            except BaseException:  # no runner will close the store: let the root go
                await self._store.close()
                raise

    async def _after_open(self, recovered: Recovered) -> None:
        """`prepare` once the store is open: state, pending reviews, the window's cost."""
        self.state = recovered.state
        self.progress = recovered.progress
        self.last_entry = recovered.last_entry
        await self.reviews.apply()
        self.prepared_cost_usd = self.state.total_cost_usd
        self._note_rate()
        since = self._budget.window_start
        if since is not None and self.prepared_cost_usd > 0:
            entries = await self._store.read_log()
            self.prepared_window_cost_usd = spent_in_window(
                ((parse_iso(e.started_at), e.cost_usd) for e in entries), since
            )

    async def _save(self) -> None:
        self._dirty = False
        await self._store.save(self.state)

    # ----------------------------------------------------------------- the cycle

    async def run(self, park: ParkHook | None = None, *, resume: bool = False) -> str | None:
        """Run the cycle until it stops; returns the final status and closes the store.
        With `park`, a turn that would wait for a slot parks the runner (engine/parking.py)
        and returns None; `run(park, resume=True)` goes on once the slot's answer came."""
        token = structlog.contextvars.bind_contextvars(target=self.spec.name)["target"]
        status: str | None = None
        try:
            status = await self._cycle(park, resume)
        except* StateWriteError as group:  # bare, or from a task group
            exc: BaseException = group
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            status = TargetStatus.ERROR
            self._enter(status, Phase.STOPPED)
            self.state.last_failure_trace = str(exc)
            self._events.publish(ev.CheckpointFailed(self.spec.name, str(exc)))
        finally:
            if not self._waits.parked:  # parked: the store stays open for the resume
                self._enter(self.state.status, Phase.STOPPED)
                await self._store.close()  # finishes even when cancelled (TargetStore.close)
            structlog.contextvars.reset_contextvars(target=token)  # not bound_contextvars: 1 kB
        self.final_status = status
        return status

    async def abandon_parked(self) -> None:
        """The daemon is torn down while this runner is parked: give back its place in the
        slots' queue (or the slot it was just given) and close its store."""
        self._stop.cancel_wait()
        if self._waits.unparked():  # the slot came as the daemon was torn down
            self._slots.release()
        self._enter(self.state.status, Phase.STOPPED)
        await self._store.close()

    async def _cycle(self, park: ParkHook | None, resume: bool) -> str | None:
        """Begin; then check -> wait -> turn until one of them finishes the target (or
        the turn parks it: None)."""
        if resume:
            ended = await self._take_turn(self._waits.unparked())
        else:
            ended = await self._begin()
        while ended is None:
            ended = await self._check()
            if ended is None and not await self._waits.before_turn():
                if (held := await self._waits.slot(park)) is None:
                    return None  # parked
                ended = await self._take_turn(held)
        return ended

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

    async def _check(self) -> str | None:
        """Apply a pending reload, then finish on a stop request or a stop condition."""
        if self._pending_spec is not None:
            await self._apply_pending_spec()
        await self.reviews.apply()
        if self._stop.requested:
            return await self._finish(self._stop.status)
        reason = self._stop_reason()
        return None if reason is None else await self._finish(reason)

    async def _take_turn(self, held: bool) -> str | None:
        """With the slot the turn took (`held`), reserve the budget and run one iteration;
        a status to finish with (budget spent, a cap's cut, a one-shot's end), or None.

        The slot comes first, then the money: a target queued for a slot holds no
        reservation (queued ones would fill a tight budget), the next to spend is the one the
        slots chose (first in line with `fcfs`, so a waiting target goes before one that just
        finished; best-ranked with `gain_per_usd`), and the slot is given back before waiting
        for the next budget window."""
        try:
            # Paused while it waited in line (`ctl pause` only wakes a resting target):
            # the slot goes back and the pause is waited out (`_check`, `before_turn`).
            if not held or self._stop.requested or self.state.paused:
                return None
            reservation = await self._waits.reserve_in_turn()
            if self._stop.requested:
                return None
            if reservation is None:
                return await self._finish(TargetStatus.STOPPED_BUDGET)
            if isinstance(reservation, WindowFull):
                if held:
                    held = False
                    self._slots.release()
                await self._waits.window(reservation)
                return None
            held = False  # _run_reserved gives it back
            await self._run_reserved(reservation, have_slot=True)
        finally:
            if held:
                self._slots.release()
        return await self._after_iteration()

    async def _run_reserved(self, reservation: Reservation, *, have_slot: bool) -> None:
        """Run one iteration on `reservation` (taking a slot unless one is held), then
        settle the reservation with what it cost and give the slot back."""
        cost_usd = 0.0
        got_slot = have_slot
        try:
            if not got_slot:
                got_slot = bool(await self._waits.slot())  # no `park`: never None
            due = not self._stop.requested  # and the deadline, checked again after the waits
            due = due and (self._deadline_at is None or now_utc() < self._deadline_at)
            if got_slot and due and self._budget.may_start(self.spec.name):
                cost_usd = await Iteration(self).run()
        finally:
            if got_slot:
                self._slots.release()
            self._budget.settle(reservation, cost_usd)

    async def _after_iteration(self) -> str | None:
        """Finish after a cap's cut, and after the one run of a one-shot target."""
        if self._stop.cut_status is not None:
            return await self._finish(self._stop.cut_status)
        if not self._one_shot or self._stop.requested:
            return None
        stop = self._stop_reason()
        if stop is None:
            self._events.publish(ev.ScheduledExit(self.spec.name))
        return await self._finish(stop or self.state.status, announce=stop is not None)

    async def _finish(self, status: str, *, announce: bool = True) -> str:
        if status in REQUESTED_STOPS and self.state.is_final:
            status = self.state.status
        needed = self._stop.needs_checkpoint(status, self._phase, self._dirty)
        self._enter(status, Phase.STOPPED)
        self.state.in_flight = None
        if needed:
            with anyio.CancelScope(shield=True):
                await self._save()
        self._events.publish(
            ev.TargetStopped(
                target=self.spec.name,
                status=status,
                reason=self.describe(status),
                iterations_completed=self.state.iterations_completed,
                max_iterations=self.max_iterations_now,
                total_cost_usd=self.state.total_cost_usd,
                estimated_usd=self.progress.estimated_cost_usd,
                best_score=self.progress.best,
                best_iteration=self.progress.best_iteration,
                location=self.location,
                announce=announce,
            )
        )
        return status

    # ----------------------------------------------------------------- commands

    def request_stop(
        self, grace_s: float, status: TargetStatus = TargetStatus.STOPPED_SIGNAL
    ) -> None:
        """Start no new iteration; let a running one finish within `grace_s`, then stop it."""
        self._stop.request(grace_s, status)

    def force_stop(self) -> None:
        """Skip the grace period: stop a running iteration now."""
        self._stop.force()

    # Operator commands (`autoloopd ctl`); each is saved at once so it survives a restart.

    async def set_paused(self, paused: bool) -> None:
        """Pause (a running iteration finishes, then no new one starts) or resume."""
        if self.state.paused != paused:
            self.state.paused = paused
            await self._save()
        self._wake()

    def run_now(self) -> None:
        """Skip the current cooldown, schedule or backoff wait, once."""
        self._waits.run_now = True
        self._wake()

    async def extend(self, iterations: int, cost_usd: float) -> None:
        """Raise this target's iteration and cost limits (kept in its state)."""
        self.state.extra_iterations += iterations
        self.state.extra_cost_usd = round(self.state.extra_cost_usd + cost_usd, 6)
        await self._save()
        self._wake()

    async def clear_stop(self) -> None:
        """Clear the circuit breaker and a final status, so the target runs again."""
        self.state.consecutive_errors = self.progress.consecutive_errors = 0
        if self.state.is_final:
            self._enter(TargetStatus.IDLE, self._phase)
        await self._save()
        self._wake()

    def _wake(self) -> None:
        """End a pause, cooldown, schedule or budget-window wait now."""
        if self._phase.is_waiting:
            self._stop.cancel_wait()

    def update_spec(self, spec: TargetSpec) -> None:
        """Apply changed limits from the next iteration on (config reload)."""
        self._pending_spec = None if spec == self.spec else spec

    @property
    def latest_spec(self) -> TargetSpec:
        """The spec of the newest configuration: a pending one, else the one in use."""
        return self._pending_spec or self.spec

    async def _apply_pending_spec(self) -> None:
        assert self._pending_spec is not None
        old, self.spec, self._pending_spec = self.spec, self._pending_spec, None
        if (old.weights, old.min_improvement) != (self.spec.weights, self.spec.min_improvement):
            # Weighted scores and the plateau streak depend on these: rebuild from the log.
            entries = await self._store.read_log()
            self.progress = Progress.from_entries(  # with the reviewers' verdicts it counts
                entries, self.spec.weights_map, self.spec.min_improvement, self.progress.overrides
            )
            self.progress.apply_to(self.state)
        self._dirty |= self.state.apply_limits(self.spec)  # stored: a stop must write it
        log.info("limits_applied")

    # ----------------------------------------------------------------- limits and estimates

    def limits(self) -> stops.Limits:
        """The limits the stop conditions compare against."""
        s = self.spec
        return stops.Limits(
            self.max_iterations_now, self.max_cost_usd_now,
            s.plateau_window, s.min_improvement, s.oscillation_window,
        )  # fmt: skip

    @property
    def max_iterations_now(self) -> int:
        """The iteration limit with what `ctl extend` added."""
        return self.spec.max_iterations + self.state.extra_iterations

    @property
    def max_cost_usd_now(self) -> float:
        """The cost limit with what `ctl extend` added."""
        return self.spec.max_cost_usd + self.state.extra_cost_usd

    def _stop_reason(self) -> TargetStatus | None:
        if self.state.consecutive_errors >= self.spec.max_consecutive_errors:
            return TargetStatus.ERROR
        reason = stops.stop_reason(self.progress.view(), self.limits()) or stops.goal_reason(
            stops.Goals(self.spec.target_score, self.spec.min_gain_per_usd, self._deadline_at),
            best=self.progress.best,
            scored=len(self.progress.scores),
            gain_per_usd=lambda: self._waits.gain_per_usd(upper=True),
            now=now_utc(),
        )
        return None if reason is None else TargetStatus(reason)

    def describe(self, status: str) -> str:
        """Why the target stopped (or would stop) with `status`, in words."""
        if status == TargetStatus.STOPPED_BUDGET and self._waits.refused:
            return self._waits.refused
        sentence = stops.plain_sentence(status) or stops.stop_sentence(
            status,
            self.progress.view(),
            self.limits(),
            consecutive_errors=self.state.consecutive_errors,
            max_consecutive_errors=self.spec.max_consecutive_errors,
            last_failure=self.state.last_failure_trace,
            budget_spent_usd=self._budget.spent_usd,
            budget_cap_usd=self._budget.cap_usd,
            next_run_at=self.state.next_run_at,
            operator=self.state.last_operator_action,
        )
        return status if sentence is None else sentence

    def _wall_time_priced(self) -> bool:
        """True when the next run is metered by wall time: its orchestrator did not report
        its cost last time (or has not run yet) and the rate is not zero."""
        return metered_live(self.spec, self.progress.reports_cost)

    def _note_rate(self) -> None:
        """Tell the fleet how fast this target has been improving."""
        self._budget.rates[self.spec.name] = closure(self.progress.scores)
