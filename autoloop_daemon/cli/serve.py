"""Serving a supervisor as a process: signals, systemd, the journal, then the exit code.

`serve` is the one place that wires the runtime together for the command line: the journal,
sd_notify and the metrics subscribe to the supervisor's events, the signal task forwards
signals as commands, the control server (when configured) listens, and the supervisor runs
inside the same task group until every target stopped. With `[[alerts]]` configured, the
alerter subscribes too; its task starts before the supervisor (so it knows which crossings
already fired) and gets a bounded time at the end to deliver what is queued (the
`daemon_stopping` alert above all).
"""

from __future__ import annotations

from functools import partial

import anyio
from anyio.abc import TaskGroup

from autoloop_daemon.control.settings import ControlSettings
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.signals import handle_signals
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import AutoloopError
from autoloop_daemon.observers.alerts import Alerter
from autoloop_daemon.observers.console import shutdown_notice
from autoloop_daemon.observers.heap_freeze import HeapFreeze
from autoloop_daemon.observers.journal import journal
from autoloop_daemon.observers.metrics import Metrics
from autoloop_daemon.observers.review_watch import ReviewCollector, ReviewWatch
from autoloop_daemon.observers.sdnotify import Notifier
from autoloop_daemon.observers.systemd import SystemdReporter
from autoloop_daemon.runs import deathwatch
from autoloop_daemon.runs.process import pidfd_child_watcher
from autoloop_daemon.runs.reaper import FINAL_GRACE_S, become_subreaper, sweep
from autoloop_daemon.runs.spawn import keep_inherited_descriptors_from_children


def _review_watch(supervisor: Supervisor) -> ReviewWatch:
    """The review queues of `supervisor`'s targets, with each one's `review_expire_hours`
    as the newest configuration has it (a reload applies at the next scan). An expiry is
    a verdict: its target's loop reads the review log before its next turn."""

    def publish(event: ev.Event) -> None:
        if isinstance(event, ev.ReviewExpired):
            record = supervisor.record(event.target)
            if record is not None and record.runner is not None:
                record.runner.reviews.mark()
        supervisor.events.publish(event)

    def runners(only: set[str] | None) -> list[TargetRunner]:
        if only is None:
            return supervisor.runners()
        records = (supervisor.record(name) for name in only)
        return [r.runner for r in records if r is not None and r.runner is not None]

    reviews = ReviewWatch(
        lambda only: {r.spec.name: r.spec.state_root for r in runners(only)},
        publish,
        expiry=lambda only: {
            r.spec.name: (r.latest_spec.path, hours)
            for r in runners(only)
            if (hours := r.latest_spec.review_expire_hours) is not None
        },
    )
    supervisor.events.subscribe(reviews)
    return reviews


def _start_live_view(supervisor: Supervisor, tg: TaskGroup) -> None:
    """The terminal's live view in `tg`, with the Ctrl+C notice printed above it."""
    from autoloop_daemon.observers.live_view import LiveView  # rich: ~5 MB, only on a tty

    view = LiveView(supervisor.snapshot)
    supervisor.events.subscribe(shutdown_notice(view.say))
    tg.start_soon(view.run)


async def serve(
    supervisor: Supervisor,
    notifier: Notifier,
    alerter: Alerter | None = None,
    control: ControlSettings | None = None,
    *,
    live: bool = False,
) -> int:
    """Run `supervisor` with signal handling, systemd reporting, alerts, (with `control`) the
    control API and (with `live`, on a terminal) the live view; returns the exit code."""
    heap, metrics = HeapFreeze(), Metrics(supervisor.snapshot)
    reporter = SystemdReporter(supervisor, notifier)
    for observer in (journal, heap, alerter, metrics, reporter):  # in this order
        if observer is not None:
            supervisor.events.subscribe(observer)
    reviews = _review_watch(supervisor)
    metrics.registry.register(ReviewCollector(reviews))
    exit_code = 0
    error: AutoloopError | None = None
    keep_inherited_descriptors_from_children()  # posix_spawn would pass them on
    become_subreaper()  # before the first child: orphans of orchestrators become ours
    deathwatch.start()  # after it: a killed daemon's runs die with it (runs/deathwatch.py)
    with pidfd_child_watcher():
        async with anyio.create_task_group() as tg:
            # The signal receiver stays open until every final checkpoint is written.
            await tg.start(handle_signals, supervisor, tg)
            tg.start_soon(notifier.watchdog_loop)
            tg.start_soon(reporter.status_loop)
            await tg.start(reviews.run)
            await tg.start(heap.run, supervisor.runners)
            if alerter is not None:
                await tg.start(alerter.run)
            if live:
                _start_live_view(supervisor, tg)
            server = None
            if control is not None:  # imported here: a --check or bad config never pays for it
                from autoloop_daemon.control.server import ControlServer

                server = ControlServer(supervisor, metrics, control)
            try:
                # The socket is bound once the state directory is ours (after its lock).
                exit_code = await supervisor.run(
                    None if server is None else partial(tg.start, server.run)
                )
            except AutoloopError as exc:  # raised bare, for the command line's exit code
                error = exc
            finally:
                if server is not None:
                    await server.close()
            await reviews.flush()  # the last iterations' candidates, before the alerts drain
            if alerter is not None:
                await alerter.finish()
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):  # what no run's sweep took: none outlives us
            await sweep(None, FINAL_GRACE_S)
    if error is not None:
        raise error
    return exit_code
