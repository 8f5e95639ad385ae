"""Signals as commands: SIGINT/SIGTERM ask the supervisor to stop, SIGHUP to reload.

The handler only forwards (STYLE: signal handling records and flags); the supervisor reacts.
The receiver stays open until the task is cancelled after the last checkpoint, so a second
signal during shutdown never falls back to the default (deadly) handler mid-write.
"""

from __future__ import annotations

import signal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from autoloop_daemon import early_signals
from autoloop_daemon.engine.supervisor import Supervisor


def hold_early_hangups() -> None:
    """Until `handle_signals` runs, SIGHUP, SIGTERM and SIGINT are recorded instead of ending
    the process (early_signals.py; cli/main.py calls it before the runtime is imported)."""
    early_signals.hold()


async def handle_signals(
    supervisor: Supervisor,
    tg: TaskGroup,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Forward signals to `supervisor` until cancelled; reloads run as tasks of `tg`."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        for signum in early_signals.take():  # what arrived during start-up, in order
            _forward(supervisor, tg, signum)
        async for signum in signals:
            _forward(supervisor, tg, signum)


def _forward(supervisor: Supervisor, tg: TaskGroup, signum: int) -> None:
    if signum == signal.SIGHUP:
        tg.start_soon(supervisor.reload)  # before READY it is remembered and applied after
    else:
        supervisor.request_shutdown(signal.Signals(signum).name)
