"""The fleet's long-lived objects kept out of the cyclic garbage collector's way.

At 10,000 targets start-up makes hundreds of thousands of tracked objects (specs, states,
runners, stores) that live as long as the daemon, and the collector's full (generation 2)
passes walked them all: 15 of them, up to 0.4 s each, in one 10,000-target warm start and
stop, each one stalling the event loop and with it every target and every control request.
So the collector is paused while the targets load (`TargetsLoading`; nothing loading makes
cycles that must go at once), and once they are in (`DaemonReady`) the heap is collected
once and frozen (`gc.freeze`): from then on a full pass walks only what was made since.
Objects freed by their reference count are freed as before; only reference cycles among
the frozen objects would outlive their use, so after a reload (targets added, changed or
removed) the heap is unfrozen, collected once and frozen again.
"""

from __future__ import annotations

import gc

from autoloop_daemon.engine import events as ev


class HeapFreeze:
    """A bus subscriber: no collection while the fleet loads, then freeze what it made;
    refreeze after a reload."""

    def __call__(self, event: ev.Event) -> None:
        """Act on the events that begin and end the fleet's long-lived set of objects."""
        if isinstance(event, ev.TargetsLoading):
            gc.disable()
        elif isinstance(event, ev.DaemonReady | ev.ConfigReloaded):
            gc.unfreeze()  # after a reload: a removed target's cycles can go now
            gc.collect()
            gc.freeze()
            gc.enable()
