"""The targets' state roots taken before READY, so that READY=1 means every root is owned.

At start-up the daemon says READY=1 before the targets' states load (10,000 of them take
seconds). Taking an existing root's lock is much cheaper than loading it (an open, a
`flock` and a `pwrite`), so `take_roots` takes them all first, in one worker call, and each
target's store adopts its lock when its state loads (`recovery.recover`). A root that cannot
be taken now (another process holds it, it is a symbolic link, its lock file cannot be
opened) is left alone: its target's own `open` meets the same error later and reports it
exactly as before, so there is one place where such errors become a target that failed to
start.

A root that does not exist yet holds no state to protect: it is made and locked as its
target loads, as before, so a fresh fleet's directories (10,000 of them: 1.3-2 s on this
machine's ext4) are made after READY and made durable with each root's first checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from autoloop_daemon.exceptions import AutoloopError
from autoloop_daemon.storage.files.lock import StateLock

__all__ = ["release_all", "take_roots"]


def take_roots(roots: Iterable[Path]) -> dict[Path, StateLock]:
    """Lock each existing root in `roots` (blocking: run it in a worker thread); the locks
    taken, by root.

    A root listed twice is taken once; a missing one, or one whose lock cannot be taken, is
    skipped (see the module docstring). Any other exception releases what was taken and
    propagates.
    """
    taken: dict[Path, StateLock] = {}
    try:
        for root in roots:
            if root in taken:
                continue
            lock = StateLock(root)
            try:
                lock.acquire(make_root=False)
            except (AutoloopError, FileNotFoundError):
                continue
            taken[root] = lock
    except BaseException:
        release_all(taken.values())
        raise
    return taken


def release_all(locks: Iterable[StateLock]) -> None:
    """Release locks that no target adopted (a stop during start-up, the daemon's exit)."""
    for lock in locks:
        lock.release()
