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

from autoloop_daemon.cli.status_render import make_row
from autoloop_daemon.clock import parse_iso
from autoloop_daemon.engine.snapshot import first_line
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.policy.stops import STOP_MESSAGES
from autoloop_daemon.storage.files.lock import LOCK_NAME
from autoloop_daemon.storage.files.regular import read_regular
from autoloop_daemon.storage.files.state_file import load_state, state_path
from autoloop_daemon.vocab import TargetStatus


def _file_reason(state: dict[str, Any]) -> str | None:
    status = state.get("status")
    extra_n, extra_usd = state.get("extra_iterations") or 0, state.get("extra_cost_usd") or 0.0
    if status == TargetStatus.ERROR:
        last = first_line(state.get("last_failure_trace")) or "unknown error"
        return f"circuit breaker tripped; last: {last}"
    if status == TargetStatus.STOPPED_SIGNAL:
        return "interrupted by signal"
    if status == TargetStatus.STOPPED_REMOVED:
        return "removed from the configuration"
    if status == TargetStatus.STOPPED_BUDGET:
        return "shared budget exhausted"
    if status == TargetStatus.WAITING_BUDGET:
        return f"budget window spent; resumes at {state.get('next_run_at')}"
    template = STOP_MESSAGES.get(str(status))
    if template is None:
        return None
    return template.format(
        done=state.get("iterations_completed"),
        n=(state.get("max_iterations") or 0) + extra_n,
        cost=state.get("total_cost_usd") or 0.0,
        cap=(state.get("max_cost_usd") or 0.0) + extra_usd,
        window=state.get("plateau_window"),
        osc="",
    )


def target_row(name: str, state_root: Path, *, now: float | None = None) -> dict[str, Any]:
    """One target's last known state from its state file ("no state yet" without one)."""
    row = make_row(target=name, state_root=str(state_root))
    try:
        state = load_state(state_path(state_root))
    except StateCorruptError as exc:
        row.update(status="unreadable", error=str(exc))
        return row
    if state is None:
        row.update(status="no state yet")
        return row
    last_score = None
    for item in reversed(state.get("score_history") or []):
        if isinstance(item, dict) and item.get("weighted_score") is not None:
            last_score = item["weighted_score"]
            break
    in_flight = state.get("in_flight")
    running = in_flight.get("iteration") if isinstance(in_flight, dict) else None
    started = parse_iso(in_flight.get("started_at")) if isinstance(in_flight, dict) else None
    now = time.time() if now is None else now
    row.update(
        status=state.get("status"),
        paused=bool(state.get("paused")),
        reason=_file_reason(state),
        last_error=first_line(state.get("last_failure_trace")),
        iterations_completed=state.get("iterations_completed"),
        max_iterations=(state.get("max_iterations") or 0) + (state.get("extra_iterations") or 0),
        running_iteration=running,
        running_for_s=None if started is None else round(now - started.timestamp(), 3),
        in_flight=running,
        best_weighted_score=state.get("best_weighted_score"),
        last_weighted_score=last_score,
        last_decision=state.get("last_decision"),
        total_cost_usd=state.get("total_cost_usd"),
        max_cost_usd=(state.get("max_cost_usd") or 0.0) + (state.get("extra_cost_usd") or 0.0),
        estimated=(state.get("estimated_cost_usd") or 0.0) > 0,
        next_run_at=state.get("next_run_at"),
        consecutive_errors=state.get("consecutive_errors"),
    )
    return row


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
