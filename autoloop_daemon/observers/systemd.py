"""sd_notify as a subscriber: READY=1, RELOADING=1, STOPPING=1 and a periodic STATUS= line.

The STATUS= line is rendered from the supervisor's snapshot (the same facts `status` and a
control channel show) every STATUS_INTERVAL_S, and only sent when it changed.
"""

from __future__ import annotations

import anyio

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.observers.sdnotify import Notifier

STATUS_INTERVAL_S = 2.0


class SystemdReporter:
    """Tells systemd what the supervisor's events mean."""

    def __init__(self, supervisor: Supervisor, notifier: Notifier) -> None:
        """Report on `supervisor` through `notifier` (inert when not under systemd)."""
        self._supervisor = supervisor
        self._notifier = notifier
        self._last_status = ""

    def __call__(self, event: ev.Event) -> None:
        """The event subscriber."""
        match event:
            case ev.TargetsLoading() | ev.DaemonReady() | ev.ConfigReloaded() | ev.ReloadFailed():
                self._notifier.ready(self._status_line())
            case ev.ReloadStarted():
                self._notifier.reloading()
            case ev.ShutdownRequested() | ev.DaemonStopped():
                self._notifier.stopping()
            case _:
                pass

    def _status_line(self) -> str:
        line = self._supervisor.status_line()
        self._last_status = line
        return line

    async def status_loop(self) -> None:
        """Send STATUS= whenever the summary changed, checked every STATUS_INTERVAL_S."""
        while True:
            line = self._supervisor.status_line()
            if line != self._last_status:
                self._last_status = line
                self._notifier.status(line)
            await anyio.sleep(STATUS_INTERVAL_S)
