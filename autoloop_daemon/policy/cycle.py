"""What a target does next, as pure functions of plain data.

`after_run`: the status and `next_run_at` that follow a recorded run, and whether its state
save may be deferred. `delay_before_next`: how long to wait before the next run (failure
backoff, cooldown, schedule), with a stored `next_run_at` brought back within what the
current settings allow. (Why a target stopped, in words: `stops.stop_sentence`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from autoloop_daemon.policy.schedule import next_tick
from autoloop_daemon.policy.stops import backoff_seconds
from autoloop_daemon.vocab import Mode, Phase, RunStatus, TargetStatus


@dataclass(frozen=True, slots=True)
class AfterRun:
    """The target's position after a recorded run."""

    status: TargetStatus
    next_run_at: datetime | None  # None: run again as soon as the stop checks allow
    may_defer_save: bool


def after_run(
    *,
    run_status: RunStatus,
    mode: Mode,
    one_shot: bool,
    stop_requested: bool,
    finished: datetime,
    cooldown_s: float,
    schedule: str | None,
) -> AfterRun:
    """Status, next run and save deferral after a run that ended with `run_status`.

    A failed or interrupted run cools down (the retry backoff). A completed run in
    continuous mode waits out the cooldown, in scheduled mode the next tick; the one-shot
    form and single-run mode go straight on. The save may be deferred only in single-run
    mode after a completed run, when the next run starts at once and its in-flight save
    carries this one's results (the log line is already durable, and start-up repairs a
    state that lags its log).
    """
    completed = run_status == RunStatus.COMPLETED
    next_run_at: datetime | None = None
    if completed and not one_shot:
        if mode == "continuous":
            next_run_at = finished + timedelta(seconds=cooldown_s)
        elif mode == "scheduled" and schedule:
            next_run_at = next_tick(schedule, finished)
    if not completed:
        status = TargetStatus.COOLDOWN
    elif one_shot or mode == "single-run":
        status = TargetStatus.RUNNING
    else:
        status = TargetStatus.WAITING if mode == "scheduled" else TargetStatus.COOLDOWN
    defer = completed and mode == "single-run" and not one_shot and not stop_requested
    return AfterRun(status=status, next_run_at=next_run_at, may_defer_save=defer)


@dataclass(frozen=True, slots=True)
class Wait:
    """How long to wait before the next run, and the `next_run_at` to keep."""

    delay_s: float
    next_run_at: datetime | None


def delay_before_next(
    *,
    now: datetime,
    mode: Mode,
    one_shot: bool,
    consecutive_errors: int,
    last_failed_at: datetime | None,
    backoff_base_s: float,
    backoff_max_s: float,
    next_run_at: datetime | None,
    last_finished_at: datetime | None,
    cooldown_s: float,
    schedule: str | None,
) -> Wait:
    """The wait before the next run.

    After failures, the doubling backoff from the last failure. In continuous and scheduled
    mode (not one-shot), until `next_run_at`; a scheduled target without one waits for the
    next tick. A stored `next_run_at` later than the current settings allow (written before
    the cooldown was shortened or the schedule changed, or simply far in the future) is
    brought back: at most the cooldown after the last run, or the next tick from now.
    """
    delay = 0.0
    if consecutive_errors > 0 and last_failed_at is not None:
        backoff = backoff_seconds(consecutive_errors, backoff_base_s, backoff_max_s)
        delay = (last_failed_at - now).total_seconds() + backoff
    if one_shot or mode == "single-run":
        return Wait(max(0.0, delay), next_run_at)
    if mode == "scheduled" and schedule:
        tick = next_tick(schedule, now)
        next_run_at = tick if next_run_at is None else min(next_run_at, tick)
    elif mode == "continuous" and next_run_at is not None:
        latest = (last_finished_at or now) + timedelta(seconds=cooldown_s)
        next_run_at = min(next_run_at, max(latest, now))
    if next_run_at is not None:
        delay = max(delay, (next_run_at - now).total_seconds())
    return Wait(max(0.0, delay), next_run_at)


# The waits a stop by signal may end without a checkpoint (not a pause: `paused` is
# written as `stopped_signal`, as operators read it).
_RESTING_PHASES = frozenset({Phase.COOLDOWN, Phase.WAITING})


def stop_needs_checkpoint(status: str, phase: Phase, dirty: bool) -> bool:
    """Whether a target that stops with `status` from `phase` must write its state.

    A stop by signal (a shutdown, `ctl stop`) of a target resting in a cooldown or a wait,
    whose stored state is up to date (`dirty` False), writes nothing: what is stored
    already says when it runs next, and a restart resumes from `cooldown` exactly as from
    `stopped_signal`. So a SIGTERM to a resting fleet costs no write per target.
    """
    resting = status == TargetStatus.STOPPED_SIGNAL and phase in _RESTING_PHASES
    return dirty or not resting


def implied_status_change(stored: str, entering: str, dirty: bool) -> bool:
    """True when entering `entering` from the stored `stored` needs no checkpoint: a target
    stopped by signal (`stopped_signal`), resumed by a restart into the wait its stored
    `next_run_at` already describes, with nothing else changed (`dirty` False)."""
    return (
        not dirty
        and stored == TargetStatus.STOPPED_SIGNAL
        and entering in (TargetStatus.COOLDOWN, TargetStatus.WAITING)
    )
