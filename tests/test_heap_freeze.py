"""`HeapFreeze`: the collector paused while the targets load, the heap collected and frozen
once they are in, and collected again (and refrozen) after a reload, so that a reference
cycle left by a removed target still goes; and frozen once more when the launched fleet has
settled (`run`), so that full collections no longer walk the targets' tasks."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

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


def _frozen(objects: list[Node]) -> bool:
    """True when every one of `objects` is in the permanent generation (`gc.freeze`)."""
    tracked = {id(o) for o in gc.get_objects()}  # every generation but the permanent one
    return not any(id(o) in tracked for o in objects)


class Spec:
    """A runner's target, by name."""

    def __init__(self, name: str) -> None:
        self.name = name


class Runner:
    """What `HeapFreeze.run` reads of a target's runner: its phase and its target's name."""

    def __init__(self, name: str) -> None:
        self.phase = Phase.STARTING
        self.spec = Spec(name)


def _starting(name: str) -> ev.TargetStarting:
    return ev.TargetStarting(name, f"/skills/{name}", "continuous", 10, 1.0)


def _ready(n: int) -> ev.DaemonReady:
    return ev.DaemonReady(targets=n, failed=0, spent_usd=0.0, cap_usd=1.0)


@asynccontextmanager
async def _watching(fleet: list[Runner], limit_s: float = 30.0) -> AsyncIterator[HeapFreeze]:
    """A HeapFreeze whose `run` watches `fleet` until the block ends."""
    freeze = HeapFreeze(limit_s=limit_s)
    async with anyio.create_task_group() as tg:
        await tg.start(freeze.run, lambda: fleet)
        yield freeze
        tg.cancel_scope.cancel()


async def _turns() -> None:
    """Loop turns enough for `run` to act on what it was told (it takes one or two)."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


async def _launched_and_settled(freeze: HeapFreeze, name: str) -> None:
    freeze(_ready(1))
    freeze(_starting(name))
    await wait_until(gc.isenabled)


@pytest.mark.anyio
async def test_the_collector_waits_for_the_launched_fleet_then_freezes_it() -> None:
    async with _watching([Runner("a"), Runner("b")]) as freeze:
        freeze(ev.TargetsLoading(2))
        loaded = [Node() for _ in range(1000)]  # the states: made while loading
        freeze(_ready(2))
        assert _frozen(loaded) and not gc.isenabled()  # frozen; paused for the launch
        launched = [Node() for _ in range(1000)]  # the targets' tasks: made after READY
        garbage = _cycle()  # a cycle dropped meanwhile: collected, not frozen
        freeze(_starting("a"))
        await _turns()
        assert not gc.isenabled() and not _frozen(launched)  # "b" has not begun
        freeze(_starting("b"))  # it waits for a slot: still STARTING, but begun
        await wait_until(gc.isenabled)
        assert _frozen(launched)
        assert garbage() is None
    assert gc.isenabled()


@pytest.mark.anyio
async def test_a_fleet_that_never_settles_is_frozen_after_the_limit() -> None:
    async with _watching([Runner("a")], limit_s=0.1) as freeze:  # "a" never begins
        freeze(_ready(1))
        launched = [Node() for _ in range(1000)]
        await wait_until(gc.isenabled)
        assert _frozen(launched)


@pytest.mark.anyio
async def test_a_reload_pauses_the_collector_until_its_new_runners_begin() -> None:
    fleet = [Runner("a")]
    async with _watching(fleet) as freeze:
        await _launched_and_settled(freeze, "a")
        fleet[0].phase = Phase.COOLDOWN  # a runner the reload keeps: past its start
        fleet.append(Runner("b"))  # one it adds: not begun yet
        freeze(ev.ConfigReloaded(("b",), (), (), 1.0))
        assert not gc.isenabled()  # collected and frozen again, then paused
        added = [Node() for _ in range(1000)]
        await _turns()
        assert not gc.isenabled() and not _frozen(added)
        freeze(_starting("b"))
        await wait_until(gc.isenabled)
        assert _frozen(added)


@pytest.mark.anyio
async def test_runners_that_began_before_a_reload_was_announced_count_as_begun() -> None:
    fleet = [Runner("a")]  # "a" begins, then waits for a slot, STARTING, for a long time
    async with _watching(fleet) as freeze:
        await _launched_and_settled(freeze, "a")
        fleet.append(Runner("b"))
        freeze(_starting("b"))  # launched by the reload, began before ConfigReloaded
        freeze(ev.ConfigReloaded(("b",), (), (), 1.0))
        assert not gc.isenabled()
        await wait_until(gc.isenabled)  # neither is waited for: both began


@pytest.mark.anyio
async def test_a_target_started_again_must_begin_again() -> None:
    fleet = [Runner("a")]
    async with _watching(fleet) as freeze:
        await _launched_and_settled(freeze, "a")
        freeze(
            ev.TargetStopped("a", "stopped_signal", "stopped", 1, 10, 0.5, 0.0, None, None, "/s")
        )
        fleet[0] = Runner("a")  # its new runner, not begun
        freeze(ev.ConfigReloaded((), (), ("a",), 1.0))
        await _turns()
        assert not gc.isenabled()
        freeze(_starting("a"))
        await wait_until(gc.isenabled)


@pytest.mark.anyio
async def test_a_cancelled_watch_leaves_the_collector_running() -> None:
    async with _watching([Runner("a")]) as freeze:  # "a" never begins
        freeze(_ready(1))
        await _turns()
        assert not gc.isenabled()
    # the block's end cancelled `run` while the launch settled
    assert gc.isenabled()
