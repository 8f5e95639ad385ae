"""Which iteration a reviewer's verdict is about, and what it makes of it. Pure.

A verdict names a held-back candidate (`<run_id>:<candidate_id>`), not an iteration: the
gate appends the entry while the run is still going, and a reviewer may answer before the
run's log line exists. So the verdicts are matched to the log each time they are applied:
a verdict belongs to the newest completed iteration that held back (a neutral decision such
as `pending_promote`) the same candidate id and whose run was going when the entry was
written. Each iteration takes at most one verdict (the first), each verdict one iteration.

An approved candidate counts as a keep from then on; a rejected or expired one as a reject
(policy/progress.py applies them as decision overrides).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.decisions import DecisionKind, decision_kind
from autoloop_daemon.vocab import Decision

# The gate's clock and the daemon's may disagree by a little (and `created_at` has whole
# seconds): an entry written this long before the run started, or after it ended, is its own.
CLOCK_SLACK = timedelta(seconds=5)
COUNTS_AS = {"approve": Decision.KEEP, "reject": Decision.REJECT, "expire": Decision.REJECT}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One line of the review log, as the loop's arithmetic needs it."""

    review_id: str
    candidate_id: str
    verdict: str  # approve, reject or expire
    created_at: datetime | None  # when the gate wrote the entry (if the log line says)

    @property
    def counts_as(self) -> str:
        """The decision word the iteration counts with from now on."""
        return COUNTS_AS[self.verdict]


def parse_verdicts(records: Iterable[Mapping[str, Any]]) -> list[Verdict]:
    """The review log's records as verdicts, oldest first; a record that is not one of
    approve/reject/expire with string ids is skipped, and a repeated id keeps the first."""
    seen: set[str] = set()
    verdicts = []
    for record in records:
        review_id, candidate, word = (record.get(k) for k in ("id", "candidate_id", "verdict"))
        if not (isinstance(review_id, str) and isinstance(candidate, str)):
            continue
        if word not in COUNTS_AS or review_id in seen:
            continue
        seen.add(review_id)
        created = record.get("created_at")
        created_at = parse_iso(created if isinstance(created, str) else None)
        verdicts.append(Verdict(review_id, candidate, str(word), created_at))
    return verdicts


def _held(entry: LogEntry) -> bool:
    return entry.completed and decision_kind(entry.decision) is DecisionKind.NEUTRAL


def _during(entry: LogEntry, moment: datetime | None) -> bool:
    """True when `moment` is unknown or lies within `entry`'s run (with the slack)."""
    if moment is None:
        return True
    started, finished = parse_iso(entry.started_at), parse_iso(entry.finished_at)
    if started is None or finished is None:
        return True
    return started - CLOCK_SLACK <= moment <= finished + CLOCK_SLACK


def match_verdicts(entries: Sequence[LogEntry], verdicts: Iterable[Verdict]) -> dict[int, Verdict]:
    """Iteration -> the verdict on it, for every verdict the log can place.

    A verdict whose run has no log line yet (or that names no held-back iteration) is left
    out: it is placed on a later call, once its line is there.
    """
    by_candidate: dict[str, list[LogEntry]] = {}
    for entry in entries:
        if _held(entry) and entry.candidate_id:
            by_candidate.setdefault(entry.candidate_id, []).append(entry)
    placed: dict[int, Verdict] = {}
    for verdict in verdicts:
        candidates = by_candidate.get(verdict.candidate_id, [])
        for entry in reversed(candidates):  # the newest first: candidate ids repeat
            if entry.iteration not in placed and _during(entry, verdict.created_at):
                placed[entry.iteration] = verdict
                break
    return placed


def overrides_of(placed: Mapping[int, Verdict]) -> dict[int, str]:
    """Iteration -> the decision word it counts with (`Progress`'s overrides)."""
    return {iteration: verdict.counts_as for iteration, verdict in placed.items()}
