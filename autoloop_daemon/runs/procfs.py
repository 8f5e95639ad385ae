"""Finding and stopping processes through /proc and signals.

A run's orchestrator leads its own process group (see `process.run_in_group`); these helpers
signal such a group, tell whether it or a single process still lives (zombies count as
gone), and stop it: SIGTERM, a grace period, then SIGKILL. `find_marked` lets a restarted
daemon find the orchestrators of a run it lost track of: every child carries
`AUTOLOOPD_RUN=<marker>` in its environment. All of it is Linux-specific, like the daemon.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import anyio
import structlog

__all__ = [
    "RUN_MARKER_ENV",
    "ProcStat",
    "children_of",
    "find_marked",
    "group_alive",
    "group_exists",
    "marked_processes",
    "pid_alive",
    "proc_stat",
    "run_marker_of",
    "signal_group",
    "still_marked",
    "stop_group",
    "stop_pids",
]

RUN_MARKER_ENV = "AUTOLOOPD_RUN"

_KILL_WAIT_S = 5.0  # how long SIGKILLed processes get to disappear
_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.1
_GONE_STATES = frozenset({"Z", "X", "x"})  # zombie or dead: no longer running

_log = structlog.get_logger("autoloopd.procfs")


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`; False if the group is gone (or not ours to signal).

    Refuses (ValueError) pgid 0 and 1 and the daemon's own group.
    """
    _check_pgid(pgid)
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def pid_alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie (`kill(pid, 0)` alone counts zombies)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _read_stat(pid)
    if stat is None:
        return not _proc_available()
    return stat[0] not in _GONE_STATES


def group_alive(pgid: int) -> bool:
    """True if any non-zombie process belongs to process group `pgid` (scans /proc)."""
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not _proc_available():
        return True
    for pid in _proc_pids():
        stat = _read_stat(pid)
        if stat is not None and stat[1] == pgid and stat[0] not in _GONE_STATES:
            return True
    return False


def group_exists(pgid: int) -> bool:
    """True if process group `pgid` exists, zombies included.

    The cheap first check of `group_alive` (one syscall, fine on the event loop).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat that autoloopd looks at."""

    state: str  # R, S, D, Z (zombie), ...
    ppid: int
    pgrp: int


