"""The feedback sources improvement-orchestrator would discover by itself, for the runs
that get a handoff (and so, given `--source`, discover nothing themselves).

The reference orchestrator looks for feedback only when it is given no `--source`: the
session-feedback stores in the home directory filtered to the last 30 days, the skill's
`.improvement-memory/*.json`, and its `.feedback`, `learnings` and `memory` directories.
`discover_feedback` finds the same, each once, in the same order: the stores' recent lines
are written to `<state_root>/feedback/` (never to the user's home) and those copies are
passed, never the raw stores. `recent_lines` is the pure filter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.storage.files import artifacts, fsio

log = structlog.get_logger("autoloopd.feedback")

FEEDBACK_STORE = Path(".claude/skills/session-feedback-analyzer/feedback-store")
STORE_NAMES = ("feedback.jsonl", "muse-feedback.jsonl")
TARGET_DIRS = (".feedback", "learnings", "memory")
MAX_AGE_DAYS = 30
STORE_SIZE_LIMIT = 64 * 1024 * 1024


def _timestamp(text: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def recent_lines(
    lines: Iterable[str], now: datetime, max_age_days: int = MAX_AGE_DAYS
) -> list[str]:
    """The JSON object lines of a feedback store from the last `max_age_days` days. Pure.

    As the orchestrator's own filter: a line without a `timestamp` (or an empty one) is
    kept, a line that is not JSON is dropped. Beyond it: a line that is not an object or
    whose timestamp is not a string is dropped (the orchestrator would stop on it), and an
    unparsable timestamp is compared as text, as the orchestrator compares them all.
    """
    cutoff = now - timedelta(days=max_age_days)
    kept = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            entry = fsio.parse_json(line)
        except (ValueError, RecursionError):
            continue
        stamp = entry.get("timestamp", "") if isinstance(entry, dict) else None
        if not isinstance(stamp, str):
            continue
        when = _timestamp(stamp) if stamp else None
        if not stamp or (when >= cutoff if when is not None else stamp >= cutoff.isoformat()):
            kept.append(line)
    return kept


def _recent_copy(store: Path, state_root: Path, now: datetime) -> str | None:
    """Write the recent lines of `store` to `<state_root>/feedback/<name>-recent.jsonl`;
    its path, or None when the store is absent, unreadable or has no recent line."""
    try:
        data = fsio.read_regular(store, STORE_SIZE_LIMIT)
    except FileNotFoundError:
        return None
    except OSError as exc:  # NotRegularFileError too
        log.warning("feedback_store_skipped", path=str(store), error=str(exc))
        return None
    lines = recent_lines(data.decode("utf-8", errors="replace").splitlines(), now)
    if not lines:
        return None
    out = artifacts.recent_feedback_path(state_root, store.name)
    try:
        with contextlib.suppress(FileExistsError):
            fsio.make_dir(out.parent)
        if out.parent.is_symlink() or not out.parent.is_dir():
            raise OSError(f"{out.parent} is not a directory")
        fsio.check_regular_or_absent(out)
        fsio.atomic_write_bytes(out, ("\n".join(lines) + "\n").encode(), durable=False)
    except (OSError, StateWriteError) as exc:
        log.warning("feedback_store_skipped", path=str(store), error=str(exc))
        return None
    return str(out)


def discover_feedback(target: Path, state_root: Path, home: Path, now: datetime) -> list[str]:
    """What the orchestrator would discover for `target` by itself, each source once: the
    recent copies of the session-feedback stores under `home`, the skill's
    `.improvement-memory/*.json` files and its feedback directories. Blocking."""
    found = []
    for name in STORE_NAMES:
        copy = _recent_copy(home / FEEDBACK_STORE / name, state_root, now)
        if copy is not None:
            found.append(copy)
    memory = target / ".improvement-memory"
    if memory.is_dir():
        found += [str(p) for p in sorted(memory.glob("*.json"))]
    found += [str(target / name) for name in TARGET_DIRS if (target / name).exists()]
    return found


def discover_now(target: Path, state_root: Path) -> list[str]:
    """`discover_feedback` for the current user's home and the current time. Blocking."""
    return discover_feedback(target, state_root, Path.home(), datetime.now(UTC))


__all__ = ["discover_feedback", "discover_now", "recent_lines"]
