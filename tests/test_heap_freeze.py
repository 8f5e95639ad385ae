"""`HeapFreeze`: the collector paused while the targets load, the heap collected and frozen
once they are in, and collected again (and refrozen) after a reload, so that a reference
cycle left by a removed target still goes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.observers.heap_freeze import HeapFreeze


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
