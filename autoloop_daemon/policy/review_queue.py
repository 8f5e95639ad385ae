"""Held-back candidates awaiting a human: the orchestrator's queue minus the verdicts given.

The real improvement-gate appends an entry to `<state_root>/state/pending_promote.json`
(`{"pending": [...], "last_updated": ...}`) when it may not keep a candidate on its own.
autoloopd never rewrites that file (the orchestrator rewrites it whole on its next append,
and a second writer would race it); a verdict is a line in autoloopd's own review log, and
the pending set is the file's entries minus the ids that log names. Pure: the caller reads
both files and passes the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autoloop_daemon.clock import parse_iso

MAX_TEXT = 2000  # characters kept of any one field an entry carries (a diff can be huge)
VERDICTS = ("approve", "reject", "expire")


@dataclass(frozen=True, slots=True)
class PendingReview:
    """One candidate the gate held back, as autoloopd shows it."""

    review_id: str  # "<run_id>:<candidate_id>", unique across the orchestrator's runs
    candidate_id: str
    run_id: str
    created_at: str | None
    age_s: float | None
    category: str | None = None
    recommendation: str | None = None
    risk_level: str | None = None
    title: str | None = None
    request_id: str | None = None
    receipt_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as `/api/reviews` and `review list --json` give it (stable keys)."""
        return {
            "id": self.review_id,
            "candidate_id": self.candidate_id,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "age_s": self.age_s,
            "category": self.category,
            "recommendation": self.recommendation,
            "risk_level": self.risk_level,
            "title": self.title,
            "request_id": self.request_id,
            "receipt_path": self.receipt_path,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], now: datetime) -> PendingReview:
        """An entry as `to_json` gave it (a queue another host published), its age at `now`."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        created = parse_iso(text("created_at"))
        age = None if created is None else round(max(0.0, (now - created).total_seconds()), 3)
        return cls(
            review_id=str(data.get("id", "")), candidate_id=text("candidate_id") or "",
            run_id=text("run_id") or "", created_at=text("created_at"), age_s=age,
            category=text("category"), recommendation=text("recommendation"),
            risk_level=text("risk_level"), title=text("title"), request_id=text("request_id"),
            receipt_path=text("receipt_path"),
        )  # fmt: skip


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    return None


def parse_pending(payload: Any, now: datetime) -> list[PendingReview]:
    """The entries of a `pending_promote.json` payload, oldest first as the file lists them.

    Raises ValueError naming what is wrong when the payload is not the upstream shape (an
    object whose "pending" is a list). An entry that is not an object, or that has neither a
    candidate id nor a run id, is skipped: it cannot be named, so it cannot be decided.
    Duplicate ids keep the first (the gate appends; a repeat is the same candidate).
    """
    if not isinstance(payload, dict):
        raise ValueError("is not a JSON object")
    items = payload.get("pending", [])
    if not isinstance(items, list):
        raise ValueError('"pending" is not a list')
    seen: set[str] = set()
    entries = []
    for item in items:
        entry = _entry(item, now) if isinstance(item, dict) else None
        if entry is not None and entry.review_id not in seen:
            seen.add(entry.review_id)
            entries.append(entry)
    return entries


def _entry(item: Mapping[str, Any], now: datetime) -> PendingReview | None:
    candidate = _text(item.get("candidate_id")) or ""
    run = _text(item.get("run_id")) or ""
    if not candidate and not run:
        return None
    request = item.get("human_review_request")
    request = request if isinstance(request, dict) else {}
    created_at = _text(item.get("created_at"))
    created = parse_iso(created_at)
    return PendingReview(
        review_id=f"{run}:{candidate}",
        candidate_id=candidate,
        run_id=run,
        created_at=created_at,
        age_s=None if created is None else round(max(0.0, (now - created).total_seconds()), 3),
        category=_text(item.get("category")),
        recommendation=_text(item.get("recommendation")),
        risk_level=_text(request.get("risk_level") or item.get("risk_level")),
        title=_text(request.get("title") or item.get("title")),
        request_id=_text(request.get("request_id")),
        receipt_path=_text(item.get("receipt_path")),
    )


def still_pending(entries: Iterable[PendingReview], decided: set[str]) -> list[PendingReview]:
    """`entries` without those a verdict in the review log already names."""
    return [e for e in entries if e.review_id not in decided]


def find_entry(entries: list[PendingReview], wanted: str | None) -> PendingReview:
    """The entry `wanted` names (its id, candidate id or request id); the only one when None.

    ValueError with a sentence for the operator when none or several match.
    """
    if wanted is None:
        if len(entries) == 1:
            return entries[0]
        if not entries:
            raise ValueError("no candidate is awaiting review")
        ids = ", ".join(e.review_id for e in entries)
        raise ValueError(f"{len(entries)} candidates await review; name one of: {ids}")
    matches = [e for e in entries if wanted in (e.review_id, e.candidate_id, e.request_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no pending candidate {wanted!r}")
    ids = ", ".join(e.review_id for e in matches)
    raise ValueError(f"{wanted!r} names {len(matches)} pending candidates; use one of: {ids}")


def feedback_text(entry: PendingReview, verdict: str, note: str | None) -> str:
    """The feedback record the orchestrator's generator reads from the target's `.feedback/`."""
    said = {"approve": "approved", "reject": "rejected", "expire": "not reviewed in time"}
    what = f"candidate {entry.candidate_id or entry.review_id}"
    if entry.title:
        what += f" ({entry.title})"
    line = f"{what} of run {entry.run_id} was {said[verdict]} by a reviewer"
    if verdict == "expire":
        line = f"{what} of run {entry.run_id} was declined: nobody reviewed it in time"
    return f"{line}: {note}\n" if note else f"{line}.\n"
