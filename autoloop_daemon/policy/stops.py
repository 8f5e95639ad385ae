"""Stop conditions as pure functions of plain data: plateau, oscillation, limits, goals.

No I/O here. The target's cycle calls `stop_reason` before and after every iteration.
`stop_sentence` is the one place that words why a target stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autoloop_daemon.operator_action import operator_who
from autoloop_daemon.policy.decisions import alternates, decision_kind
from autoloop_daemon.target_row import first_line
from autoloop_daemon.vocab import TargetStatus


def weighted_score(scores: Mapping[str, float], weights: Mapping[str, float]) -> float | None:
    """The weighted mean of `scores`; a dimension missing from `weights` weighs 1.0.

    Returns None when there are no scores or every weight is zero.
    """
    total_weight = 0.0
    total = 0.0
    for dimension, score in scores.items():
        weight = weights.get(dimension, 1.0)
        total += weight * score
        total_weight += weight
    if not scores or total_weight <= 0.0:
        return None
    return total / total_weight


def plateau_counter(history: Sequence[float], min_improvement: float = 0.0) -> int:
    """How many of the latest scores in a row failed to beat the best score before them.

    `history` holds weighted scores only (iterations without scores are left out by the
    caller, so they neither advance nor reset the counter). The first score never counts.
    """
    count = 0
    best_before = float("-inf")
    for i, score in enumerate(history):
        if i > 0 and score <= best_before + min_improvement:
            count += 1
        else:
            count = 0
        best_before = max(best_before, score)
    return count


def is_plateau(history: Sequence[float], window: int, min_improvement: float = 0.0) -> bool:
    """True when the last `window` scores did not beat the best earlier score.

    "Beat" means exceeding it by more than `min_improvement`. At least one earlier score is
    needed: with `window` 3, 0.85, 0.83, 0.84, 0.82 is a plateau; 0.5, 0.6, 0.7 is not.
    """
    if window < 1 or len(history) <= window:
        return False
    best_earlier = max(history[:-window])
    return all(score <= best_earlier + min_improvement for score in history[-window:])


def is_oscillating(decisions: Sequence[str], window: int = 4) -> bool:
    """True when the last `window` decisions alternate between keep and reject/revert.

    As in the original script, only keep against a rejection alternates: a neutral word
    (pending, pending_promote, no_candidates, no_accepted_candidates, an unknown word) in
    the window breaks it, so keep, pending_promote, keep, pending_promote runs on, while
    keep, revert, keep, reject is oscillation. A window below 2 disables the check.
    """
    if window < 2 or len(decisions) < window:
        return False
    return alternates([decision_kind(d) for d in decisions[-window:]])


@dataclass(frozen=True, slots=True)
class LoopView:
    """The numbers the stop conditions look at, taken from a target's state."""

    iterations_completed: int
    total_cost_usd: float
    scores: Sequence[float]  # weighted scores of completed iterations that had scores
    decisions: Sequence[str]  # decisions of completed iterations, oldest first


@dataclass(frozen=True, slots=True)
class Limits:
    """A target's limits that the stop conditions compare against."""

    max_iterations: int
    max_cost_usd: float
    plateau_window: int
    min_improvement: float = 0.0
    oscillation_window: int = 4


# The original script's sentences (scripts grep them), with autoloopd's detail after them,
# and autoloopd's own; `stop_sentence` fills them in.
STOP_MESSAGES: dict[str, str] = {
    TargetStatus.STOPPED_MAX_ITER: "max_iterations reached ({done}/{n})",
    TargetStatus.STOPPED_COST: "cost_cap exceeded (${cost:.2f} >= ${cap:.2f})",
    TargetStatus.STOPPED_PLATEAU: "plateau detected (no improvement in last {window} iterations)",
    TargetStatus.STOPPED_OSCILLATION: "oscillation detected (keep-reject alternating pattern)",
    TargetStatus.STOPPED_TARGET_REACHED: "target_score reached",
    TargetStatus.STOPPED_LOW_YIELD: "low yield (estimated gain per dollar below min_gain_per_usd)",
    TargetStatus.STOPPED_DEADLINE: "deadline passed",
    TargetStatus.STOPPED_SIGNAL: "interrupted by signal",
    TargetStatus.STOPPED_OPERATOR: "stopped by operator",
    TargetStatus.STOPPED_REMOVED: "removed from the configuration",
}


@dataclass(frozen=True, slots=True)
class Goals:
    """The optional goals of a target: a score to reach, a least yield, a deadline."""

    target_score: float | None = None
    min_gain_per_usd: float = 0.0
    deadline_at: datetime | None = None


