"""Signals as commands: SIGINT/SIGTERM ask the supervisor to stop, SIGHUP to reload.

The handler only forwards (STYLE: signal handling records and flags); the supervisor reacts.
The receiver stays open until the task is cancelled after the last checkpoint, so a second
signal during shutdown never falls back to the default (deadly) handler mid-write.
"""

from __future__ import annotations

import signal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from autoloop_daemon.engine.supervisor import Supervisor

_early_hangups: list[int] = []


def hold_early_hangups() -> None:
    """Until `handle_signals` runs, a SIGHUP is remembered instead of ending the process (its
    default action); call it first thing in the daemon form. The reload is applied once the
    supervisor is ready."""
    signal.signal(signal.SIGHUP, lambda signum, _frame: _early_hangups.append(signum))


async def handle_signals(
    supervisor: Supervisor,
    tg: TaskGroup,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Forward signals to `supervisor` until cancelled; reloads run as tasks of `tg`."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        if _early_hangups:
            _early_hangups.clear()
            tg.start_soon(supervisor.reload)
        async for signum in signals:
            if signum == signal.SIGHUP:
                tg.start_soon(supervisor.reload)
            else:
                supervisor.request_shutdown(signal.Signals(signum).name)
