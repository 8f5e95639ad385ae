"""Wall-clock helpers: ISO-8601 UTC timestamps as written to the state files."""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def to_iso(moment: datetime) -> str:
    """`moment` as ISO-8601 UTC with a trailing Z, microseconds kept."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    """The current time as ISO-8601 UTC."""
    return to_iso(now_utc())


def parse_iso(text: str | None) -> datetime | None:
    """Parse a timestamp written by `to_iso` (or any ISO-8601 form); None when absent or invalid."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
