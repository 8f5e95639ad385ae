"""The project's words as enums: a target's status and phase, a run's outcome, the decisions.

Each is a `StrEnum`, so a member is written to JSON as its plain value and compares equal to
the string the files hold; the on-disk schema does not change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

Mode = Literal["single-run", "continuous", "scheduled"]


class TargetStatus(StrEnum):
    """The `status` field of `autoloop_state.json`: where a target is in its life."""

    IDLE = "idle"
    RUNNING = "running"
    COOLDOWN = "cooldown"
    WAITING = "waiting"  # scheduled mode, waiting for the next tick
    PAUSED = "paused"  # `autoloopd ctl pause`: no new iteration until resumed
    WAITING_BUDGET = "waiting_budget"  # the budget window's cap is reached: next window
    WAITING_REVIEW = "waiting_review"  # `review_pause`: candidates await a reviewer's verdict
    STOPPED_MAX_ITER = "stopped_max_iter"
    STOPPED_COST = "stopped_cost"
    STOPPED_BUDGET = "stopped_budget"
    STOPPED_PLATEAU = "stopped_plateau"
    STOPPED_OSCILLATION = "stopped_oscillation"
    STOPPED_SIGNAL = "stopped_signal"
    STOPPED_OPERATOR = "stopped_operator"  # `autoloopd ctl stop` (or the API's stop)
    STOPPED_REMOVED = "stopped_removed"
    STOPPED_LOW_YIELD = "stopped_low_yield"  # estimated gain per dollar below min_gain_per_usd
    STOPPED_TARGET_REACHED = "stopped_target_reached"  # best weighted score >= target_score
    STOPPED_DEADLINE = "stopped_deadline"  # past the deadline: no new iteration
    LEASE_LOST = "lease_lost"  # cluster: the lease moved (or was given up); another host runs it
    HANDED_OVER = "handed_over"  # cluster: given to another host (a fair share each)
    ERROR = "error"

    @property
    def is_final(self) -> bool:
        """True for a stop condition a re-run with the same limits does not continue from."""
        return self in FINAL_STATUSES


# Statuses a re-run with the same limits does not continue from.
FINAL_STATUSES: frozenset[TargetStatus] = frozenset(
    {
        TargetStatus.STOPPED_MAX_ITER,
        TargetStatus.STOPPED_COST,
        TargetStatus.STOPPED_BUDGET,
        TargetStatus.STOPPED_PLATEAU,
        TargetStatus.STOPPED_OSCILLATION,
        TargetStatus.STOPPED_LOW_YIELD,
        TargetStatus.STOPPED_TARGET_REACHED,
        TargetStatus.ERROR,
    }
)


# Stops someone asked for (a signal, an operator): a target already stopped by a condition
# keeps that status instead; a re-run continues from them.
REQUESTED_STOPS: frozenset[TargetStatus] = frozenset(
    {TargetStatus.STOPPED_SIGNAL, TargetStatus.STOPPED_OPERATOR}
)


class Phase(StrEnum):
    """Where a target's runner is in its cycle now (in memory only; `status` is what is kept).

    The snapshot, `status`, STATUS= and the dashboard show it.
    """

    LOADING = "loading"  # start-up: its state is not loaded yet (no runner)
    STARTING = "starting"  # before its first iteration or wait
    RUNNING = "running"  # an iteration (until the next wait or stop)
    COOLDOWN = "cooldown"
    WAITING = "waiting"  # a schedule tick or the next budget window
    PAUSED = "paused"
    STOPPED = "stopped"
    NOT_STARTED = "not_started"  # the supervisor could not prepare it (no runner)
    ELSEWHERE = "elsewhere"  # cluster mode: another host runs it

    @property
    def counts_as_running(self) -> bool:
        """True while the target is in a turn or about to take one (starting, running)."""
        return self in RUNNING_PHASES

    @property
    def is_waiting(self) -> bool:
        """True in a wait: cooldown, schedule tick or budget window, pause."""
        return self in WAITING_PHASES


RUNNING_PHASES: frozenset[Phase] = frozenset({Phase.STARTING, Phase.RUNNING})
WAITING_PHASES: frozenset[Phase] = frozenset({Phase.COOLDOWN, Phase.WAITING, Phase.PAUSED})


class RunStatus(StrEnum):
    """How one orchestrator run ended (the `status` of an `iteration_log.jsonl` line)."""

    COMPLETED = "completed"  # a decision was read: counts towards iterations_completed
    FAILED = "failed"  # non-zero exit, timeout, no or unreadable result: counts as an error
    INTERRUPTED = "interrupted"  # stopped by autoloopd itself (shutdown, crash recovery)


class Decision(StrEnum):
    """The decision words autoloopd knows. Any other word is still recorded verbatim."""

    KEEP = "keep"
    REJECT = "reject"
    REVERT = "revert"
    PENDING = "pending"
    PENDING_PROMOTE = "pending_promote"
    NO_CANDIDATES = "no_candidates"
    NO_ACCEPTED_CANDIDATES = "no_accepted_candidates"


KNOWN_DECISIONS: frozenset[str] = frozenset(d.value for d in Decision)
