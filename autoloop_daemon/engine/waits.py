"""Everything a target runner waits for: a pause, a cooldown, a schedule tick, a failure's
backoff, the budget (a reservation, the next window) and a concurrency slot.

Each wait checkpoints a state that is ahead of the store first, and ends early on a stop
request (engine/stop_control.py); the pause, cooldown, schedule and window waits also on an
operator's command (the runner's `_wake`). The first four change the runner's status and
phase (through its `_enter`), and a new cooldown or budget window is announced once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import SlotWaiter
from autoloop_daemon.engine.budget import WindowFull
from autoloop_daemon.policy import cycle
from autoloop_daemon.policy.allocation import expected_cost_usd, gain_per_usd
from autoloop_daemon.policy.first_fit import FIRST_ESTIMATE_MINUTES, refusal
from autoloop_daemon.policy.ledger import Reservation, explain_estimate
from autoloop_daemon.policy.yield_bound import gain_per_usd_upper
from autoloop_daemon.vocab import Phase, RunStatus, TargetStatus

if TYPE_CHECKING:
    from autoloop_daemon.engine.target_runner import TargetRunner

# Parks a runner that would wait for a slot (engine/parking.py): its task ends, and a new
# one goes on once the future (the slot's answer) is resolved.
ParkHook = Callable[["TargetRunner", "asyncio.Future[bool]"], None]

log = structlog.get_logger("autoloopd.target")

# Long waits are slept in slices so a changed wall clock (NTP, suspend) is noticed.
MAX_SLEEP_SLICE_S = 60.0


class Waits:
    """A runner's waits, with the run-now request and the last wait announced.

    A part of its runner (which holds one), not a stage of it: it reads the runner's spec,
    state and last entry, and changes the status only through the runner's `_enter`.
    """

    __slots__ = (
        "_announced", "_parked", "_runner", "_turn_before_s", "refused", "run_now", "served_s"
    )  # fmt: skip

    def __init__(self, runner: TargetRunner) -> None:
        """Nothing waited for yet."""
        self._runner = runner
        self.run_now = False  # `ctl run-now`: skip the next wait once
        self._announced: str | None = None  # the next run or window an event announced
        self.refused: str | None = None  # why no reservation could ever fit (stop reason)
        self.served_s = -math.inf  # when it last got a slot (anyio clock): its fair turn
        self._turn_before_s = -math.inf
        self._parked: SlotWaiter | None = None  # in the slots' queue, with no task

    async def before_turn(self) -> bool:
        """Wait while paused or until the next run is due; True when it waited (the
        runner checks its stop conditions again after every wait)."""
        if self._runner.state.paused:
            await self._paused()
            return True
        if held := await self._runner.reviews.awaiting():  # `review_pause`
            await self._runner.reviews.hold(held)
            return True
        delay_s = self._delay_s()
        if delay_s <= 0:
            return False
        await self._cooldown(delay_s)
        return True

    async def reserve(self) -> Reservation | WindowFull | None:
        """Reserve the next iteration's estimate (checkpointing first if it will wait).

        None when the budget is exhausted, or when a stop request ended the wait (then
        nothing is held).
        """
        runner = self._runner
        spec, budget, stop = runner.spec, runner._budget, runner._stop
        estimate_usd = self.estimate()[0]
        if runner._dirty and not budget.ledger.fits(estimate_usd):
            await runner._save()  # about to wait for the budget: checkpoint first
        reservation = await stop.interruptible(
            budget.reserve(
                spec.name,
                estimate_usd,
                metered=runner._wall_time_priced() and not spec.hard_cap,
                iteration=runner.state.next_iteration,
                rate_usd_per_s=spec.cost_per_minute_usd / 60.0,
            )
        )
        if stop.requested and isinstance(reservation, Reservation):
            budget.settle(reservation, 0.0)
            return None
        if reservation is None and not stop.requested:
            self.refused = self._refusal()
        return reservation

    def estimate(self) -> tuple[float, str]:
        """The next iteration's reservation and the key it comes from (policy/ledger.py)."""
        runner = self._runner
        spec = runner.spec
        return explain_estimate(
            list(runner.progress.recent_costs),
            spec.estimated_cost_usd,
            FIRST_ESTIMATE_MINUTES * spec.cost_per_minute_usd,
            fleet_recent_usd=runner._budget.recent_costs,
            iteration_limit_usd=spec.max_iteration_cost_usd,
        )

    def gain_per_usd(self, *, upper: bool = False) -> float:
        """The estimated gain per dollar of the next iteration (policy/allocation.py), or
        its upper 90 % bound (`upper`, what `min_gain_per_usd` needs: policy/yield_bound.py),
        at the cost `policy.allocation.expected_cost_usd` expects: the slots' rank."""
        runner = self._runner
        progress = runner.progress
        cost = expected_cost_usd(
            progress.recent_costs, runner._budget.recent_costs, lambda: self.estimate()[0]
        )
        return (gain_per_usd_upper if upper else gain_per_usd)(
            progress.scores, cost, runner._budget.pooled_rate, progress.current_scores or None
        )

    def _refusal(self) -> str | None:
        """Why the refused reservation can never fit (None: the budget is just spent)."""
        runner = self._runner
        ledger = runner._budget.ledger
        estimate, source = self.estimate()
        return refusal(
            estimate,
            source,
            left_usd=ledger.cap_usd - ledger.spent_usd,
            window_cap_usd=ledger.window_cap_usd,
        )

    async def slot(self, park: ParkHook | None = None) -> bool | None:
        """Wait for a concurrency slot (checkpointing first if it will wait); False when a
        stop request ended the wait. With `park`, a slot not free now is not waited for:
        the runner is parked (engine/parking.py) and None returned; `unparked()` gives the
        answer once `park`'s future is resolved."""
        runner = self._runner
        if runner._dirty and runner._slots.available_tokens < 1:
            await runner._save()  # about to wait for a slot: checkpoint first
        slots, stop = runner._slots, runner._stop
        rank = self._turn if slots.fair_turns else self.gain_per_usd
        if park is not None and not stop.requested:
            waiter = slots.join(rank)
            if waiter is not None:
                stop.park(waiter.granted_future)
                self._parked = waiter
                park(runner, waiter.granted_future)
                return None
            await slots.taken()
        elif not await stop.slot(slots, rank):
            return False
        self._served()
        return True

    @property
    def parked(self) -> bool:
        """True while the runner waits for a slot with no task (between `slot` returning
        None and `unparked`)."""
        return self._parked is not None

    def unparked(self) -> bool:
        """The parked runner's slot: True when granted; False, holding none, when a stop
        request withdrew it (one that has not been answered yet is withdrawn now)."""
        waiter, self._parked = self._parked, None
        assert waiter is not None
        runner = self._runner
        runner._stop.unpark()
        if runner._slots.settle(waiter):
            self._served()
            return True
        return False

    def _served(self) -> None:
        self._turn_before_s, self.served_s = self.served_s, anyio.current_time()

    def _turn(self) -> float:
        """The fair-turn rank: the longer since this target last got a slot, the higher."""
        return -self.served_s

    async def window(self, full: WindowFull) -> None:
        """The budget window's cap is reached: wait (`waiting_budget`) until it ends."""
        runner = self._runner
        self.served_s = self._turn_before_s  # the slot it gave back was no turn
        runner._enter(TargetStatus.WAITING_BUDGET, Phase.WAITING)
        reset_at = to_iso(full.reset_at)
        if runner.state.next_run_at != reset_at:  # status shows when it will really run
            runner.state.next_run_at, runner._dirty = reset_at, True
        if runner._dirty:
            await runner._save()
        if self._announced != reset_at:
            self._announced = reset_at
            runner._events.publish(ev.WaitingBudget(runner.spec.name, reset_at))
        delay_s = (full.reset_at - now_utc()).total_seconds()
        await runner._stop.sleep(min(max(0.0, delay_s) + 0.01, MAX_SLEEP_SLICE_S))

    async def reserve_in_turn(self) -> Reservation | WindowFull | None:
        """`reserve`, but with fair turns a full window is waited out holding the slot (the
        target was first in line and stays so; the window is full for everyone else). A
        pause or a reload ends that early: the runner then gives the slot back."""
        runner = self._runner
        slots, stop = runner._slots, runner._stop
        reservation = await self.reserve()
        if not slots.fair_turns:
            return reservation
        served_s = self.served_s
        while isinstance(reservation, WindowFull) and not stop.requested:
            if runner.state.paused or runner._pending_spec is not None:
                return reservation
            await self.window(reservation)
            if stop.requested:
                return None
            # Still this turn, and still its place in line: targets that waited out the
            # window together queue next in the order they got their slots, not the
            # order their sleeps happened to end in.
            self.served_s = served_s
            reservation = await self.reserve()
        return reservation

    def _delay_s(self) -> float:
        """How long until the next run is due (0: now); notes a changed next run."""
        runner = self._runner
        spec, state, last = runner.spec, runner.state, runner.last_entry
        if self.run_now:
            self.run_now = False
            if state.next_run_at is not None:
                state.next_run_at, runner._dirty = None, True
            return 0.0
        failed = last is not None and last.status == RunStatus.FAILED
        wait = cycle.delay_before_next(
            now=now_utc(),
            mode=spec.mode,
            one_shot=runner._one_shot,
            consecutive_errors=state.consecutive_errors,
            last_failed_at=parse_iso(last.finished_at) if failed and last else None,
            backoff_base_s=spec.backoff_base_seconds,
            backoff_max_s=spec.backoff_max_seconds,
            next_run_at=parse_iso(state.next_run_at),
            last_finished_at=parse_iso(last.finished_at) if last else None,
            cooldown_s=spec.cooldown_s,
            schedule=spec.schedule,
        )
        stored = None if wait.next_run_at is None else to_iso(wait.next_run_at)
        if stored != state.next_run_at and not runner._one_shot:
            state.next_run_at = stored
            runner._dirty = True
        return wait.delay_s

    async def _paused(self) -> None:
        runner = self._runner
        runner._enter(TargetStatus.PAUSED, Phase.PAUSED)
        if runner._dirty:
            await runner._save()
        await runner._stop.sleep(MAX_SLEEP_SLICE_S)

    async def _cooldown(self, delay_s: float) -> None:
        """Wait `delay_s` (a slice of it at most): a schedule tick, else a cooldown."""
        runner = self._runner
        waiting = runner.spec.mode == "scheduled" and not runner.state.consecutive_errors
        status = TargetStatus.WAITING if waiting else TargetStatus.COOLDOWN
        implied = cycle.implied_status_change(runner.state.status, status, runner._dirty)
        runner._enter(status, Phase.WAITING if waiting else Phase.COOLDOWN)
        if implied:  # a restart resuming the stored wait: nothing to write
            runner._dirty = False
        elif runner._dirty:
            await runner._save()
        next_run = runner.state.next_run_at
        if status == TargetStatus.COOLDOWN and next_run and next_run != self._announced:
            self._announced = next_run
            runner._events.publish(ev.CoolingDown(runner.spec.name, delay_s, next_run))
        log.debug("waiting", seconds=round(delay_s, 3), status=status)
        await runner._stop.sleep(min(delay_s, MAX_SLEEP_SLICE_S))
