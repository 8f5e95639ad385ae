"""Typed events the runtime publishes, and the bus that hands them to subscribers.

The target runners and the supervisor publish what happened; everything that reports it
subscribes: the one-target console lines (console.py), the structlog journal (journal.py),
sd_notify, and later a control channel, metrics and alerts. Subscribers are called
synchronously in the publisher's task and must not block; one that raises is logged and
kept out of the publisher's way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import structlog

from autoloop_daemon.models import LogEntry
from autoloop_daemon.operator_action import OperatorAction

log = structlog.get_logger("autoloopd.events")


@dataclass(frozen=True, slots=True)
class TargetsLoading:
    """The configuration is loaded and the state directory locked: the service is up
    (READY=1) while the targets' states load; `DaemonReady` follows once they have."""

    targets: int


@dataclass(frozen=True, slots=True)
class DaemonReady:
    """Every target that could start has been recovered; work begins."""

    targets: int
    failed: int
    spent_usd: float
    cap_usd: float


@dataclass(frozen=True, slots=True)
class DaemonStopped:
    """Every target has stopped; the process is about to exit."""

    targets: int
    errors: tuple[str, ...]
    failed_to_start: tuple[str, ...]
    spent_usd: float


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """The first stop request: no new iterations, running ones get `grace_s`."""

    reason: str
    grace_s: float
    running: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShutdownForced:
    """A second stop request: the grace period is skipped."""

    reason: str
    cancelled: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShutdownKilled:
    """A third stop request: every running process group got SIGKILL."""

    reason: str
    process_groups: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReloadStarted:
    """The configuration is being read again."""


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """A reload was applied."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    cap_usd: float


@dataclass(frozen=True, slots=True)
class ReloadFailed:
    """A reload was refused; the previous configuration stays."""

    error: str


@dataclass(frozen=True, slots=True)
class TargetNotStarted:
    """A target could not be opened (locked, corrupt, unwritable); the others run."""

    target: str
    error: str


@dataclass(frozen=True, slots=True)
class TargetNotContinuing:
    """A target that already stopped for a reason that still holds."""

    target: str
    status: str
    reason: str


@dataclass(frozen=True, slots=True)
class TargetStarting:
    """A target's cycle begins (after recovery)."""

    target: str
    path: str
    mode: str
    max_iterations: int
    max_cost_usd: float


@dataclass(frozen=True, slots=True)
class CoolingDown:
    """A continuous target waits out its cooldown before the next run."""

    target: str
    seconds: float
    next_run_at: str


@dataclass(frozen=True, slots=True)
class ScheduledExit:
    """The one-shot scheduled form ran its single iteration and ends."""

    target: str


@dataclass(frozen=True, slots=True)
class IterationStarted:
    """An orchestrator run begins."""

    target: str
    iteration: int
    completed: int  # completed iterations before this one
    max_iterations: int
    retry: int  # consecutive failures before this run (0: not a retry)
    handoff: str | None
    run_log: str | None


@dataclass(frozen=True, slots=True)
class IterationFinished:
    """A run was recorded (log line written)."""

    target: str
    entry: LogEntry
    total_cost_usd: float
    estimated_usd: float = 0.0  # the part of the total that is wall time x rate


@dataclass(frozen=True, slots=True)
class ReviewRequested:
    """The orchestrator held back a candidate for a human (observers/review_watch.py)."""

    target: str
    review_id: str
    candidate_id: str
    title: str | None
    risk_level: str | None


@dataclass(frozen=True, slots=True)
class ReviewExpired:
    """Nobody reviewed a held-back candidate within `review_expire_hours`: declined."""

    target: str
    review_id: str
    candidate_id: str
    title: str | None
    hours: float


@dataclass(frozen=True, slots=True)
class CheckpointFailed:
    """A state could not be written; the target stops in `error`."""

    target: str
    error: str


@dataclass(frozen=True, slots=True)
class TargetStopped:
    """A target's cycle ended."""

    target: str
    status: str
    reason: str
    iterations_completed: int
    max_iterations: int
    total_cost_usd: float
    estimated_usd: float
    best_score: float | None
    best_iteration: int | None
    location: str
    announce: bool = True  # False: the user was already told why (not continuing)


@dataclass(frozen=True, slots=True)
class WaitingBudget:
    """A target waits for the next budget window (its cap for this one is reached)."""

    target: str
    reset_at: str


@dataclass(frozen=True, slots=True)
class BudgetChanged:
    """Money was charged or the cap changed."""

    spent_usd: float
    reserved_usd: float
    cap_usd: float
    window_start: str | None = None  # the budget window's start (ISO), if there is one
    window_spent_usd: float = 0.0
    window_cap_usd: float = float("inf")


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    """An operator's command on a target, with its outcome (one per command, taken or not)."""

    action: OperatorAction


# Every event the bus carries. A union, not a base class: subscribers tell events apart with
# isinstance (class patterns), and on a subclass of an ABC each check went through
# ABCMeta.__instancecheck__, eight times the cost of a plain class's (~20 checks an event).
Event: TypeAlias = (
    TargetsLoading
    | DaemonReady
    | DaemonStopped
    | ShutdownRequested
    | ShutdownForced
    | ShutdownKilled
    | ReloadStarted
    | ConfigReloaded
    | ReloadFailed
    | TargetNotStarted
    | TargetNotContinuing
    | TargetStarting
    | CoolingDown
    | ScheduledExit
    | IterationStarted
    | IterationFinished
    | ReviewRequested
    | ReviewExpired
    | CheckpointFailed
    | TargetStopped
    | WaitingBudget
    | BudgetChanged
    | OperatorCommand
)

Subscriber = Callable[[Event], None]


@dataclass(slots=True)
class EventBus:
    """Hands each published event to every subscriber, in subscription order."""

    _subscribers: list[Subscriber] = field(default_factory=list)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add `subscriber`; returns a function that removes it."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        """Call every subscriber with `event`; a failing subscriber is logged, not raised."""
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("subscriber_failed", event_type=type(event).__name__)
