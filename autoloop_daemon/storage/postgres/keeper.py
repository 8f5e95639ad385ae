"""Keeping a host's leases: renew them on time, and give them up before they can move.

`LeaseKeeper.run` renews every held lease every `renew_s` in one statement. A lease missing
from the answer was lost (another host took it): `on_lost(target)` is called at once and the
caller stops that target's run. When renewals fail (database unreachable), the keeper
counts from when the last successful renewal was *sent*, on CLOCK_BOOTTIME (it keeps
counting through a suspend, unlike the monotonic clock): past `deadline_s` every lease is
given up through `on_lost` (self-fencing), so the runs stop before the database's expiry
lets another host start them. Constraint: deadline + the runs' stop grace < lease.

Renewals never wait on the budget: while `run` runs they go through a connection of their
own (a companion pool of one), so budget work that fills the daemon's pool cannot delay
them, and their statement takes no lock another host's budget work holds (leases.renew).
A host therefore fences itself only when it cannot get an answer from the database.

Every claim and renewal answer carries the database's `now()` (a lease's expiry less its
length): `clock` keeps this host's offset from it (budget windows are read on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import anyio
import structlog

from autoloop_daemon.storage.postgres import leases
from autoloop_daemon.storage.postgres.db import ClusterError, Database
from autoloop_daemon.storage.postgres.db_clock import DatabaseClock

log = structlog.get_logger("autoloopd.cluster")


def boottime() -> float:
    """Seconds on a clock that counts suspend time (PITFALLS)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class LeaseKeeper:
    """The leases one host holds, renewed by `run` (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        host: str,
        *,
        lease_s: float,
        renew_s: float,
        on_lost: Callable[[str], None],
        deadline_s: float | None = None,
        clock: DatabaseClock | None = None,
    ) -> None:
        """`deadline_s` defaults to half the lease (room for the runs' stop grace); `clock`
        (a new one by default) learns the database's time from every answer."""
        self._db = db
        self.host = host
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.deadline_s = lease_s / 2 if deadline_s is None else deadline_s
        self._on_lost = on_lost
        self.held: dict[str, leases.Lease] = {}
        self._last_ok_sent = boottime()
        self._renew_db: Database | None = None  # its own connection while `run` runs
        self.clock = DatabaseClock() if clock is None else clock

    @property
    def fresh(self) -> bool:
        """True while the leases are known good (a new run may start)."""
        return boottime() - self._last_ok_sent < self.deadline_s

    async def claim(self, names: Sequence[str], limit: int | None = None) -> list[leases.Lease]:
        """Claim free or expired leases among `names` not held yet; the new ones."""
        wanted = [n for n in names if n not in self.held]
        if not wanted or (limit is not None and limit <= 0):
            return []
        sent, had_none = boottime(), not self.held
        wall_sent = self.clock.local_now()
        got = await leases.claim(
            self._db, self.host, wanted, self.lease_s, limit=limit, bump_own=True
        )
        self._observe(got, wall_sent)
        for lease in got:
            self.held[lease.target] = lease
        if had_none:  # the new leases' clock starts now (held ones count from their renewal)
            self._last_ok_sent = sent
        return got

    async def renew_once(self) -> None:
        """One renewal round (what `run` repeats)."""
        if not self.held:
            self._last_ok_sent = boottime()
            return
        sent, wall_sent = boottime(), self.clock.local_now()
        left = self.deadline_s - (sent - self._last_ok_sent)  # a hung call must not outlast it
        try:
            kept = await leases.renew(
                self._renew_db or self._db,
                list(self.held.values()),
                self.lease_s,
                timeout_s=max(0.2, left),
            )
        except ClusterError as exc:
            if not self.fresh:
                log.error("cluster_self_fence", host=self.host, held=sorted(self.held),
                          error=str(exc))  # fmt: skip
                self._lose(list(self.held))
            return
        self._last_ok_sent = sent
        self._observe(kept, wall_sent)
        alive = {lease.target for lease in kept}
        for lease in kept:
            if lease.target in self.held:  # not given up while the renewal was on its way
                self.held[lease.target] = lease
        self._lose([name for name in self.held if name not in alive])

    def _observe(self, answer: Sequence[leases.Lease], wall_sent: datetime) -> None:
        """Learn the database's clock from a lease it just set to `now() + lease`."""
        if answer:
            db_now = answer[0].expires_at - timedelta(seconds=self.lease_s)
            self.clock.observe(db_now, wall_sent, self.clock.local_now())

    def _lose(self, names: list[str]) -> None:
        for name in names:
            self.held.pop(name, None)
            log.warning("cluster_lease_lost", host=self.host, target=name)
            self._on_lost(name)

    async def run(self) -> None:
        """Renew every `renew_s` until cancelled, on a connection of its own once it is
        open (opened beside the renewals: a database that does not answer must not hold up
        the renewal that fences this host; until then the daemon's pool is used)."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._open_own)
                while True:
                    await self.renew_once()
                    await anyio.sleep(self.renew_s)
        finally:
            own, self._renew_db = self._renew_db, None
            if own is not None:
                await own.close()

    async def _open_own(self) -> None:
        """Open the renewals' own connection, trying again every renewal period."""
        while self._renew_db is None:
            own = self._db.companion(max_size=1)
            try:
                await own.open()
            except ClusterError as exc:
                log.warning("cluster_renew_connection_failed", host=self.host, error=str(exc))
                await anyio.sleep(self.renew_s)
                continue
            self._renew_db = own

    async def release_all(self) -> None:
        """Give every lease up (graceful stop), in one statement: other hosts take over
        without waiting."""
        held = list(self.held.values())
        try:
            await leases.release_many(self._db, held)
        except ClusterError as exc:
            log.warning("cluster_release_failed", targets=sorted(self.held), error=str(exc))
        for lease in held:
            self.held.pop(lease.target, None)
