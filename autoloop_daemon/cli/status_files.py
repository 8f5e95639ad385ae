"""`autoloopd status` without a daemon: the last known state from the files.

The lock file says whether a daemon holds the state directory (its pid, checked in /proc;
no lock is taken, so a running daemon is never disturbed) and each `autoloop_state.json`
(replaced atomically, never seen half written) gives the target's last known state. A
state file that is a FIFO, a socket, a device or a directory is never opened in a way that
could block, and is reported unreadable.

When no daemon runs, nothing in the files is live: a lock file still naming a pid that is
gone says the daemon died without stopping (SIGKILL, a crash, the machine's power), and
the newest write to the state files is its last sign of life, so the death is "at or after"
it. A row the files still call running is then shown as what it is (`interrupted`: which
iteration it was running, that the next start recovers it), with no clock counting on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoloop_daemon.clock import parse_iso, to_iso
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.policy.stops import Limits, LoopView, stop_sentence
from autoloop_daemon.status_text import make_row, status_row
from autoloop_daemon.storage.files.lock import LOCK_NAME
from autoloop_daemon.storage.files.regular import read_regular
from autoloop_daemon.storage.files.state_file import load_state, state_path
from autoloop_daemon.target_row import row_json
from autoloop_daemon.target_state import TargetState

# status's word for a row the files call running while no daemon runs it
INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Absence:
    """What the files say of a daemon that does not run (`absence`)."""

    died_pid: int | None  # the pid a lock file still names: it died without stopping
    last_write_at: str | None  # the newest write to the state files (ISO UTC), if any

    def death(self) -> str:
        """How the daemon ended, as far as the files tell: "died at or after T (its last
        write)" when a lock file still names it, else "stopped"."""
        if self.died_pid is None:
            return "stopped"
        after = "" if self.last_write_at is None else f" at or after {self.last_write_at}"
        return f"died{after} (its last write)" if after else "died"

    def interrupted(self, iteration: int) -> str:
        """The reason of a row whose `iteration` was running when the daemon ended."""
        return (
            f"was running iteration {iteration} when the daemon {self.death()}; "
            "recovered at next start"
        )


def absence(lock_dirs: Sequence[Path], roots: Sequence[Path]) -> Absence:
    """The `Absence` of the daemon of `lock_dirs` and `roots` (call it when none runs)."""
    died = next((p for p in map(_dead_marker, lock_dirs) if p is not None), None)
    newest = 0.0
    for root in roots:
        try:
            newest = max(newest, os.stat(state_path(root)).st_mtime)
        except OSError:
            continue
    last = to_iso(datetime.fromtimestamp(int(newest), UTC)) if newest else None  # to the second
    return Absence(died, last)


def _dead_marker(directory: Path) -> int | None:
    """The pid `directory`'s lock file names when that process is no live autoloopd."""
    pid = _marker(directory)
    return pid if pid is not None and lock_holder(directory) is None else None


def target_row(
    name: str, state_root: Path, *, now: float | None = None, gone: Absence | None = None
) -> dict[str, Any]:
    """One target's last known state from its state file ("no state yet" without one): the
    daemon's row (target_row.py) as far as the file tells it, as a status row. `gone`: no
    daemon runs it, so an iteration the file calls running is shown `interrupted`."""
    try:
        state = load_state(state_path(state_root))
    except StateCorruptError as exc:
        return make_row(
            target=name, state_root=str(state_root), status="unreadable", error=str(exc)
        )
    if state is None:
        return make_row(target=name, state_root=str(state_root), status="no state yet")
    max_iterations = state.max_iterations + state.extra_iterations
    max_cost_usd = state.max_cost_usd + state.extra_cost_usd
    started = None if state.in_flight is None else parse_iso(state.in_flight.started_at)
    now = time.time() if now is None else now
    row = row_json(
        state,
        name=name,
        phase="offline",
        reason=_reason(state, max_iterations, max_cost_usd),
        max_iterations=max_iterations,
        max_cost_usd=max_cost_usd,
        last_weighted_score=_last_score(state.score_history),
        running_for_s=None if started is None else round(now - started.timestamp(), 3),
        state_location=str(state_path(state_root)),
        host=None,
    )
    if gone is not None and state.in_flight is not None:
        row.update(status=INTERRUPTED, running_for_s=None)
        row["reason"] = gone.interrupted(state.in_flight.iteration)
    return status_row(row, str(state_root))


def _reason(state: TargetState, max_iterations: int, max_cost_usd: float) -> str | None:
    """Why the target stopped, as the daemon says it (without the shared budget's figures)."""
    view = LoopView(state.iterations_completed, state.total_cost_usd, (), ())
    limits = Limits(max_iterations, max_cost_usd, state.plateau_window)
    return stop_sentence(
        str(state.status),
        view,
        limits,
        consecutive_errors=state.consecutive_errors,
        max_consecutive_errors=state.max_consecutive_errors,
        last_failure=state.last_failure_trace,
        next_run_at=state.next_run_at,
        operator=state.last_operator_action,
    )


def _last_score(history: Sequence[Mapping[str, Any]]) -> float | None:
    for item in reversed(history):
        if item.get("weighted_score") is not None:
            score: float = item["weighted_score"]
            return score
    return None


def _marker(directory: Path) -> int | None:
    """The pid written in `directory`'s lock file (None: none, or a released lock)."""
    try:
        text = read_regular(directory / LOCK_NAME, limit=64).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) < 12 else None  # released: only blanks


def lock_holder(directory: Path) -> int | None:
    """The pid of a live autoloopd holding `directory`'s lock file, read without locking."""
    pid = _marker(directory)
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    alive = stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])
    return pid if alive and b"autoloop" in cmdline else None


def not_running(pid: int | None, why: str, gone: Absence | None = None) -> dict[str, Any]:
    """The report's `daemon` object read from the files: `pid` a live holder of the lock
    (its socket did not answer), else `gone` says how the last daemon ended."""
    died = None if gone is None else gone.died_pid
    if died is not None and gone is not None:
        why = f"pid {died} {gone.death()}: killed or crashed, it did not stop; {why}"
    return {
        "running": pid is not None,
        "pid": pid,
        "started_at": None,
        "uptime_s": None,
        "ready": None,
        "shutting_down": None,
        "source": "files",
        "note": why,
        "died_pid": died,
        "last_write_at": None if gone is None else gone.last_write_at,
    }


def file_budget(rows: Sequence[dict[str, Any]], cap: float | None) -> dict[str, Any]:
    spent = round(sum(r.get("total_cost_usd") or 0.0 for r in rows), 6)
    return {
        "spent_usd": spent,
        "reserved_usd": 0.0,
        "cap_usd": cap,
        "remaining_usd": None if cap is None else round(max(0.0, cap - spent), 6),
    }
