"""Targets that wait for a concurrency slot without a task of their own.

Most targets of a busy fleet wait in line for one of the few slots (bench/check.py's busy
part: ~930 of 1,000 behind 32 slots). A waiting task is not free: its anyio handle, cancel
scope and finished-event, the asyncio task and the frames of its await chain came to ~4 kB
a target, ~4 MB of the daemon's memory at 1,000 (issue 24, memory). A parked target holds
only its place in the slots' queue: its task has returned, and the slot's answer (granted,
or withdrawn by a stop request, a reload or an operator's command) starts a new task that
goes on from there (`TargetRunner.run(resume=True)`).

A keeper task holds the targets' task group open while any target is parked (a group with
no task left would end). Cancelled (the daemon is being torn down), it gives back what the
parked targets held and closes their stores, as their own tasks would have.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

if TYPE_CHECKING:
    from autoloop_daemon.engine.target_runner import TargetRunner


class Parking:
    """The parked runners of one targets' task group, and the keeper that holds it open."""

    __slots__ = ("_context", "_emptied", "_parked", "_resume", "_tg")

    def __init__(self, resume: Callable[[TargetRunner], Coroutine[Any, Any, None]]) -> None:
        """Runners parked here go on as `resume(runner)`, a new task of the group `open`
        names."""
        self._tg: TaskGroup | None = None
        self._context: contextvars.Context | None = None
        self._resume = resume
        # By the future that answers each. Its done-callback is one bound method run in
        # one context (the group's): a closure and a context copy per parked target were
        # ~0.3 kB more each, and the copy kept the structlog bindings of its last turn.
        self._parked: dict[asyncio.Future[bool], TargetRunner] = {}
        self._emptied: anyio.Event | None = None  # the running keeper's: set when none is left

    def open(self, tg: TaskGroup) -> None:
        """Park in, and resume as tasks of, `tg` (the targets' task group, entered by the
        calling task, whose context the resumed tasks copy) from now on."""
        self._tg = tg
        self._context = contextvars.copy_context()

    def park(self, runner: TargetRunner, answer: asyncio.Future[bool]) -> None:
        """`runner`'s task ends now; a new one starts once `answer` is resolved."""
        assert self._tg is not None, "Parking.open first"
        self._parked[answer] = runner
        if self._emptied is None:
            self._emptied = anyio.Event()
            self._tg.start_soon(self._keep, self._emptied, name="parked targets")
        answer.add_done_callback(self._answered, context=self._context)

    def _answered(self, answer: asyncio.Future[bool]) -> None:
        runner = self._parked.pop(answer, None)
        if runner is None:
            return  # abandoned by the keeper
        # The new task first, then the keeper may end: the group never runs out of tasks.
        assert self._tg is not None
        self._tg.start_soon(self._resume, runner, name=runner.spec.name)
        if not self._parked and self._emptied is not None:
            self._emptied.set()
            self._emptied = None

    async def _keep(self, emptied: anyio.Event) -> None:
        try:
            await emptied.wait()
        finally:
            if self._emptied is emptied:  # cancelled with targets still parked
                self._emptied = None
                await self._abandon()

    async def _abandon(self) -> None:
        """Give back every parked runner's place (or slot) and close its store."""
        parked, self._parked = self._parked, {}
        with anyio.CancelScope(shield=True):
            for answer, runner in parked.items():
                answer.remove_done_callback(self._answered)
                await runner.abandon_parked()
