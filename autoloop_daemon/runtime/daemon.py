"""Serving a supervisor as a process: signals, systemd, the journal, then the exit code.

`serve` is the one place that wires the runtime together for the command line: the journal
and sd_notify subscribe to the supervisor's events, the signal task forwards signals as
commands, and the supervisor runs inside the same task group until every target stopped.
"""

from __future__ import annotations

import anyio

from autoloop_daemon.exceptions import AutoloopError
from autoloop_daemon.runs.process import pidfd_child_watcher
from autoloop_daemon.runs.reaper import FINAL_GRACE_S, become_subreaper, sweep
from autoloop_daemon.runtime.journal import journal
from autoloop_daemon.runtime.sdnotify import Notifier
from autoloop_daemon.runtime.signals import handle_signals
from autoloop_daemon.runtime.supervisor import Supervisor
from autoloop_daemon.runtime.systemd import SystemdReporter


async def serve(supervisor: Supervisor, notifier: Notifier) -> int:
    """Run `supervisor` with signal handling and systemd reporting; returns the exit code."""
    supervisor.events.subscribe(journal)
    reporter = SystemdReporter(supervisor, notifier)
    supervisor.events.subscribe(reporter)
    exit_code = 0
    error: AutoloopError | None = None
    become_subreaper()  # before the first child: orphans of orchestrators become ours
    with pidfd_child_watcher():
        async with anyio.create_task_group() as tg:
            # The signal receiver stays open until every final checkpoint is written.
            await tg.start(handle_signals, supervisor, tg)
            tg.start_soon(notifier.watchdog_loop)
            tg.start_soon(reporter.status_loop)
            try:
                exit_code = await supervisor.run()
            except AutoloopError as exc:  # raised bare, for the command line's exit code
                error = exc
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):  # what no run's sweep took: none outlives us
            await sweep(None, FINAL_GRACE_S)
    if error is not None:
        raise error
    return exit_code
