"""`autoloop_state.json` (the seed's schema 1.0): reading and checking it, seeding a log
from an old one, encoding it.

The state file is a cache of `iteration_log.jsonl`: the log is written first, and on start
recovery (recovery.py) recomputes from it every field the log determines, so a state that
lags its log (a crash between the two writes) is brought up to it. A state that cannot be
read safely is refused with StateCorruptError and never rewritten. Unknown fields are kept.
`load_state` gives a `TargetState`, to recovery, `status` without a daemon and the report.

Fields beyond the seed's: `in_flight` (null or {iteration, started_at}; an optional pid
is accepted), `best_weighted_score`, `last_decision`, `next_iteration`, `updated_at`,
the operator's controls `paused`, `extra_iterations`, `extra_cost_usd` (`autoloopd ctl`),
and `log_checkpoint` (where start-up last read the log to; see log_checkpoint.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.exceptions import NotRegularFileError, StateCorruptError
from autoloop_daemon.json_text import compact
from autoloop_daemon.models import LogEntry
from autoloop_daemon.score_history import ScoreHistory, ScoreItem
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.log_checkpoint import is_marker
from autoloop_daemon.target_state import SCHEMA_VERSION, TargetState
from autoloop_daemon.vocab import RunStatus

STATE_NAME = "autoloop_state.json"
SCHEMA_MAJOR = 1
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


def _is_bool(v: object) -> TypeGuard[bool]:
    return isinstance(v, bool)


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
    "reported_score": (_is_unit, "a number within 0..1"),
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
    "best_iteration": (_is_int, "an integer", True),
    "estimated_cost_usd": (_is_number, "a finite number", False),
    "best_copy_iteration": (_is_int, "an integer", True),
    "content_hash": (_is_str, "a string", True),
    "last_decision": (_is_str, "a string", True),
    "next_iteration": (_is_int, "an integer", False),
    "updated_at": (_is_str, "a string", True),
    "paused": (_is_bool, "true or false", False),
    "extra_iterations": (_is_int, "an integer", False),
    "extra_cost_usd": (_is_number, "a finite number", False),
    "log_checkpoint": (
        is_marker,
        "an object {offset, line_sha256, prefix_crc32}",
        True,
    ),
    "last_operator_action": (lambda v: isinstance(v, dict), "an object", True),
}


def _schema_major(version: Any) -> int | None:
    if not isinstance(version, str):
        return None
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def load_state(
    path: Path, *, on_migrate: Callable[[str], None] | None = None
) -> TargetState | None:
    """Read and check a state file; None when it does not exist.

    Recovery, `status` without a daemon and the report all read a state through here.

    Raises StateCorruptError("<path>: <problem>"), leaving the file untouched, when it
    is not a regular file ("is a FIFO, not a regular file": never opened in a way that could
    block), cannot be read, is larger than STATE_SIZE_LIMIT, is empty, not UTF-8, not JSON
    (or truncated JSON), nested too deeply, holds a non-finite number anywhere (NaN, 1e999),
    is not an object, has a known field (or a score_history item's field) of the wrong type
    or range, or has a schema_version this version does not know (newer than 1.x: "written
    by a newer autoloopd (schema 2.0); refusing to touch it").

    A state without schema_version is migrated to "1.0" in memory and `on_migrate` is
    called with a one-line description (for the caller to log). Known fields that are
    missing get their initial values (the target's limits come from
    `TargetState.apply_limits`). Unknown fields ride along in the state's `extra`.
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

    data = _parse(raw, path)
    if "schema_version" not in data:
        data["schema_version"] = SCHEMA_VERSION
        if on_migrate is not None:
            on_migrate(f"{path}: no schema_version; migrated to {SCHEMA_VERSION}")
    problem = _problem(data)
    if problem is not None:
        raise StateCorruptError(f"{path}: {problem}")
    # Held as text at once: 50 items as dicts are ~30 kB, and a fleet loads together.
    history = ScoreHistory.of_file(data.get("score_history", ()))
    if history is not None:
        data["score_history"] = history
    return TargetState.from_json(data)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    """The JSON object of a state file's bytes; StateCorruptError when there is none."""

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
    return data


def _problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a state file's object (its schema, a field's type), or None."""
    version = data["schema_version"]
    major = _schema_major(version)
    if major is None:
        return f"schema_version: not a version string: {version!r}"
    if major > SCHEMA_MAJOR:
        return f"written by a newer autoloopd (schema {version}); refusing to touch it"
    if major < SCHEMA_MAJOR:
        return f"unsupported schema {version}; refusing to touch it"
    for field, (check, description, nullable) in _FIELD_TYPES.items():
        if field not in data:
            continue
        value = data[field]
        if value is None and nullable:
            continue
        if not check(value):
            return f"{field}: expected {description}, found {_shown(value)}"
    history = data.get("score_history")
    return _history_problem(history) if _is_history(history) else None


# --- building and deriving ------------------------------------------------------------


def seed_entries(state: TargetState) -> list[LogEntry]:
    """Log entries that stand for a state written without a log (the seed script's).

    For a state whose log is missing or empty but which records iterations or cost:
    recomputing it from an empty log would reset both to zero. Appending these entries to
    the log first keeps them: one completed entry per completed iteration (decision,
    scores, score and timestamp from score_history where it has them, oldest first) and
    the recorded total cost spread over them (or one failed entry carrying it when no
    iteration completed). Returns [] when there is nothing to keep.
    """
    completed = max(state.iterations_completed, 0)
    cost = state.total_cost_usd if state.total_cost_usd > 0 else 0.0
    history = state.score_history
    count = max(completed, len(history))
    stamp = str(state.updated_at or state.started_at or "")
    if count == 0:
        if cost == 0.0:
            return []
        return [
            LogEntry(
                iteration=1,
                started_at=stamp,
                finished_at=stamp,
                status=RunStatus.FAILED,
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
    padded: list[Mapping[str, Any]] = [*({} for _ in range(count - len(history))), *history]
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
                status=RunStatus.COMPLETED,
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


def encode_state(state: TargetState) -> bytes:
    """Stamp `updated_at` (in place) and serialise the state file's bytes."""
    state.updated_at = to_iso(now_utc())
    items = state.score_history
    history: str | list[str] = (
        items.text
        if isinstance(items, ScoreHistory)
        else [item.text if isinstance(item, ScoreItem) else compact(item) for item in items]
    )
    return fsio.dumps_json(state.to_json(history=False), encoded={"score_history": history})
