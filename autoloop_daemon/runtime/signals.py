"""Signals as commands: SIGINT/SIGTERM ask the supervisor to stop, SIGHUP to reload.

The handler only forwards (STYLE: signal handling records and flags); the supervisor reacts.
The receiver stays open until the task is cancelled after the last checkpoint, so a second
signal during shutdown never falls back to the default (deadly) handler mid-write.
"""

from __future__ import annotations

import signal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from autoloop_daemon.runtime.supervisor import Supervisor


async def handle_signals(
    supervisor: Supervisor,
    tg: TaskGroup,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Forward signals to `supervisor` until cancelled; reloads run as tasks of `tg`."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                tg.start_soon(supervisor.reload)
            else:
                supervisor.request_shutdown(signal.Signals(signum).name)
