"""`autoloopd status` without a daemon: the last known state from the files.

The lock file says whether a daemon holds the state directory (its pid, checked in /proc;
no lock is taken, so a running daemon is never disturbed) and each `autoloop_state.json`
(replaced atomically, never seen half written) gives the target's last known state. A
state file that is a FIFO, a socket, a device or a directory is never opened in a way that
could block, and is reported unreadable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoloop_daemon.cli.status_render import make_row, status_row
from autoloop_daemon.clock import parse_iso
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.policy.stops import Limits, LoopView, stop_sentence
from autoloop_daemon.storage.files.lock import LOCK_NAME
from autoloop_daemon.storage.files.regular import read_regular
from autoloop_daemon.storage.files.state_file import load_state, state_path
from autoloop_daemon.target_row import row_json
from autoloop_daemon.target_state import TargetState


def target_row(name: str, state_root: Path, *, now: float | None = None) -> dict[str, Any]:
    """One target's last known state from its state file ("no state yet" without one): the
    daemon's row (target_row.py) as far as the file tells it, as a status row."""
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


def _last_score(history: list[dict[str, Any]]) -> float | None:
    for item in reversed(history):
        if item.get("weighted_score") is not None:
            score: float = item["weighted_score"]
            return score
    return None


def lock_holder(directory: Path) -> int | None:
    """The pid of a live autoloopd holding `directory`'s lock file, read without locking."""
    try:
        text = read_regular(directory / LOCK_NAME, limit=64).decode("ascii", "replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # a released lock holds only blanks
    pid = int(text)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    alive = stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])
    return pid if alive and b"autoloop" in cmdline else None


def not_running(pid: int | None, why: str) -> dict[str, Any]:
    return {
        "running": pid is not None,
        "pid": pid,
        "started_at": None,
        "uptime_s": None,
        "ready": None,
        "shutting_down": None,
        "source": "files",
        "note": why,
    }


def file_budget(rows: Sequence[dict[str, Any]], cap: float | None) -> dict[str, Any]:
    spent = round(sum(r.get("total_cost_usd") or 0.0 for r in rows), 6)
    return {
        "spent_usd": spent,
        "reserved_usd": 0.0,
        "cap_usd": cap,
        "remaining_usd": None if cap is None else round(max(0.0, cap - spent), 6),
    }
