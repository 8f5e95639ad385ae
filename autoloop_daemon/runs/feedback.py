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
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files.regular import open_regular

log = structlog.get_logger("autoloopd.feedback")

FEEDBACK_STORE = Path(".claude/skills/session-feedback-analyzer/feedback-store")
STORE_NAMES = ("feedback.jsonl", "muse-feedback.jsonl")
TARGET_DIRS = (".feedback", "learnings", "memory")
MAX_AGE_DAYS = 30


def _timestamp(text: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def is_recent(line: str, cutoff: datetime) -> bool:
    """Whether one line of a feedback store is kept by the 30-day filter. Pure.

    As the orchestrator's own filter: a JSON object without a `timestamp` (or with an empty
    one) is kept, a line that is not JSON is dropped. Beyond it: a line that is not an object
    or whose timestamp is not a string is dropped (the orchestrator would stop on it), and a
    timestamp that does not parse is compared as text, as the orchestrator compares them all.
    """
    try:
        entry = fsio.parse_json(line)
    except (ValueError, RecursionError):
        return False
    stamp = entry.get("timestamp", "") if isinstance(entry, dict) else None
    if not isinstance(stamp, str):
        return False
    if not stamp:
        return True
    when = _timestamp(stamp)
    return when >= cutoff if when is not None else stamp >= cutoff.isoformat()


def recent_lines(
    lines: Iterable[str], now: datetime, max_age_days: int = MAX_AGE_DAYS
) -> list[str]:
    """The non-blank lines of a feedback store (stripped) that `is_recent` keeps. Pure."""
    cutoff = now - timedelta(days=max_age_days)
    return [line for line in (raw.strip() for raw in lines) if line and is_recent(line, cutoff)]


def _open_store(store: Path) -> int | None:
    """A read descriptor of `store` (a link is followed, as the orchestrator does; anything
    but a regular file is refused without blocking), or None when absent or refused."""
    try:
        return open_regular(store.resolve(), os.O_RDONLY)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError) as exc:  # NotRegularFileError; RuntimeError: a link loop
        log.warning("feedback_store_skipped", path=str(store), error=str(exc))
        return None


def _out_dir(out: Path) -> None:
    with contextlib.suppress(FileExistsError):
        fsio.make_dir(out.parent)
    if out.parent.is_symlink() or not out.parent.is_dir():
        raise OSError(f"{out.parent} is not a directory")
    fsio.check_regular_or_absent(out)


def _recent_copy(store: Path, state_root: Path, now: datetime) -> str | None:
    """Write the recent lines of `store` to `<state_root>/feedback/<name>-recent.jsonl`,
    streaming (a store of any size costs one line of memory); its path, or None when the
    store is absent, unreadable or has no recent line (an older copy is then removed)."""
    fd = _open_store(store)
    if fd is None:
        return None
    out = artifacts.recent_feedback_path(state_root, store.name)
    cutoff = now - timedelta(days=MAX_AGE_DAYS)
    tmp = fsio.tmp_name(out)
    count = 0
    try:
        with os.fdopen(fd, encoding="utf-8", errors="replace") as src:
            _out_dir(out)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            with os.fdopen(open_regular(Path(tmp), flags), "w", encoding="utf-8") as dst:
                for raw in src:
                    line = raw.strip()
                    if line and is_recent(line, cutoff):
                        dst.write(line + "\n")
                        count += 1
            if count:
                os.replace(tmp, out)
            else:
                os.unlink(tmp)
                out.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        log.warning("feedback_store_skipped", path=str(store), error=str(exc))
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    return str(out) if count else None


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


__all__ = ["discover_feedback", "discover_now", "is_recent", "recent_lines"]
