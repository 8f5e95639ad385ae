"""Reading a target's files for the report, without locks and without changing anything.

The daemon may be running: the state file is replaced atomically, the iteration log only
grows, so plain reads see whole records. Nothing here repairs or refuses: a line that does
not parse, an unreadable state or a missing handoff becomes a `problems` entry of the
target, and the report still shows everything else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.progress import counted_score
from autoloop_daemon.policy.stops import Limits, LoopView, stop_sentence
from autoloop_daemon.report.model import FleetReport, IterationRow, TargetReport
from autoloop_daemon.report.reviews import read_reviews
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.artifacts import handoff_path, log_path, read_log_bytes
from autoloop_daemon.storage.files.state_file import load_state, state_path
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import TargetStatus

_HANDOFF_LIMIT = 64 * 1024  # a handoff is a short Markdown page; show at most this much


def read_fleet(targets: Sequence[tuple[str, Path]], source: str) -> FleetReport:
    """The report of every (name, state root) in `targets`, in the order given."""
    return FleetReport(
        generated_at=to_iso(now_utc()),
        source=source,
        targets=tuple(read_target(name, Path(root)) for name, root in targets),
    )


def read_target(name: str, state_root: Path) -> TargetReport:
    """One target's report from its state root (status "no state yet" when there is none)."""
    problems: list[str] = []
    state: TargetState | None = None
    try:
        state = load_state(state_path(state_root))
        status = "no state yet" if state is None else str(state.status)
    except StateCorruptError as exc:
        status = "unreadable"
        problems.append(str(exc))
    entries = _read_log_lines(log_path(state_root), problems)
    rows = _counted(tuple(_row(state_root, entry, problems) for entry in entries))
    completed = [row for row in rows if row.status == "completed"]
    return TargetReport(
        name=name,
        state_root=str(state_root),
        status=status,
        reason=None if state is None else _reason(state, completed),
        iterations_completed=len(completed) if state is None else state.iterations_completed,
        # with what `ctl extend` added, as the daemon counts them
        max_iterations=None if state is None else state.max_iterations + state.extra_iterations,
        total_cost_usd=float(
            sum(r.cost_usd for r in rows) if state is None else state.total_cost_usd
        ),
        max_cost_usd=None if state is None else state.max_cost_usd + state.extra_cost_usd,
        best_weighted_score=None if state is None else state.best_weighted_score,
        last_decision=None if state is None else state.last_decision,
        iterations=rows,
        reviews=read_reviews(state_root, entries, problems),
        problems=tuple(problems),
    )


def _read_log_lines(path: Path, problems: list[str]) -> list[LogEntry]:
    """Every line of the iteration log that parses; the others become problems.

    Read as the daemon reads it: a regular file only (a FIFO or a link to /dev/zero is a
    problem, never opened in a way that blocks or follows), an unterminated last line read
    only in part, hostile JSON (NaN, nesting 100,000 deep) a problem of that line.
    """
    try:
        data = read_log_bytes(path)
    except StateCorruptError as exc:
        problems.append(str(exc))
        return []
    if data is None:
        return []
    out: list[LogEntry] = []
    lines = data.split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if lineno == len(lines):  # no newline after it: a write still under way, or torn
            problems.append(f"{path}:{lineno}: incomplete last line skipped")
            continue
        try:
            out.append(LogEntry.from_json(fsio.parse_json(line.decode("utf-8"))))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            problems.append(f"{path}:{lineno}: skipped: {exc}")
    return out


def _row(state_root: Path, entry: LogEntry, problems: list[str]) -> IterationRow:
    return IterationRow(
        iteration=entry.iteration,
        started_at=entry.started_at,
        finished_at=entry.finished_at,
        status=str(entry.status),
        decision=entry.decision,
        weighted_score=entry.weighted_score,
        cost_usd=entry.cost_usd,
        # Lines written before the cost source was recorded say nothing: shown without `~`.
        estimated=entry.cost_source == "estimated",
        duration_s=entry.duration_seconds,
        candidate_id=entry.candidate_id,
        artifact_path=entry.artifact_path,
        error=entry.error,
        handoff=_read_handoff(handoff_path(state_root, entry.iteration), problems),
        changed=entry.changed,
    )


def _counted(rows: tuple[IterationRow, ...]) -> tuple[IterationRow, ...]:
    """`rows` with each completed one's score as it counts (`counted_score`), as the state's
    score_history and best score have it, and the reported one beside it when they differ."""
    best: float | None = None
    out = []
    for row in rows:
        reported = row.weighted_score
        if row.status != "completed" or reported is None:
            out.append(row)
            continue
        counted = counted_score(reported, decision=row.decision, changed=row.changed, best=best)
        best = counted if best is None else max(best, counted)
        if counted != reported:
            row = dataclasses.replace(row, weighted_score=counted, reported_score=reported)
        out.append(row)
    return tuple(out)


def _read_handoff(path: Path, problems: list[str]) -> str | None:
    try:
        fd = fsio.open_regular(path, os.O_RDONLY)  # a FIFO or a link is a problem, not a hang
    except FileNotFoundError:
        return None
    except OSError as exc:  # NotRegularFileError included
        problems.append(f"{path}: cannot read: {fsio.describe_oserror(exc)}")
        return None
    try:
        data = os.read(fd, _HANDOFF_LIMIT + 1)
    except OSError as exc:
        problems.append(f"{path}: cannot read: {fsio.describe_oserror(exc)}")
        return None
    finally:
        os.close(fd)
    text = data[:_HANDOFF_LIMIT].decode("utf-8", "replace")
    return text + "\n[... cut at 64 KiB]" if len(data) > _HANDOFF_LIMIT else text


def _reason(state: TargetState, completed: Sequence[IterationRow]) -> str | None:
    """Why the target stopped, in the words `status` uses; None when it has not stopped."""
    status = str(state.status)
    if not status.startswith("stopped_") and status != TargetStatus.ERROR:
        return None
    view = LoopView(
        iterations_completed=state.iterations_completed,
        total_cost_usd=state.total_cost_usd,
        scores=[r.weighted_score for r in completed if r.weighted_score is not None],
        decisions=[r.decision or "" for r in completed],
    )
    limits = Limits(
        state.max_iterations + state.extra_iterations,
        state.max_cost_usd + state.extra_cost_usd,
        state.plateau_window,
    )
    sentence = stop_sentence(
        status,
        view,
        limits,
        consecutive_errors=state.consecutive_errors,
        max_consecutive_errors=state.max_consecutive_errors,
        last_failure=state.last_failure_trace,
        operator=state.last_operator_action,
    )
    return status if sentence is None else sentence
