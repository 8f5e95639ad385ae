"""A target's `deadline`: a local time of day (`"18:30"`, recurring daily) or an ISO
timestamp, after which no new iteration starts. Pure."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, tzinfo

from autoloop_daemon.clock import parse_iso

_TIME_OF_DAY = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def check_deadline(text: str) -> str:
    """`text` if it is a deadline, else ValueError saying what is expected."""
    if _TIME_OF_DAY.fullmatch(text.strip()) is None and parse_iso(text.strip()) is None:
        raise ValueError(
            f"{text!r} is not a deadline: use a local time of day (HH:MM) or an ISO timestamp"
        )
    return text


def deadline_after(text: str, start: datetime, zone: tzinfo) -> datetime:
    """The moment the deadline `text` falls due for a cycle that began at `start`: the next
    HH:MM (in `zone`) after `start`, or the timestamp itself (a naive one is in `zone`)."""
    match = _TIME_OF_DAY.fullmatch(text.strip())
    if match is None:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)
    local = start.astimezone(zone)
    at = time(int(match.group(1)), int(match.group(2)))
    due = datetime.combine(local.date(), at, tzinfo=zone)
    if due <= local:
        due = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)
    return due
