"""The targets' state roots taken before READY, so that READY=1 means every root is owned.

At start-up the daemon says READY=1 before the targets' states load (10,000 of them take
seconds). Taking each root's lock is much cheaper than loading it (an open, a `flock` and
a `pwrite`), so `take_roots` takes them all first, in one worker call, and each target's
store adopts its lock when its state loads (`recovery.recover`). A root that cannot be
taken now (another process holds it, it is a symbolic link, its lock file cannot be made)
is left alone: its target's own `open` meets the same error later and reports it exactly as
before, so there is one place where such errors are turned into a target that failed to
start.

The directories an `acquire` creates (a fresh fleet's state roots) are not fsynced here:
they travel with the lock (`TakenRoot.unsynced`) and are made durable with the root's
first checkpoint, as when the lock is taken during loading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from autoloop_daemon.exceptions import AutoloopError
from autoloop_daemon.storage.files.lock import StateLock

__all__ = ["TakenRoot", "release_all", "take_roots"]


@dataclass(frozen=True, slots=True)
class TakenRoot:
    """A state root's lock taken ahead of its load, and the directories its `acquire`
    created that are not durable yet."""

    lock: StateLock
    unsynced: tuple[Path, ...] = ()


def take_roots(roots: Iterable[Path]) -> dict[Path, TakenRoot]:
    """Lock each root in `roots` (blocking: run it in a worker thread); the ones taken.

    A root listed twice is taken once. A root whose lock cannot be taken is skipped (see
    the module docstring); any other exception releases what was taken and propagates.
    """
    taken: dict[Path, TakenRoot] = {}
    try:
        for root in roots:
            if root in taken:
                continue
            lock, made = StateLock(root), list[Path]()
            try:
                lock.acquire(unsynced=made)
            except AutoloopError:
                continue
            taken[root] = TakenRoot(lock, tuple(made))
    except BaseException:
        release_all(taken.values())
        raise
    return taken


def release_all(taken: Iterable[TakenRoot]) -> None:
    """Release locks that no target adopted (a stop during start-up, the daemon's exit)."""
    for root in taken:
        root.lock.release()
