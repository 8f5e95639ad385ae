"""The review files of a state root: the orchestrator's queue, autoloopd's review log, feedback.

- `<state_root>/state/pending_promote.json` is the orchestrator's: read only, through
  `read_regular` (no FIFO or link followed, at most `PENDING_LIMIT` bytes). Anything wrong
  with it is that target's problem, returned as a sentence, never raised.
- `<state_root>/autoloop_reviews.jsonl` is autoloopd's: one fsynced JSON line per verdict
  (who, when, the note). The pending set is the queue minus the ids this log names, so the
  orchestrator's file is never rewritten under it (policy/review_queue.py).
- `<target>/.feedback/autoloopd-review-<id>.md`: the verdict in words, written atomically,
  where the orchestrator's feedback discovery finds it on its next run.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from autoloop_daemon.clock import to_iso
from autoloop_daemon.policy.review_queue import (
    PendingReview,
    feedback_text,
    parse_pending,
    still_pending,
)
from autoloop_daemon.storage.files.fsio import (
    append_record,
    atomic_write_bytes,
    describe_oserror,
    dumps_json_line,
    make_dirs,
    parse_json,
)
from autoloop_daemon.storage.files.regular import read_regular

PENDING_LIMIT = 8 * 1024 * 1024  # the gate's entries are small; a bigger file is not its own
LOG_LIMIT = 64 * 1024 * 1024
REVIEW_LOG = "autoloop_reviews.jsonl"
PENDING_NAME = "pending_promote.json"
FEEDBACK_DIR = ".feedback"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# One verdict at a time in this process (`ctl review`, the dashboard, an expiry): each
# re-reads the queue under it, so no entry is decided twice.
DECIDING = threading.Lock()


@dataclass(frozen=True, slots=True)
class ReviewQueue:
    """What awaits review in one state root, and what kept it from being read, if anything."""

    entries: list[PendingReview] = field(default_factory=list)
    problem: str | None = None

    def to_json(self, target: str) -> dict[str, Any]:
        """One target's part of `/api/reviews` and `review list --json`."""
        return {
            "target": target,
            "pending": [e.to_json() for e in self.entries],
            "problem": self.problem,
        }


def pending_path(state_root: Path) -> Path:
    """Where the orchestrator keeps the candidates it held back for a human."""
    return state_root / "state" / PENDING_NAME


def review_log_path(state_root: Path) -> Path:
    """autoloopd's log of verdicts in `state_root`."""
    return state_root / REVIEW_LOG


def read_queue(state_root: Path, now: datetime) -> ReviewQueue:
    """The candidates awaiting review in `state_root` (blocking: call from a worker thread)."""
    try:  # the common case, at 10,000 targets per status: no queue, one lstat, no Path
        # (an f-string, not os.path.join: 0.5 us against 3 us, a third of the whole check)
        os.lstat(f"{state_root}/state/{PENDING_NAME}")
    except FileNotFoundError:
        return ReviewQueue()
    except OSError:
        pass  # said below, where the file is read
    path = pending_path(state_root)
    try:
        text = read_regular(path, limit=PENDING_LIMIT).decode("utf-8")
        entries = parse_pending(parse_json(text), now)
    except FileNotFoundError:
        return ReviewQueue()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = describe_oserror(exc) if isinstance(exc, OSError) else str(exc)
        return ReviewQueue(problem=f"{path}: {why}")
    try:
        decided = decided_ids(state_root)
    except (OSError, UnicodeDecodeError) as exc:
        why = describe_oserror(exc) if isinstance(exc, OSError) else str(exc)
        return ReviewQueue(entries, problem=f"{review_log_path(state_root)}: {why}")
    return ReviewQueue(still_pending(entries, decided))


def read_verdicts(state_root: Path) -> list[dict[str, Any]]:
    """Every verdict of the review log, oldest first; a torn or foreign line is skipped."""
    try:
        data = read_regular(review_log_path(state_root), limit=LOG_LIMIT)
    except FileNotFoundError:
        return []
    records = []
    for line in data.decode("utf-8").splitlines():
        try:
            record = parse_json(line)
        except ValueError:
            continue  # only the last line can be torn (appends are single writes)
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            records.append(record)
    return records


def decided_ids(state_root: Path) -> set[str]:
    """The ids the review log has a verdict for."""
    return {r["id"] for r in read_verdicts(state_root)}


_written = 0  # verdicts this process has appended (or tried to): `verdicts_written`


def verdicts_written() -> int:
    """How many verdicts this process has appended (or tried to) so far. Every verdict on a
    target's review log is written by the daemon running the target, through
    `record_verdict`: a copy of a log read after this returned N is still the whole log as
    long as it returns N."""
    return _written


def record_verdict(state_root: Path, entry: PendingReview, verdict: dict[str, Any]) -> None:
    """Append one verdict (`verdict` holds the verdict, by, at, note) to the review log, fsynced.

    StateWriteError when it cannot be written durably (nothing half written is left).
    """
    record = {**verdict, "id": entry.review_id, "candidate_id": entry.candidate_id,
              "run_id": entry.run_id, "created_at": entry.created_at,
              "title": entry.title}  # fmt: skip
    global _written
    try:
        append_record(review_log_path(state_root), dumps_json_line(record))
    finally:
        # After the write: a reader that saw the old count reads again. The writers hold
        # DECIDING; and two increments racing would still change the count.
        _written += 1


def feedback_path(target: Path, entry: PendingReview) -> Path:
    """The feedback file of `entry` in `target`'s `.feedback/` (a safe file name)."""
    name = _UNSAFE.sub("_", entry.review_id).strip("._") or "candidate"
    return target / FEEDBACK_DIR / f"autoloopd-review-{name[:150]}.md"


def write_feedback(target: Path, entry: PendingReview, text: str) -> Path:
    """Write `text` as `entry`'s feedback record (atomic replace, durable); returns its path."""
    path = feedback_path(target, entry)
    make_dirs(path.parent)  # StateWriteError naming the directory
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def expire_overdue(
    state_root: Path, target: Path, hours: float, now: datetime
) -> list[PendingReview]:
    """Decline (verdict `expire`) every entry of `state_root` older than `hours`: its own
    feedback record in `target`, then its line in the review log. Returns those declined.

    An entry without a readable `created_at` has no age and never expires. Nothing is done
    to an unreadable queue. StateWriteError when a record cannot be written (the entries
    before it stay declined, the rest pending).
    """
    expired = []
    with DECIDING:
        queue = read_queue(state_root, now)
        if queue.problem is not None:
            return []
        for entry in queue.entries:
            if entry.age_s is None or entry.age_s < hours * 3600.0:
                continue
            write_feedback(target, entry, feedback_text(entry, "expire", None))
            by = f"autoloopd (review_expire_hours = {hours:g})"
            record_verdict(
                state_root, entry, {"verdict": "expire", "by": by, "at": to_iso(now), "note": None}
            )
            expired.append(entry)
    return expired
