"""autoloopd as the reaper of its orchestrators' descendants: nothing they start outlives them.

`become_subreaper()` (PR_SET_CHILD_SUBREAPER, Linux >= 3.4; cli/serve.py calls it once
before the first child starts) makes every process that an orchestrator's tree orphans --
one that double-forked and called `setsid()`, with or without its environment -- a child of
autoloopd instead of init. When a run ends, however it ends, `sweep` stops every such
adopted process that no running run can own (SIGTERM and SIGCONT, the grace period,
SIGKILL) and reaps it, in rounds, since stopping one re-parents its own children to us.
Only the pids found that way are waited for: asyncio's own children (the orchestrators,
registered with `child_started`) are never touched, so their exit status is never stolen.

Who owns an adopted process: a running run whose AUTOLOOPD_RUN marker it carries, or whose
process group it is in. A process that both left its session and scrubbed its environment
carries neither, so the next run to end stops it, even if it came from a run still going.

Where the subreaper cannot be set (not Linux, or a kernel without it), `sweep` falls back to
the processes that still carry the finished run's marker. In a process that never called
`become_subreaper` (tests driving `run_in_group` directly, the benchmarks) it does nothing.
A daemon that is SIGKILLed takes its adoptions with it: its orphans go to init, where a
restart finds those that kept their marker (see recovery.py) and systemd's cgroup
(KillMode=mixed) the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
from collections import Counter
from collections.abc import Iterator

import anyio
import structlog

from autoloop_daemon.runs.procfs import (
    children_of,
    find_marked,
    proc_stat,
    run_marker_of,
    signal_group,
    stop_pids,
)

__all__ = [
    "FINAL_GRACE_S",
    "become_subreaper",
    "child_exited",
    "child_started",
    "run_registered",
    "spawning",
    "sweep",
]

PR_SET_CHILD_SUBREAPER = 36
FINAL_GRACE_S = 5.0  # SIGTERM -> SIGKILL for what is left when the daemon stops
_MAX_ROUNDS = 8  # depth of process trees to unwind; each round stops one generation

_log = structlog.get_logger("autoloopd.reaper")

# None: never asked (sweep does nothing); True: we are the subreaper; False: we could not be.
_subreaper: bool | None = None
_live_markers: Counter[str] = Counter()  # markers of runs in progress
_live_children: set[int] = set()  # their direct children (each leads its own group)
# Spawns under way (see `spawning`): token -> the event a waiting sweep set up, or None.
_spawning: dict[int, anyio.Event | None] = {}
_tokens = itertools.count()


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; True if that worked.

    Call it once, before the first child starts, and only in a process whose children are
    all runs (the daemon): it also arms `sweep`, which stops any child of this process that
    no running run owns (see the module doc).
    """
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # no libc prctl: not Linux
        ok = False
    _subreaper = ok
    if not ok:
        _log.warning(
            "subreaper_unavailable",
            hint="orphans of orchestrators are found by their AUTOLOOPD_RUN marker only",
        )
    return ok


@contextlib.contextmanager
def run_registered(marker: str | None) -> Iterator[None]:
    """Mark a run as in progress for the block: its marker's processes are not swept."""
    if marker is None:
        yield
        return
    _live_markers[marker] += 1
    try:
        yield
    finally:
        _live_markers[marker] -= 1
        if _live_markers[marker] <= 0:
            del _live_markers[marker]


def child_started(pid: int) -> None:
    """Record a direct child (an orchestrator): it and its process group are not swept."""
    _live_children.add(pid)


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Hold a sweep's verdicts for the block: start a child and `child_started` it inside.

    A child that has been created and not yet registered (a worker thread between its
    clone and its exec, or asyncio connecting a new child's pipes) carries neither a run's
    marker nor a known pid, so a sweep would take it for an orphan. A sweep that finds
    candidates while spawns are under way waits for those spawns to finish and judges again.
    """
    token = next(_tokens)
    _spawning[token] = None
    try:
        yield
    finally:
        event = _spawning.pop(token)
        if event is not None:
            event.set()


async def _spawns_done(tokens: list[int]) -> None:
    """Wait until each of the spawns `tokens` has finished (each takes milliseconds)."""
    for token in tokens:
        if token in _spawning:
            event = _spawning[token]
            if event is None:
                event = _spawning[token] = anyio.Event()
            await event.wait()


def child_exited(pid: int) -> None:
    """Forget a direct child once its exit status has been collected."""
    _live_children.discard(pid)


async def sweep(marker: str | None, grace_s: float) -> list[int]:
    """Stop and reap what ended runs left behind; returns the pids that were stopped.

    As the subreaper: every adopted process no running run owns (the module doc says which),
    generation after generation. Otherwise: the live processes carrying `marker` (the run
    that just ended; None finds nothing). Call it shielded, after the run's own process
    group has been stopped and the run is no longer registered.
    """
    if _subreaper is None:
        return []
    stopped: list[int] = []
    for _ in range(_MAX_ROUNDS):
        if _subreaper:
            if not _may_have_adopted():
                break
            candidates = await anyio.to_thread.run_sync(children_of, os.getpid())
            victims = [pid for pid in candidates if _unowned(pid, marker)]
            if victims and _spawning:  # one of them may be a child being spawned
                await _spawns_done(list(_spawning))
                victims = [pid for pid in victims if _unowned(pid, marker)]
        elif marker is not None:
            victims = await anyio.to_thread.run_sync(find_marked, marker)
        else:
            victims = []
        if not victims:
            break
        _log.warning("leftover_processes_stopped", pids=victims, run=marker)
        for pid in victims:
            stat = proc_stat(pid)
            if stat is not None and stat.pgrp == pid and pid not in _live_children:
                with contextlib.suppress(ValueError):  # our own group is refused
                    signal_group(pid, signal.SIGTERM)  # its group too: fewer rounds
        await stop_pids(victims, grace_s)
        _reap(victims)
        stopped += victims
    return stopped


def _may_have_adopted() -> bool:
    """False when this process has no child, or when each of its children is one it started
    and still knows (a run's leader, the death watch, an alert command): then nothing was
    adopted and /proc need not be scanned. The death watch lives as long as the daemon, so
    "no child at all" alone would never hold."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except (OSError, AttributeError):
        return True
    known = _main_thread_children()
    return known is None or not known <= _live_children


def _main_thread_children() -> set[int] | None:
    """The children of this process's main thread, from the kernel's own list (one small
    read of /proc/self/task/<pid>/children); None when it cannot be read.

    The main thread runs the event loop, which starts every child, and it is the thread an
    orphan is re-parented to while it lives (the kernel picks the thread group's leader)."""
    try:
        fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) >= 1 << 16:
        return None  # more children than one read holds: scan
    return {int(pid) for pid in data.split()}


def _unowned(pid: int, ended_marker: str | None) -> bool:
    """True when `pid` is an adopted child of ours that no running run owns."""
    if pid in _live_children:
        return False
    stat = proc_stat(pid)
    if stat is None or stat.ppid != os.getpid():
        return False  # gone, or not ours (any more)
    if stat.pgrp in _live_children:
        return False  # still in a running run's process group
    marker = run_marker_of(pid)
    return marker is None or marker == ended_marker or marker not in _live_markers


def _reap(pids: list[int]) -> None:
    """Collect the exit status of adopted processes that have died (never blocks)."""
    for pid in pids:
        if pid in _live_children:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
