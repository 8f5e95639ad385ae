"""Budget windows as pure arithmetic: which window a moment falls in, and when it ends.

A window is `daily`, `weekly` or `monthly` (calendar windows in a time zone: they open at
local midnight, on Monday at local midnight, on the 1st at local midnight) or a duration
(`"6h"`, `"30s"`, `"2d"`), aligned to multiples of its length since the Unix epoch, so that
`6h` windows open at 00:00, 06:00, 12:00 and 18:00 UTC whatever the zone.

A run is charged to the window in which it started (its log entry's `started_at`): the
reservation is made a moment before, and a run's cost is only known when it ends, so this is
the one instant both the live ledger and a recount from the logs agree on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CALENDAR = ("daily", "weekly", "monthly")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A window kind: a calendar name in `zone`, or a fixed length in seconds."""

    name: str  # "daily" | "weekly" | "monthly" | the duration as written ("6h")
    length_s: float | None  # None for a calendar window
    zone: tzinfo = UTC

    def bounds(self, at: datetime) -> tuple[datetime, datetime]:
        """The window holding `at`: its start (inclusive) and end (exclusive), in UTC."""
        if self.length_s is not None:
            since = (at - _EPOCH).total_seconds()
            start = _EPOCH + timedelta(seconds=math.floor(since / self.length_s) * self.length_s)
            return start, start + timedelta(seconds=self.length_s)
        local = at.astimezone(self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.name == "daily":
            first, nxt = midnight, _add_days(midnight, 1)
        elif self.name == "weekly":
            first = _add_days(midnight, -local.weekday())
            nxt = _add_days(first, 7)
        else:
            first = midnight.replace(day=1)
            year, month = (
                (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
            )
            nxt = first.replace(year=year, month=month)
        return _utc(first), _utc(nxt)


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """`[budget] window`: the window kind and the cap per window."""

    window: Window
    cap_usd: float


def _add_days(local_midnight: datetime, days: int) -> datetime:
    """Local midnight `days` later (wall-clock arithmetic: DST days have 23 or 25 hours)."""
    moved = (local_midnight.replace(tzinfo=None) + timedelta(days=days)).replace(
        tzinfo=local_midnight.tzinfo
    )
    return moved


def _utc(local: datetime) -> datetime:
    return local.astimezone(UTC)


def parse_duration_s(text: str) -> float | None:
    """Seconds in a duration such as `"6h"`, `"30s"`, `"1d12h"`; None if not one."""
    text = text.strip().lower()
    if not text or _DURATION.sub("", text).strip():
        return None
    total = sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(text))
    return total if total > 0 else None


def parse_window(text: str, zone_name: str | None = None) -> Window:
    """The window `text` names; ValueError with the problem in a few words.

    `zone_name` is an IANA zone (`Europe/Paris`) for calendar windows; None is the
    machine's local zone.
    """
    zone = local_zone() if zone_name is None else load_zone(zone_name)
    if text in CALENDAR:
        return Window(text, None, zone)
    length = parse_duration_s(text)
    if length is None:
        raise ValueError(
            f"{text!r} is not a window: use daily, weekly, monthly or a duration like 6h, 30s"
        )
    if length < 1:
        raise ValueError(f"{text!r}: a window must last at least 1s")
    return Window(text, length, zone)


def load_zone(name: str) -> tzinfo:
    """The IANA time zone `name`; ValueError if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a known time zone ({exc})") from None


def local_zone() -> tzinfo:
    """The machine's local time zone."""
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else UTC


def spent_in_window(runs: Iterable[tuple[datetime | None, float]], start: datetime) -> float:
    """The cost of the runs (started_at, cost) that started at or after `start`.

    A run without a readable start time is counted (never under-count money).
    """
    return math.fsum(cost for at, cost in runs if at is None or at >= start)
