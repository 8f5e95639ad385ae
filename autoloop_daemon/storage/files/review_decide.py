"""A reviewer's verdict written into a target's files: the feedback record, then the log.

The one writer of a verdict, whoever gave it (`ctl review` on this host, or a verdict the
cluster's database carried from another host). The feedback is written to the target's
`.feedback/` first and the review log second: the log is what makes the entry decided, so a
failed feedback write leaves it pending, to be decided again. Process-wide serialised by
`DECIDING`, so two verdicts cannot both take the same entry.
"""

from __future__ import annotations

from typing import Any

import structlog

from autoloop_daemon.clock import now_iso, now_utc
from autoloop_daemon.exceptions import CommandRefusedError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.review_queue import feedback_text, find_entry
from autoloop_daemon.storage.files.review_files import (
    DECIDING,
    read_queue,
    record_verdict,
    write_feedback,
)

log = structlog.get_logger("autoloopd.review")


def decide_entry(
    spec: TargetSpec,
    wanted: str | None,
    verb: str,
    note: str | None,
    by: str,
    at: str | None = None,
) -> dict[str, Any]:
    """Record `verb` on `spec`'s pending entry `wanted` (the only one when None), given by
    `by` at `at` (now when None); what was recorded. CommandRefusedError when the queue is
    unreadable or no single pending entry matches. Blocking: run it in a worker thread."""
    with DECIDING:
        queue = read_queue(spec.state_root, now_utc())
        if queue.problem is not None:
            raise CommandRefusedError(f"the review queue is unreadable: {queue.problem}")
        try:
            entry = find_entry(queue.entries, wanted)
        except ValueError as exc:
            raise CommandRefusedError(str(exc)) from None
        feedback = write_feedback(spec.path, entry, feedback_text(entry, verb, note))
        verdict = {"verdict": verb, "by": by, "at": at or now_iso(), "note": note}
        record_verdict(spec.state_root, entry, verdict)
    log.info("review_decided", target=spec.name, review_id=entry.review_id, verdict=verb, by=by)
    return {**verdict, **entry.to_json(), "feedback": str(feedback)}
