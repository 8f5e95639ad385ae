"""Cron ticks for `scheduled` targets (via cronsim), pure apart from the clock passed in."""

from __future__ import annotations

from datetime import datetime

from cronsim import CronSim, CronSimError


def next_tick(expression: str, after: datetime) -> datetime:
    """The first tick of `expression` strictly after `after` (timezone-aware in, UTC out)."""
    moment = next(iter(CronSim(expression, after)))
    return moment


def is_valid(expression: str) -> str | None:
    """None when `expression` is a valid cron expression, else the problem."""
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        return str(exc) or "invalid cron expression"
    return None
