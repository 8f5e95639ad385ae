"""Reloads that coalesce: one runs at a time, and every request that arrives meanwhile
joins the single reload queued behind it and gets that reload's answer.

A reload reads the configuration as it is when the reload starts, so a request is
answered by the first reload that starts after it: the queued one, never the one already
running (which may have read the file before the request's change). A storm of SIGHUPs
and `ctl reload`s therefore costs at most two reads in a row, and every caller is answered
when the reload it joined completes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from autoloop_daemon.engine.records import ReloadReport


class _Queued:
    """The reload waiting for its turn, and its report once it ran."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.report: ReloadReport | None = None


class ReloadQueue:
    """Runs `reload_now` one at a time; concurrent requests share the queued run."""

    def __init__(self, reload_now: Callable[[], Awaitable[ReloadReport]]) -> None:
        """Hold the function that reloads once."""
        self._reload_now = reload_now
        self._lock = anyio.Lock()
        self._queued: _Queued | None = None

    async def request(self) -> ReloadReport:
        """The report of the first reload that starts after this call."""
        queued = self._queued
        if queued is not None:  # join it: it has not read the configuration yet
            await queued.done.wait()
            return queued.report or ReloadReport(ok=False, error="the reload was cancelled")
        queued = self._queued = _Queued()
        try:
            async with self._lock:
                self._queued = None  # it starts now: later requests queue a new one
                queued.report = await self._reload_now()
        finally:
            if self._queued is queued:  # cancelled while waiting for its turn
                self._queued = None
            queued.done.set()
        return queued.report
