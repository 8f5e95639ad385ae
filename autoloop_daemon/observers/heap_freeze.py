"""The fleet's long-lived objects kept out of the cyclic garbage collector's way.

At 10,000 targets start-up makes hundreds of thousands of tracked objects (specs, states,
runners, stores) that live as long as the daemon, and the collector's full (generation 2)
passes walked them all: 15 of them, up to 0.4 s each, in one 10,000-target warm start and
stop, each one stalling the event loop and with it every target and every control request.
So the collector is paused while the targets load (`TargetsLoading`; nothing loading makes
cycles that must go at once), and once they are in (`DaemonReady`) the heap is collected
once and frozen (`gc.freeze`): from then on a full pass walks only what was made since.

The targets' tasks start after `DaemonReady`: each one's task, cancel scope, handle and
chain of coroutines down to the wait it rests in (~35 tracked objects, 350,000 at 10,000
targets) came after that freeze, and every full pass walked them again: ~100 ms each, six
of them while the 10,000 tasks started (the first `status` after READY took 1.7 s) and
about one per `status` afterwards. So when `run` watches the fleet, the collector stays
paused until the launched fleet has settled, or `SETTLE_LIMIT_S` after the launch, and what
the launch made is collected and frozen then, once (~0.15 s at 10,000 targets). Settled:
every runner has begun its cycle (`TargetStarting`: its task ran, and rests in its first
wait, a slot or the store) or was past its start already (a reload keeps the runners it
does not change).

Objects freed by their reference count are freed as before; only reference cycles among
the frozen objects would outlive their use, so after a reload (targets added, changed or
removed) the heap is unfrozen, collected once and frozen again, and (with `run`) frozen
once more when the reloaded fleet has settled.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from autoloop_daemon.engine import events as ev
from autoloop_daemon.vocab import Phase

SETTLE_LIMIT_S = 60.0


class _Named(Protocol):
    @property
    def name(self) -> str:
        """The target's name."""


class Launched(Protocol):
    """What `run` looks at in a target's runner."""

    @property
    def phase(self) -> Phase:
        """Where the runner is in its cycle now."""

    @property
    def spec(self) -> _Named:
        """The target it runs."""


class HeapFreeze:
    """A bus subscriber: no collection while the fleet loads, then freeze what it made;
    refreeze after a reload. With `run`, each freeze waits until the launched fleet has
    settled."""

    def __init__(self, limit_s: float = SETTLE_LIMIT_S) -> None:
        """Wait at most `limit_s` for a launched fleet to settle."""
        self._limit_s = limit_s
        self._launched: anyio.Event | None = None  # made by `run`, in the event loop
        self._started: set[str] = set()  # targets whose runner's cycle began (and goes on)
        self._pending: set[str] = set()  # launched runners whose cycle has not begun
        self._settled: anyio.Event | None = None  # set when `_pending` empties

    def __call__(self, event: ev.Event) -> None:
        """Act on the events that begin and end the fleet's long-lived set of objects."""
        if isinstance(event, ev.TargetStarting):
            if self._launched is not None:
                self._started.add(event.target)
                self._pending.discard(event.target)
                if not self._pending and self._settled is not None:
                    self._settled.set()
        elif isinstance(event, ev.TargetStopped):
            self._started.discard(event.target)  # a runner started again begins anew
        elif isinstance(event, ev.TargetsLoading):
            gc.disable()
        elif isinstance(event, ev.DaemonReady | ev.ConfigReloaded):
            gc.unfreeze()  # after a reload: a removed target's cycles can go now
            gc.collect()
            gc.freeze()
            if self._launched is None:  # no `run` watches the launch
                gc.enable()
                return
            gc.disable()  # until the targets' tasks, starting now, have settled (`run`)
            self._launched.set()

    async def run(
        self,
        fleet: Callable[[], Iterable[Launched]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """After each `DaemonReady` and `ConfigReloaded` (which pause the collector while it
        runs): once every runner of `fleet()` has begun its cycle (or `limit_s` on),
        collect, freeze and resume the collector. Runs until cancelled."""
        self._launched = anyio.Event()
        task_status.started()
        try:
            while True:
                await self._launched.wait()
                self._launched = anyio.Event()
                starting = (r.spec.name for r in fleet() if r.phase is Phase.STARTING)
                self._pending = set(starting) - self._started
                self._settled = anyio.Event()
                if not self._pending:
                    self._settled.set()
                with anyio.move_on_after(self._limit_s):
                    await self._settled.wait()
                self._settled, self._pending = None, set()
                gc.collect()  # what the launch made: the fleet before it is frozen
                gc.freeze()
                if not self._launched.is_set():  # else another launch: stay paused for it
                    gc.enable()
        finally:
            self._launched = None
            gc.enable()  # cancelled while a launch settled: never leave the collector off
