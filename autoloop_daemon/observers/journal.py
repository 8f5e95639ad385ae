"""The structlog journal as a subscriber of runtime events: one JSON line per event.

Event names and fields are the log's public vocabulary (tests and operators grep them):
`daemon_ready`, `iteration_started`, `iteration_finished`, `target_stopped`, ...
"""

from __future__ import annotations

import structlog

from autoloop_daemon.engine import events as ev
from autoloop_daemon.vocab import RunStatus, TargetStatus

log = structlog.get_logger("autoloopd")


def _iteration_finished(e: ev.IterationFinished) -> None:
    entry = e.entry
    emit = log.info if entry.status == RunStatus.COMPLETED else log.warning
    emit(
        "iteration_finished",
        target=e.target,
        iteration=entry.iteration,
        status=entry.status,
        decision=entry.decision,
        weighted_score=entry.weighted_score,
        cost_usd=entry.cost_usd,
        total_cost_usd=round(e.total_cost_usd, 6),
        duration_s=entry.duration_seconds,
        error=entry.error,
    )


def journal(event: ev.Event) -> None:
    """Log `event` as its structlog line (the subscriber the daemon always installs)."""
    match event:
        case ev.IterationStarted():
            log.info(
                "iteration_started",
                target=event.target,
                iteration=event.iteration,
                handoff=event.handoff,
                run_log=event.run_log,
            )
        case ev.IterationFinished():
            _iteration_finished(event)
        case ev.TargetStopped():
            # A tripped circuit breaker needs the operator: `journalctl -p err` shows it.
            emit = log.error if event.status == TargetStatus.ERROR else log.info
            emit(
                "target_stopped",
                target=event.target,
                status=event.status,
                reason=event.reason,
                iterations_completed=event.iterations_completed,
                total_cost_usd=event.total_cost_usd,
            )
        case ev.WaitingBudget():
            log.info("waiting_budget", target=event.target, resets_at=event.reset_at)
        case ev.TargetNotContinuing():
            log.info("target_not_continuing", target=event.target, status=event.status)
        case ev.CheckpointFailed():
            log.error("checkpoint_failed", target=event.target, error=event.error)
        case ev.OperatorCommand():
            fields = event.action.to_json()
            emit = log.info if event.action.outcome == "ok" else log.warning
            emit("operator_command", target=event.action.target, **fields)
        case ev.TargetNotStarted():
            log.error("target_not_started", target=event.target, error=event.error)
        case _:
            _daemon_event(event)


def _daemon_event(event: ev.Event) -> None:
    """The journal line of an event of the whole daemon (start, stop, shutdown, reload)."""
    match event:
        case ev.TargetsLoading():
            log.info("targets_loading", targets=event.targets)
        case ev.DaemonReady():
            log.info(
                "daemon_ready",
                targets=event.targets,
                failed=event.failed,
                spent_usd=round(event.spent_usd, 6),
                cap_usd=event.cap_usd,
            )
        case ev.DaemonStopped():
            log.info(
                "daemon_stopped",
                targets=event.targets,
                errors=list(event.errors),
                failed_to_start=list(event.failed_to_start),
                spent_usd=round(event.spent_usd, 6),
            )
        case ev.ShutdownRequested():
            log.info(
                "shutdown_requested",
                signal=event.reason,
                grace_s=event.grace_s,
                running=list(event.running),
            )
        case ev.ShutdownForced():
            log.warning("shutdown_forced", signal=event.reason, cancelled=list(event.cancelled))
        case ev.ShutdownKilled():
            log.warning(
                "shutdown_killed", signal=event.reason, process_groups=list(event.process_groups)
            )
        case ev.ConfigReloaded():
            log.info(
                "config_reloaded",
                added=list(event.added),
                removed=list(event.removed),
                changed=list(event.changed),
                cap_usd=event.cap_usd,
            )
        case ev.ReloadFailed():
            log.error("reload_failed", error=event.error, kept="the previous configuration")
        case _:
            pass
