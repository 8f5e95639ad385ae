"""The report's review section: what the gate held back for a human, and what became of it.

From the state root's files only (read, never written): the candidates still awaiting a
verdict (the orchestrator's `state/pending_promote.json` minus the review log) and every
verdict of the review log (approved, rejected, expired: who, when, the note), each with the
iteration it was placed on (policy/review_verdicts.py) when the log can place it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from autoloop_daemon.clock import now_utc
from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.review_verdicts import match_verdicts, parse_verdicts
from autoloop_daemon.report.model import ReviewRow
from autoloop_daemon.storage.files.fsio import describe_oserror
from autoloop_daemon.storage.files.review_files import read_queue, read_verdicts

_DONE = {"approve": "approved", "reject": "rejected", "expire": "expired"}


def _text(value: object) -> str | None:
    return value[:2000] if isinstance(value, str) else None


def read_reviews(
    state_root: Path, entries: Sequence[LogEntry], problems: list[str]
) -> tuple[ReviewRow, ...]:
    """Pending entries first (oldest first), then the verdicts in the order given."""
    queue = read_queue(state_root, now_utc())
    if queue.problem is not None:
        problems.append(f"review queue: {queue.problem}")
    rows = [
        ReviewRow(
            e.review_id,
            e.candidate_id,
            "pending",
            e.title,
            e.risk_level,
            e.created_at,
            age_s=e.age_s,
        )
        for e in queue.entries
    ]
    try:
        records = read_verdicts(state_root)
    except (OSError, UnicodeDecodeError) as exc:
        why = describe_oserror(exc) if isinstance(exc, OSError) else str(exc)
        problems.append(f"review log: {why}")
        return tuple(rows)
    placed = {v.review_id: i for i, v in match_verdicts(entries, parse_verdicts(records)).items()}
    seen: set[str] = set()
    for r in records:
        review_id, word = r["id"], r.get("verdict")
        if word not in _DONE or review_id in seen:
            continue
        seen.add(review_id)
        rows.append(
            ReviewRow(
                review_id,
                _text(r.get("candidate_id")) or "",
                _DONE[str(word)],
                _text(r.get("title")),
                None,
                _text(r.get("created_at")),
                by=_text(r.get("by")),
                at=_text(r.get("at")),
                note=_text(r.get("note")),
                iteration=placed.get(review_id),
            )
        )
    return tuple(rows)
