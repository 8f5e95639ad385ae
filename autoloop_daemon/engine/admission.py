"""Concurrency slots handed out by priority (`[budget] allocation = "gain_per_usd"`).

`RankedSlots` stands in for `anyio.CapacityLimiter`: a target asks for a slot with a rank
(its estimated gain per dollar, read when a slot frees up, not when it started waiting);
a freed slot goes to the waiter with the highest rank. Aging keeps any target from waiting
for ever: a waiter passed over `MAX_PASSES` times goes first (oldest such waiter first).

With `fair_turns` (`allocation = "fcfs"`) the rank is the target's turn (minus when it last
got a slot): the waiter served longest ago goes first, round robin among the waiting, and a
target that just finished queues behind every one already waiting. Aging is then moot, and
a turn does not change while its target waits: it is read once, when the waiter queues, and
the waiters are kept in a heap (a grant scanned and ranked all ~1,000 waiters of a busy
fleet: 5 % of the event loop's time in bench/check.py's busy part, issue 24).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import anyio

# Aging: a waiter passed over AGING_ROUNDS times the number of waiters (at least
# MIN_PASSES times) goes first. In bench/policy.py a fixed 8 passes made the order nearly
# first come first served (ratio 1.00 at 2x the fleet's cost); on 200 worlds against round
# robin, two rounds gave 1.16 at 2x and three 1.19 (four 1.21), 1.06 at 4x for each: at a
# tight budget the forced turns go to targets the ranking had rightly left out. Three
# rounds keep most of the gain while every waiter still gets its turn.
AGING_ROUNDS = 3
MIN_PASSES = 4


@dataclass(slots=True)
class SlotWaiter:
    rank: Callable[[], float]
    seq: int
    # Set when granted. A bare future, not an anyio.Event (which wraps an asyncio.Event, a
    # deque and two more coroutine frames): most of a busy fleet's targets wait here, and
    # that was ~1 kB more per waiting target (issue 24, memory). Cancelling the waiting
    # task cancels the future, as it would the Event's.
    granted_future: asyncio.Future[bool]  # True: granted; False: withdrawn
    passes: int = 0
    granted: bool = False
    gone: bool = False  # cancelled while in the heap (fair turns): skipped when popped


@dataclass(frozen=True, slots=True)
class SlotStatistics:
    """What `statistics()` reports (the field CapacityLimiter's statistics also have)."""

    tasks_waiting: int


class RankedSlots:
    """At most `total_tokens` slots taken at once; freed ones go to the best-ranked waiter."""

    def __init__(
        self, total_tokens: int, max_passes: int | None = None, *, fair_turns: bool = False
    ) -> None:
        """`max_passes` fixes the aging limit (default: relative to the waiters);
        `fair_turns` says the ranks are turns (no aging). Nothing here can block or fail."""
        self._total = total_tokens
        self._used = 0
        self.fair_turns = fair_turns
        self._max_passes = sys.maxsize if fair_turns else max_passes
        self._waiters: list[SlotWaiter] = []  # ranked at each grant
        self._heap: list[tuple[float, int, SlotWaiter]] = []  # fair turns: (-turn, seq, waiter)
        self._waiting = 0
        self._seq = itertools.count()

    @property
    def total_tokens(self) -> int:
        """How many slots there are."""
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        self._total = value
        self._grant()

    @property
    def available_tokens(self) -> int:
        """Slots free now."""
        return max(0, self._total - self._used)

    def statistics(self) -> SlotStatistics:
        """How many wait for a slot."""
        return SlotStatistics(self._waiting)

    async def acquire(self) -> None:
        """Take a slot with no particular rank (the lowest)."""
        await self.acquire_ranked(lambda: float("-inf"))

    async def acquire_ranked(self, rank: Callable[[], float]) -> None:
        """Take a slot, waiting behind better-ranked targets; `rank` is read at each grant."""
        waiter = self.join(rank)
        if waiter is None:
            await self.taken()
        else:
            await self.wait(waiter)  # never withdrawn: True

    def join(self, rank: Callable[[], float]) -> SlotWaiter | None:
        """Take a free slot (None) or queue for one: the waiter to `wait` on."""
        if self._used < self._total and not self._waiting:
            self._used += 1
            return None
        waiter = SlotWaiter(rank, next(self._seq), asyncio.get_running_loop().create_future())
        self._waiting += 1
        if self.fair_turns:
            heapq.heappush(self._heap, (-_safe(rank), waiter.seq, waiter))
        else:
            self._waiters.append(waiter)
        return waiter

    async def taken(self) -> None:
        """The checkpoint after `join` took a free slot; cancelled there, it gives it back."""
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException:
            self.release()
            raise

    async def wait(self, waiter: SlotWaiter) -> bool:
        """True once `waiter` holds a slot; False, holding none, when its `granted_future`
        was resolved False first (a withdrawal: engine/stop_control.py)."""
        try:
            await waiter.granted_future
        except BaseException:
            self._leave(waiter)
            raise
        return self.settle(waiter)

    def settle(self, waiter: SlotWaiter) -> bool:
        """`wait` for a waiter whose task ended meanwhile (a parked target:
        engine/parking.py): True when it holds its slot; False, holding none, when it was
        withdrawn (one not answered yet is withdrawn now)."""
        answer = waiter.granted_future
        if not answer.done():
            answer.set_result(False)
        granted = not answer.cancelled() and answer.result()
        if not granted:
            self._leave(waiter)
        return granted

    def _leave(self, waiter: SlotWaiter) -> None:
        if waiter.granted:  # cancelled or withdrawn just as the slot arrived: hand it on
            self.release()
        else:
            self._waiting -= 1
            if self.fair_turns:
                waiter.gone = True
            else:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Give a slot back; the best-ranked waiter gets it."""
        self._used = max(0, self._used - 1)
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._used < self._total:
            chosen = self._pop_turn() if self.fair_turns else self._pop_ranked()
            self._waiting -= 1
            chosen.granted = True
            self._used += 1
            if not chosen.granted_future.done():  # done: its task hands it on (`_leave`)
                chosen.granted_future.set_result(True)

    def _pop_turn(self) -> SlotWaiter:
        while True:
            waiter = heapq.heappop(self._heap)[2]
            if not waiter.gone:
                return waiter

    def _pop_ranked(self) -> SlotWaiter:
        chosen = self._choose()
        self._waiters.remove(chosen)
        for other in self._waiters:
            other.passes += 1
        return chosen

    def _choose(self) -> SlotWaiter:
        limit = self._max_passes
        if limit is None:
            limit = max(MIN_PASSES, AGING_ROUNDS * len(self._waiters))
        aged = [w for w in self._waiters if w.passes >= limit]
        if aged:
            return min(aged, key=lambda w: w.seq)
        return max(self._waiters, key=lambda w: (_safe(w.rank), -w.seq))


def _safe(rank: Callable[[], float]) -> float:
    """A rank that cannot break the queue: NaN and errors rank lowest."""
    try:
        value = float(rank())
    except Exception:
        return float("-inf")
    return value if value == value else float("-inf")