def goal_reason(
    goals: Goals,
    *,
    best: float | None,
    scored: int,
    gain_per_usd: Callable[[], float],
    now: datetime,
    min_scored: int = 3,
) -> str | None:
    """The status a target stops with for one of its goals, or None to go on: the target
    score reached, the estimated yield below the least (after `min_scored` scored
    iterations; `gain_per_usd` is only called then), or the deadline passed."""
    if goals.target_score is not None and best is not None and best >= goals.target_score:
        return TargetStatus.STOPPED_TARGET_REACHED
    low = goals.min_gain_per_usd > 0 and scored >= min_scored
    if low and gain_per_usd() < goals.min_gain_per_usd:
        return TargetStatus.STOPPED_LOW_YIELD
    if goals.deadline_at is not None and now >= goals.deadline_at:
        return TargetStatus.STOPPED_DEADLINE
    return None


def stop_reason(view: LoopView, limits: Limits) -> str | None:
    """The status a target stops with, or None to go on; checked in DESIGN.md's order.

    The shared budget and the circuit breaker are checked elsewhere (they need the
    supervisor's ledger and the failure count).
    """
    if view.iterations_completed >= limits.max_iterations:
        return TargetStatus.STOPPED_MAX_ITER
    if view.total_cost_usd >= limits.max_cost_usd:
        return TargetStatus.STOPPED_COST
    if is_plateau(view.scores, limits.plateau_window, limits.min_improvement):
        return TargetStatus.STOPPED_PLATEAU
    if is_oscillating(view.decisions, limits.oscillation_window):
        return TargetStatus.STOPPED_OSCILLATION
    return None


# The statuses `stop_sentence` words from more than the status: the failure, an operator,
# the shared budget, the window's reset; `plain_sentence` leaves them to it.
_NOT_PLAIN = frozenset({
    TargetStatus.ERROR, TargetStatus.STOPPED_OPERATOR, TargetStatus.STOPPED_BUDGET,
    TargetStatus.WAITING_BUDGET, TargetStatus.WAITING_REVIEW,
})  # fmt: skip


def plain_sentence(status: str) -> str | None:
    """`stop_sentence`'s words for a status that needs nothing else to say them (a signal,
    a deadline, a removal...), without building what the others need; None for the rest.
    A shutdown words one per target (10,000 at once)."""
    if status in _NOT_PLAIN:
        return None
    template = STOP_MESSAGES.get(status)
    return template if template is not None and "{" not in template else None


def stop_sentence(
    status: str,
    view: LoopView,
    limits: Limits,
    *,
    consecutive_errors: int,
    max_consecutive_errors: int,
    last_failure: str | None,
    budget_spent_usd: float | None = None,
    budget_cap_usd: float | None = None,
    next_run_at: str | None = None,
    operator: Mapping[str, Any] | None = None,
) -> str | None:
    """Why a target with `status` stopped (or waits for the budget), in the words printed
    after `Stopped:` and shown by `status`, the live view and the report; None for a status
    without words (running, cooling down, a cluster's lease_lost...).

    The one home of these sentences. A reader without the shared budget's figures (status
    without a daemon, the report) leaves them out and gets the sentence without them.
    """
    if status == TargetStatus.ERROR:
        last = first_line(last_failure) or "unknown error"
        return (
            f"consecutive_errors exceeded ({consecutive_errors}/{max_consecutive_errors}): "
            f"circuit breaker tripped; last: {last}"
        )
    if status == TargetStatus.STOPPED_OPERATOR and operator is not None:
        return f"stopped by operator ({operator_who(operator)}) at {operator.get('at')}"
    if status == TargetStatus.STOPPED_BUDGET:
        if budget_spent_usd is None or budget_cap_usd is None:
            return "shared budget exhausted"
        return f"shared budget exhausted (${budget_spent_usd:.2f} of ${budget_cap_usd:.2f} spent)"
    if status == TargetStatus.WAITING_BUDGET:
        return f"budget window spent; resumes at {next_run_at}"
    if status == TargetStatus.WAITING_REVIEW:
        return "held (review_pause): candidates await review (autoloopd review list)"
    template = STOP_MESSAGES.get(status)
    if template is None:
        return None
    return template.format(
        done=view.iterations_completed,
        n=limits.max_iterations,
        cost=view.total_cost_usd,
        cap=limits.max_cost_usd,
        window=limits.plateau_window,
        osc=limits.oscillation_window,
    )


def backoff_seconds(consecutive_errors: int, base_s: float, max_s: float) -> float:
    """Delay before retrying after `consecutive_errors` failures in a row: doubling, capped."""
    if consecutive_errors <= 0:
        return 0.0
    return float(min(max_s, base_s * (2 ** min(consecutive_errors - 1, 30))))
