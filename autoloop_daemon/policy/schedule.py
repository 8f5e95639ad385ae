"""Cron ticks for `scheduled` targets (via cronsim), pure apart from the clock passed in."""

from __future__ import annotations

from datetime import datetime

from cronsim import CronSim


def next_tick(expression: str, after: datetime) -> datetime:
    """The first tick of `expression` strictly after `after` (timezone-aware in, UTC out)."""
    moment = next(iter(CronSim(expression, after)))
    return moment
