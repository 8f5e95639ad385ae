"""`autoloop_state.json` (the seed's schema 1.0) and its recovery from the log.

The state file is a cache of `iteration_log.jsonl`: the log is written first, and on start
`reconcile` recomputes from it every field the log determines, so a state that lags its log
(a crash between the two writes) is brought up to it. A state that cannot be read safely is
refused with StateCorruptError and never rewritten. Unknown fields are kept.

Fields beyond the seed's: `in_flight` (null or {iteration, started_at}; an optional pid
is accepted), `best_weighted_score`, `last_decision`, `next_iteration`, `updated_at`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

from autoloop_daemon.exceptions import NotRegularFileError, StateCorruptError
from autoloop_daemon.models import STATUS_IDLE, LogEntry, TargetSpec
from autoloop_daemon.policy import stops as convergence
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.lock import check_owned_root

STATE_NAME = "autoloop_state.json"
SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1
# The state keeps only the newest N score_history items; the log has them all.
SCORE_HISTORY_LIMIT = 50
# A state file is a few kilobytes; one larger than this is not read into memory.
STATE_SIZE_LIMIT = 64 * 1024 * 1024


# --- loading --------------------------------------------------------------------------


def state_path(state_root: Path) -> Path:
    """`<state_root>/autoloop_state.json`."""
    return Path(state_root) / STATE_NAME


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[float]:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _is_cost(v: object) -> TypeGuard[float]:
    return _is_number(v) and v >= 0


def _is_unit(v: object) -> TypeGuard[float]:
    return _is_number(v) and 0.0 <= v <= 1.0


def _is_str(v: object) -> TypeGuard[str]:
    return isinstance(v, str)


def _is_scores(v: object) -> TypeGuard[dict[str, float]]:
    return isinstance(v, dict) and all(_is_number(x) for x in v.values())


def _is_history(v: object) -> TypeGuard[list[dict[str, Any]]]:
    return isinstance(v, list) and all(isinstance(item, dict) for item in v)


# score_history item field -> (check, description); every one may be null or absent.
_HISTORY_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "iteration": (_is_int, "an integer"),
    "weighted_score": (_is_unit, "a number within 0..1"),
    "decision": (_is_str, "a string"),
    "scores": (
        lambda v: isinstance(v, dict) and all(_is_unit(x) for x in v.values()),
        "an object of numbers within 0..1",
    ),
    "timestamp": (_is_str, "a string"),
}


def _history_problem(history: list[dict[str, Any]]) -> str | None:
    for i, item in enumerate(history):
        for key, (check, description) in _HISTORY_TYPES.items():
            value = item.get(key)
            if value is not None and not check(value):
                found = _shown(value)
                return f"score_history[{i}].{key}: expected {description}, found {found}"
    return None


def _shown(value: Any) -> str:
    """`value` for a message: short JSON, or its type when it cannot be written as JSON."""
    try:
        return json.dumps(value)[:80]
    except (ValueError, RecursionError):
        return type(value).__name__


def _is_in_flight(v: object) -> bool:
    return (
        isinstance(v, dict)
        and _is_int(v.get("iteration"))
        and _is_str(v.get("started_at"))
        and (v.get("pid") is None or _is_int(v.get("pid")))
    )


# field -> (check, description, nullable)
_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "target": (_is_str, "a string", False),
    "started_at": (_is_str, "a string", True),
    "iterations_completed": (_is_int, "an integer", False),
    "max_iterations": (_is_int, "an integer", False),
    "total_cost_usd": (_is_cost, "a finite number >= 0", False),
    "max_cost_usd": (_is_number, "a finite number", False),
    "current_scores": (_is_scores, "an object of numbers", True),
    "score_history": (_is_history, "a list of objects", False),
    "plateau_counter": (_is_int, "an integer", False),
    "plateau_window": (_is_int, "an integer", False),
    "status": (_is_str, "a string", False),
    "last_failure_trace": (_is_str, "a string", True),
    "consecutive_errors": (_is_int, "an integer", False),
    "max_consecutive_errors": (_is_int, "an integer", False),
    "cooldown_minutes": (_is_number, "a finite number", False),
    "next_run_at": (_is_str, "a string", True),
    "in_flight": (_is_in_flight, "an object {iteration, started_at}", True),
    "best_weighted_score": (_is_number, "a finite number", True),
    "last_decision": (_is_str, "a string", True),
    "next_iteration": (_is_int, "an integer", False),
    "updated_at": (_is_str, "a string", True),
}

# Fields that do not depend on the target's settings, with the value a state missing them
# (an older file) gets on load.
_PLAIN_DEFAULTS: dict[str, Any] = {
    "iterations_completed": 0,
    "total_cost_usd": 0.0,
    "current_scores": {},
    "score_history": [],
    "plateau_counter": 0,
    "status": STATUS_IDLE,
    "last_failure_trace": None,
    "consecutive_errors": 0,
    "next_run_at": None,
    "in_flight": None,
    "best_weighted_score": None,
    "last_decision": None,
    "next_iteration": 1,
}


def _schema_major(version: Any) -> int | None:
    if not isinstance(version, str):
        return None
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def load_state(
    path: Path, *, on_migrate: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """Read and check a state file; None when it does not exist.

    Raises StateCorruptError("<path>: <problem>"), leaving the file untouched, when it
    is not a regular file ("is a FIFO, not a regular file": never opened in a way that could
    block), cannot be read, is larger than STATE_SIZE_LIMIT, is empty, not UTF-8, not JSON
    (or truncated JSON), nested too deeply, holds a non-finite number anywhere (NaN, 1e999),
    is not an object, has a known field (or a score_history item's field) of the wrong type
    or range, or has a schema_version this version does not know (newer than 1.x: "written
    by a newer autoloopd (schema 2.0); refusing to touch it").

    A state without schema_version is migrated to "1.0" in memory and `on_migrate` is
    called with a one-line description (for the caller to log). Known fields that are
    missing and do not depend on the target's settings get their initial values (the
    target's limits come from `apply_limits`). Unknown fields are returned as they are.
    """
    path = Path(path)
    try:
        raw = fsio.read_regular(path, STATE_SIZE_LIMIT)
    except FileNotFoundError:
        return None
    except NotRegularFileError as exc:
        raise StateCorruptError(f"{path}: {exc}") from None
    except OSError as exc:
        raise StateCorruptError(f"{path}: cannot read: {fsio.describe_oserror(exc)}") from exc

    def corrupt(problem: str) -> StateCorruptError:
        return StateCorruptError(f"{path}: {problem}")

    if not raw.strip():
        raise corrupt("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise corrupt(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        data = fsio.parse_json(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg}: line {exc.lineno} column {exc.colno}"
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise corrupt(f"truncated JSON ({where})") from None
        raise corrupt(f"not valid JSON ({where})") from None
    except ValueError as exc:
        raise corrupt(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise corrupt(f"not a JSON object (found {type(data).__name__})")

    if "schema_version" not in data:
        data["schema_version"] = SCHEMA_VERSION
        if on_migrate is not None:
            on_migrate(f"{path}: no schema_version; migrated to {SCHEMA_VERSION}")
    version = data["schema_version"]
    major = _schema_major(version)
    if major is None:
        raise corrupt(f"schema_version: not a version string: {version!r}")
    if major > SCHEMA_MAJOR:
        raise corrupt(f"written by a newer autoloopd (schema {version}); refusing to touch it")
    if major < SCHEMA_MAJOR:
        raise corrupt(f"unsupported schema {version}; refusing to touch it")

    for field, (check, description, nullable) in _FIELD_TYPES.items():
        if field not in data:
            continue
        value = data[field]
        if value is None and nullable:
            continue
        if not check(value):
            raise corrupt(f"{field}: expected {description}, found {_shown(value)}")
    history = data.get("score_history")
    problem = _history_problem(history) if _is_history(history) else None
    if problem is not None:
        raise corrupt(problem)
    for field, default in _PLAIN_DEFAULTS.items():
        data.setdefault(field, copy.deepcopy(default))
    return data


# --- building and deriving ------------------------------------------------------------


def new_state(spec: TargetSpec, now_iso: str) -> dict[str, Any]:
    """A fresh state for `spec`: every schema field at its initial value, status "idle"."""
    state: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": str(spec.path),
        "started_at": now_iso,
        "iterations_completed": 0,
        "max_iterations": spec.max_iterations,
        "total_cost_usd": 0.0,
        "max_cost_usd": spec.max_cost_usd,
        "current_scores": {},
        "score_history": [],
        "plateau_counter": 0,
        "plateau_window": spec.plateau_window,
        "status": STATUS_IDLE,
        "last_failure_trace": None,
        "consecutive_errors": 0,
        "max_consecutive_errors": spec.max_consecutive_errors,
        "cooldown_minutes": spec.cooldown_minutes,
        "next_run_at": None,
        "in_flight": None,
        "best_weighted_score": None,
        "last_decision": None,
        "next_iteration": 1,
        "updated_at": now_iso,
    }
    return state


def apply_limits(state: Mapping[str, Any], spec: TargetSpec) -> dict[str, Any]:
    """A copy of `state` with the target and its limits taken from `spec`."""
    result = dict(state)
    result.update(
        target=str(spec.path),
        max_iterations=spec.max_iterations,
        max_cost_usd=spec.max_cost_usd,
        plateau_window=spec.plateau_window,
        max_consecutive_errors=spec.max_consecutive_errors,
        cooldown_minutes=spec.cooldown_minutes,
    )
    return result


def entry_score(entry: LogEntry, weights: Mapping[str, float] | None = None) -> float | None:
    """An entry's weighted score: as logged, else computed from its scores and `weights`."""
    if entry.weighted_score is not None:
        return entry.weighted_score
    if weights is None or not entry.scores:
        return None
    return convergence.weighted_score(entry.scores, weights)


def total_cost(entries: Sequence[LogEntry]) -> float:
    """The sum of every entry's cost (failed and interrupted runs included)."""
    return round(math.fsum(e.cost_usd for e in entries), 9)


def reconcile(
    state: Mapping[str, Any],
    entries: Sequence[LogEntry],
    weights: Mapping[str, float],
    min_improvement: float = 0.0,
) -> dict[str, Any]:
    """A copy of `state` with every field the log determines recomputed from `entries`. Pure.

    Recomputed: iterations_completed, total_cost_usd (all entries), score_history (the
    completed entries, newest SCORE_HISTORY_LIMIT), current_scores, best_weighted_score,
    last_decision, consecutive_errors (failed runs since the last completed one;
    interrupted runs neither count nor reset), plateau_counter, next_iteration, and
    in_flight, which is cleared when the log already holds that iteration. An entry
    without a logged weighted score gets one from its scores and `weights`. Every other
    field, unknown ones included, is kept.
    """
    completed = [e for e in entries if e.completed]
    scored = [(e, entry_score(e, weights)) for e in completed]
    weighted = [s for _, s in scored if s is not None]

    history = [
        {
            "iteration": e.iteration,
            "weighted_score": s,
            "decision": e.decision,
            "scores": dict(e.scores),
            "timestamp": e.finished_at,
        }
        for e, s in scored[-SCORE_HISTORY_LIMIT:]
    ]
    current_scores: dict[str, float] = {}
    for e in reversed(completed):
        if e.scores:
            current_scores = dict(e.scores)
            break
    consecutive_errors = 0
    for e in reversed(entries):
        if e.completed:
            break
        if e.status == "failed":
            consecutive_errors += 1

    result = copy.deepcopy(dict(state))
    result.update(
        iterations_completed=len(completed),
        total_cost_usd=total_cost(entries),
        score_history=history,
        current_scores=current_scores,
        best_weighted_score=max(weighted) if weighted else None,
        last_decision=completed[-1].decision if completed else None,
        consecutive_errors=consecutive_errors,
        plateau_counter=convergence.plateau_counter(weighted, min_improvement),
        next_iteration=entries[-1].iteration + 1 if entries else 1,
    )
    in_flight = result.get("in_flight")
    if isinstance(in_flight, dict) and entries:
        iteration = in_flight.get("iteration")
        if _is_int(iteration) and iteration <= entries[-1].iteration:
            result["in_flight"] = None
    return result


def loop_view(
    entries: Sequence[LogEntry], weights: Mapping[str, float] | None = None
) -> convergence.LoopView:
    """What the stop conditions look at, from the log.

    Completed count, total cost of all entries, weighted scores of completed entries that
    have one (computed from scores and `weights` when given and not logged), decisions of
    completed entries.
    """
    completed = [e for e in entries if e.completed]
    scores = [s for s in (entry_score(e, weights) for e in completed) if s is not None]
    return convergence.LoopView(
        iterations_completed=len(completed),
        total_cost_usd=total_cost(entries),
        scores=scores,
        decisions=[e.decision for e in completed if e.decision is not None],
    )


def seed_entries(state: Mapping[str, Any]) -> list[LogEntry]:
    """Log entries that stand for a state written without a log (the seed script's).

    For a state whose log is missing or empty but which records iterations or cost:
    `reconcile` against an empty log would reset both to zero. Appending these entries to
    the log first keeps them: one completed entry per completed iteration (decision,
    scores, score and timestamp from score_history where it has them, oldest first) and
    the recorded total cost spread over them (or one failed entry carrying it when no
    iteration completed). Returns [] when there is nothing to keep.
    """
    completed = state.get("iterations_completed", 0)
    completed = completed if _is_int(completed) and completed > 0 else 0
    cost = state.get("total_cost_usd", 0.0)
    cost = float(cost) if _is_number(cost) and cost > 0 else 0.0
    raw_history = state.get("score_history")
    history = [h for h in raw_history if isinstance(h, dict)] if _is_history(raw_history) else []
    count = max(completed, len(history))
    stamp = str(state.get("updated_at") or state.get("started_at") or "")
    if count == 0:
        if cost == 0.0:
            return []
        return [
            LogEntry(
                iteration=1,
                started_at=stamp,
                finished_at=stamp,
                status="failed",
                decision=None,
                weighted_score=None,
                cost_usd=cost,
                duration_seconds=0.0,
                error="cost recorded by a state without a log",
            )
        ]
    share = cost / count
    costs = [share] * (count - 1)
    costs.append(cost - math.fsum(costs))
    padding: list[dict[str, Any]] = [{} for _ in range(count - len(history))]
    padded = padding + history
    entries = []
    for i, (item, item_cost) in enumerate(zip(padded, costs, strict=True), start=1):
        ws = item.get("weighted_score")
        scores = item.get("scores")
        decision = item.get("decision")
        timestamp = item.get("timestamp")
        when = timestamp if isinstance(timestamp, str) else stamp
        entries.append(
            LogEntry(
                iteration=i,
                started_at=when,
                finished_at=when,
                status="completed",
                decision=decision if isinstance(decision, str) else None,
                weighted_score=float(ws) if _is_number(ws) else None,
                cost_usd=max(item_cost, 0.0),
                duration_seconds=0.0,
                scores=(
                    {str(k): float(v) for k, v in scores.items()} if _is_scores(scores) else {}
                ),
                error="migrated from a state without a log",
            )
        )
    return entries


# --- saving ---------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def encode_state(state: dict[str, Any]) -> bytes:
    """Set `state["updated_at"]` and serialise it as the state file's bytes."""
    state["updated_at"] = _now_iso()
    state.setdefault("schema_version", SCHEMA_VERSION)
    return fsio.dumps_json(state)


async def save_state(path: Path, state: dict[str, Any]) -> None:
    """Set `state["updated_at"]` and replace the state file atomically (fsio).

    The state is serialised before the worker thread starts, so other tasks may change
    the dict while the write runs. Raises StateWriteError (the old file stays intact) and
    ValueError for NaN or Infinity in the state. A state root this process locked that has
    since been replaced (a symbolic link, another directory) is refused with StateWriteError
    (see `lock.check_owned_root`).
    """
    check_owned_root(Path(path).parent)
    await fsio.write_bytes_atomic(path, encode_state(state))


def save_state_sync(path: Path, state: dict[str, Any]) -> None:
    """`save_state` without a worker thread, for the last checkpoint after the event loop."""
    check_owned_root(Path(path).parent)
    fsio.atomic_write_bytes(path, encode_state(state))
