"""`HeapFreeze`: the collector paused while the targets load, the heap collected and frozen
once they are in, and collected again (and refrozen) after a reload, so that a reference
cycle left by a removed target still goes; and frozen once more when the launched fleet has
settled (`run`), so that full collections no longer walk the targets' tasks."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import anyio
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.observers.heap_freeze import HeapFreeze
from autoloop_daemon.vocab import Phase
from tests.helpers.wait import wait_until


class Node:
    """An object that can sit in a reference cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _gc_restored() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_loading_pauses_the_collector_and_ready_collects_then_freezes() -> None:
    freeze = HeapFreeze()
    freeze(ev.TargetsLoading(3))
    assert not gc.isenabled()
    garbage = _cycle()  # a cycle made while loading: kept until the fleet is in
    for _ in range(100_000):  # far past the automatic thresholds: none runs
        Node()
    assert garbage() is not None
    freeze(ev.DaemonReady(targets=3, failed=0, spent_usd=0.0, cap_usd=1.0))
    assert gc.isenabled() and gc.get_freeze_count() > 0
    assert garbage() is None  # collected before the freeze, not frozen with the rest


def test_a_reload_collects_cycles_that_were_frozen() -> None:
    freeze = HeapFreeze()
    kept = Node()
    kept.other = Node()
    kept.other.other = kept
    watched = weakref.ref(kept)
    freeze(ev.DaemonReady(targets=1, failed=0, spent_usd=0.0, cap_usd=1.0))
    del kept  # a removed target's cycle, frozen with the fleet
    gc.collect()
    assert watched() is not None  # frozen: a full collection does not look at it
    freeze(ev.ConfigReloaded(("b",), ("a",), (), 1.0))
    assert watched() is None and gc.get_freeze_count() > 0 and gc.isenabled()


class Runner:
    """What `HeapFreeze.run` reads of a target's runner: its phase."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING


class Fleet:
    """The runners `HeapFreeze.run` is given, counting how often it looked."""

    def __init__(self, n: int) -> None:
        self.runners = [Runner() for _ in range(n)]
        self.looks = 0

    def __call__(self) -> list[Runner]:
        self.looks += 1
        return self.runners


def _frozen_after_ready(freeze: HeapFreeze) -> int:
    freeze(ev.DaemonReady(targets=2, failed=0, spent_usd=0.0, cap_usd=1.0))
    return gc.get_freeze_count()


@pytest.mark.anyio
async def test_the_launched_fleet_is_frozen_once_every_runner_is_past_its_start() -> None:
    freeze, fleet = HeapFreeze(poll_s=0.005, limit_s=30.0), Fleet(2)
    async with anyio.create_task_group() as tg:
        await tg.start(freeze.run, fleet)
        at_ready = _frozen_after_ready(freeze)
        launched = [Node() for _ in range(1000)]  # the targets' tasks: made after READY
        garbage = _cycle()  # a cycle dropped meanwhile: collected, not frozen
        fleet.runners[0].phase = Phase.COOLDOWN
        await wait_until(lambda: fleet.looks >= 5)
        # One runner still starting: no refreeze (frozen objects freed meanwhile lower it).
        assert gc.get_freeze_count() < at_ready + len(launched)
        fleet.runners[1].phase = Phase.RUNNING
        await wait_until(lambda: gc.get_freeze_count() >= at_ready + len(launched))
        assert garbage() is None
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_fleet_that_never_settles_is_frozen_after_the_limit() -> None:
    freeze, fleet = HeapFreeze(poll_s=0.005, limit_s=0.1), Fleet(1)  # stays STARTING
    async with anyio.create_task_group() as tg:
        await tg.start(freeze.run, fleet)
        at_ready = _frozen_after_ready(freeze)
        launched = [Node() for _ in range(1000)]
        await wait_until(lambda: gc.get_freeze_count() >= at_ready + len(launched))
        assert fleet.runners[0].phase is Phase.STARTING
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_reload_is_followed_by_another_refreeze() -> None:
    freeze, fleet = HeapFreeze(poll_s=0.005, limit_s=30.0), Fleet(1)
    fleet.runners[0].phase = Phase.COOLDOWN
    async with anyio.create_task_group() as tg:
        await tg.start(freeze.run, fleet)
        at_ready = _frozen_after_ready(freeze)
        first = [Node() for _ in range(1000)]
        await wait_until(lambda: gc.get_freeze_count() >= at_ready + len(first))
        freeze(ev.ConfigReloaded(("b",), (), (), 1.0))  # unfreezes, collects, refreezes
        at_reload = gc.get_freeze_count()
        second = [Node() for _ in range(1000)]  # the reloaded targets' tasks
        await wait_until(lambda: gc.get_freeze_count() >= at_reload + len(second))
        tg.cancel_scope.cancel()
