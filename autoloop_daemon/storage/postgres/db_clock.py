"""The database's clock as this host sees it: the wall clock corrected by the offset that
the last lease answer showed (in cluster mode budget windows start and end on it, so that
every host agrees on when a window begins whatever its own clock says)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from autoloop_daemon.clock import now_utc


class DatabaseClock:
    """`now()` on the database's clock, as far as this host last measured it."""

    def __init__(self, local: Callable[[], datetime] = now_utc) -> None:
        """`local` is this host's wall clock; until the first observation `now()` is it."""
        self._local = local
        self.offset = timedelta(0)
        self.observed = False

    def local_now(self) -> datetime:
        """This host's own wall clock."""
        return self._local()

    def observe(self, db_time: datetime, sent: datetime, received: datetime) -> None:
        """Note that the database read `db_time` between `sent` and `received` on the local
        clock: the offset is taken at the midpoint (its error is at most half the round
        trip)."""
        self.offset = db_time - (sent + (received - sent) / 2)
        self.observed = True

    def now(self) -> datetime:
        """The current time on the database's clock."""
        return self._local() + self.offset