def proc_stat(pid: int) -> ProcStat | None:
    """State, parent and process group of `pid` from /proc, or None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
    fields = data[data.rfind(b")") + 1 :].split()
    try:
        return ProcStat(fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[2]))
    except (IndexError, ValueError):
        return None


def children_of(ppid: int) -> list[int]:
    """Pids whose parent is `ppid`, zombies included (scans /proc; run it in a thread)."""
    found = []
    for pid in _proc_pids():
        stat = proc_stat(pid)
        if stat is not None and stat.ppid == ppid:
            found.append(pid)
    return found


def run_marker_of(pid: int) -> str | None:
    """The AUTOLOOPD_RUN value in the environment `pid` was started with, or None.

    None too when it has none, is gone, or its environment cannot be read (a zombie's).
    """
    prefix = f"{RUN_MARKER_ENV}=".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode("utf-8", "surrogateescape")
    return None


def marked_processes() -> dict[int, str]:
    """pid -> AUTOLOOPD_RUN marker of every live process carrying one (this process never):
    one pass over /proc that many lookups can share (`find_marked` picks one marker's)."""
    me = os.getpid()
    found = {}
    for pid in _proc_pids():
        if pid != me and (marker := run_marker_of(pid)) is not None and pid_alive(pid):
            found[pid] = marker
    return found


def still_marked(candidates: Mapping[int, str]) -> list[int]:
    """The pids of `candidates` that still carry their marker (sorted): a pid reused since
    an earlier scan, or a process gone, is dropped."""
    return sorted(pid for pid, marker in candidates.items() if run_marker_of(pid) == marker)


def find_marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `AUTOLOOPD_RUN=<marker>` (sorted).

    Only processes whose /proc/<pid>/environ we may read are seen (our own user's, or all
    as root); this process itself is never listed.
    """
    if not marker or "\0" in marker:
        raise ValueError(f"run marker must be a non-empty string without NUL: {marker!r}")
    return sorted(pid for pid, found in marked_processes().items() if found == marker)


async def stop_group(pgid: int, grace_s: float, extra_pids: Sequence[int] = ()) -> None:
    """Stop process group `pgid` (and `extra_pids`): SIGTERM, up to `grace_s`, then SIGKILL.

    Returns once every process is gone, or after SIGKILL plus a bounded wait (a warning is
    logged if something survives). Safe when the group is already gone. Call it inside a
    shielded `CancelScope` when it must complete despite cancellation.
    """
    _check_pgid(pgid)
    me = os.getpid()
    extras = [pid for pid in extra_pids if pid > 1 and pid != me]
    for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: a stopped process cannot die
        signal_group(pgid, sig)
        for pid in extras:
            _signal_pid(pid, sig)
    if await _wait_gone(pgid, extras, grace_s):
        return
    signal_group(pgid, signal.SIGKILL)
    for pid in extras:
        _signal_pid(pid, signal.SIGKILL)
    if not await _wait_gone(pgid, extras, _KILL_WAIT_S):
        _log.warning("process_group_survived", pgid=pgid, extra_pids=extras)


async def stop_pids(pids: Sequence[int], grace_s: float) -> None:
    """Stop single processes: SIGTERM (and SIGCONT), up to `grace_s`, then SIGKILL.

    Returns once every one is gone (a zombie counts as gone), or after SIGKILL plus a bounded
    wait (a warning is logged if one survives). Never signals pid 0 or 1 or this process.
    """
    me = os.getpid()
    targets = [pid for pid in pids if pid > 1 and pid != me]
    if not targets:
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for pid in targets:
            _signal_pid(pid, sig)
    if await _wait_pids_gone(targets, grace_s):
        return
    for pid in targets:
        _signal_pid(pid, signal.SIGKILL)
    if not await _wait_pids_gone(targets, _KILL_WAIT_S):
        _log.warning("processes_survived", pids=targets)


# --- helpers -------------------------------------------------------------------------------


async def _wait_pids_gone(pids: Sequence[int], timeout_s: float) -> bool:
    deadline = anyio.current_time() + max(timeout_s, 0.0)
    delay = _POLL_MIN_S
    while await anyio.to_thread.run_sync(_any_pid_alive, pids):
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return False
        await anyio.sleep(min(delay, remaining))
        delay = min(delay * 2, _POLL_MAX_S)
    return True


def _check_pgid(pgid: int) -> None:
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    if pgid == os.getpgrp():
        raise ValueError(f"refusing to signal the daemon's own process group {pgid}")


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _wait_gone(pgid: int, pids: Sequence[int], timeout_s: float) -> bool:
    """Poll until the group and `pids` are gone; False if `timeout_s` passes first."""
    deadline = anyio.current_time() + max(timeout_s, 0.0)
    delay = _POLL_MIN_S
    while True:
        if not await anyio.to_thread.run_sync(_any_alive, pgid, pids):
            return True
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return False
        await anyio.sleep(min(delay, remaining))
        delay = min(delay * 2, _POLL_MAX_S)


def _any_pid_alive(pids: Sequence[int]) -> bool:
    return any(pid_alive(pid) for pid in pids)


def _any_alive(pgid: int, pids: Sequence[int]) -> bool:
    return group_alive(pgid) or any(pid_alive(pid) for pid in pids)


def _proc_available() -> bool:
    return os.path.exists("/proc/self/stat")


def _proc_pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgrp) from /proc/<pid>/stat, or None if the process is gone."""
    stat = proc_stat(pid)
    return None if stat is None else (stat.state, stat.pgrp)
