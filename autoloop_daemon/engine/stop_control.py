"""When a target runner must stop, and the two cancel scopes a stop ends.

A stop request (signal, `ctl stop`, reload, cluster) ends the runner's wait at once and its
running iteration at the stop deadline (now + grace). A cap's live cut (policy/live_cost.py,
through the budget's meter) ends the running iteration when the money runs out, and decides
the status the runner stops with afterwards.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.policy.cycle import stop_needs_checkpoint
from autoloop_daemon.policy.live_cost import REASON_BUDGET, REASON_TARGET_COST, StopAt
from autoloop_daemon.vocab import Phase, TargetStatus

T = TypeVar("T")

# The stop a cap's live cut leads to (a per-iteration limit only fails the run).
CUT_STATUS = {
    REASON_BUDGET: TargetStatus.STOPPED_BUDGET,
    REASON_TARGET_COST: TargetStatus.STOPPED_COST,
}


def cancel_soon(scope: anyio.CancelScope) -> None:
    """Cancel `scope` from the event loop's next callback rather than from the calling task.

    anyio writes the calling task into the cancel's reason, and formatting an asyncio task
    (its coroutine and frame) costs ~15 µs: 0.15 s or more on the event loop when a
    shutdown stops 10,000 waiting targets. From a loop callback there is no calling task.
    A wait entered before the callback runs cancels itself (`interruptible` checks the
    stop request on entry), and cancelling a scope that has ended does nothing.
    """
    asyncio.get_running_loop().call_soon(scope.cancel)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class StopControl:
    """One runner's stop request, its deadline, a cap's cut, and the scopes they cancel."""

    __slots__ = (
        "_cut",
        "_deadline_s",
        "_iter_scope",
        "_wait_scope",
        "_waiting_on",
        "cut_status",
        "requested",
        "status",
    )

    def __init__(self) -> None:
        """No stop requested, no wait or iteration in progress."""
        self.requested = False
        self.status = TargetStatus.STOPPED_SIGNAL  # what a requested stop ends with
        self.cut_status: TargetStatus | None = None  # the stop a cap's cut leads to
        self._deadline_s: float | None = None  # when the running iteration must end
        self._cut: StopAt | None = None  # when a cap says the running iteration must end
        self._wait_scope: anyio.CancelScope | None = None
        self._waiting_on: asyncio.Future[bool] | None = None  # of `sleep` or `slot`
        self._iter_scope: anyio.CancelScope | None = None

    @staticmethod
    def needs_checkpoint(status: str, phase: Phase, dirty: bool) -> bool:
        """Whether stopping with `status` from `phase` writes the state (a resting target
        stopped by signal does not: policy.cycle.stop_needs_checkpoint)."""
        return stop_needs_checkpoint(status, phase, dirty)

    def request(self, grace_s: float, status: TargetStatus) -> None:
        """Stop with `status` (the first request's): end a wait now, an iteration in `grace_s`."""
        if not self.requested:
            self.status = status
        self.requested = True
        deadline_s = anyio.current_time() + grace_s
        if self._deadline_s is None or deadline_s < self._deadline_s:
            self._deadline_s = deadline_s
        if self._wait_scope is not None:
            cancel_soon(self._wait_scope)
        if self._waiting_on is not None:
            _resolve(self._waiting_on, False)
        self._apply_deadline()

    def force(self) -> None:
        """Skip the grace period: end the running iteration now."""
        self.request(0.0, self.status)

    async def interruptible(self, awaitable: Awaitable[T]) -> T | None:
        """Await `awaitable` unless a stop request (or `cancel_wait`) ends the wait: None."""
        with anyio.CancelScope() as scope:
            self._wait_scope = scope
            if self.requested:
                scope.cancel()
            try:
                return await awaitable
            finally:
                self._wait_scope = None
        return None

    async def sleep(self, seconds: float) -> bool:
        """Sleep `seconds`; False when a stop request (or `cancel_wait`) ended it first.

        A bare future and a timer, not a cancel scope around `anyio.sleep`: most targets of
        a fleet rest here, and the scope with its sets and the sleep's frames were ~1 kB
        each (issue 24, memory). Cancellation from outside reaches the future as usual.
        """
        if self.requested:
            await anyio.lowlevel.checkpoint()
            return False
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_at(loop.time() + max(0.0, seconds), _resolve, done, True)
        self._waiting_on = done
        try:
            return await done
        finally:
            timer.cancel()
            self._waiting_on = None

    async def slot(self, slots: RankedSlots, rank: Callable[[], float]) -> bool:
        """Take a slot of `slots` (waiting with `rank`); False, holding none, when a stop
        request (or `cancel_wait`) ended the wait first. No cancel scope: see `sleep`."""
        if self.requested:
            await anyio.lowlevel.checkpoint()
            return False
        waiter = slots.join(rank)
        if waiter is None:
            await slots.taken()
            return True
        self._waiting_on = waiter.granted_future  # False withdraws it (RankedSlots.wait)
        try:
            return await slots.wait(waiter)
        finally:
            self._waiting_on = None

    def park(self, answer: asyncio.Future[bool]) -> None:
        """A slot's answer waited for by no task (engine/parking.py): a stop request
        resolves it False, as it ends `slot`."""
        self._waiting_on = answer

    def unpark(self) -> None:
        """The parked wait is over."""
        self._waiting_on = None

    def cancel_wait(self) -> None:
        """End the wait in progress now, if there is one."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        if self._waiting_on is not None:
            _resolve(self._waiting_on, False)

    # The running iteration: its scope ends at the stop deadline or when a cap says so.

    def clear_cut(self) -> None:
        """Forget the last iteration's cut (before the next iteration's meter opens)."""
        self._cut = None

    def on_plan(self, plan: StopAt) -> None:
        """The meter's latest plan: a cap's cut moves the running iteration's end."""
        self._cut = plan if plan.reason is not None else None
        self._apply_deadline()

    def iteration_started(self, scope: anyio.CancelScope) -> None:
        """`scope` holds the running iteration: give it the current deadline."""
        self._iter_scope = scope
        self._apply_deadline()

    def iteration_ended(self) -> None:
        """The running iteration's scope is left: stops and cuts no longer move it."""
        self._iter_scope = None

    def cut_reason(self) -> str | None:
        """The reason of the cap whose cut ended the run that came back without a result.

        None when no cut was due (the run ended for another reason). A cut by the budget or
        by the target's cost also sets `cut_status`, the stop the runner ends with.
        """
        cut = self._cut
        if cut is None or cut.reason is None or anyio.current_time() < cut.at_s - 1e-3:
            return None
        if cut.reason in CUT_STATUS:
            self.cut_status = CUT_STATUS[cut.reason]
        return cut.reason

    def _apply_deadline(self) -> None:
        if self._iter_scope is None:
            return
        deadline_s = math.inf if self._deadline_s is None else self._deadline_s
        if self._cut is not None:
            deadline_s = min(deadline_s, self._cut.at_s)
        # Set only when it moves: each set re-arms a loop timer, and the budget replans
        # every running target's cut whenever any meter opens or closes (issue 24).
        if self._iter_scope.deadline != deadline_s:
            self._iter_scope.deadline = deadline_s
