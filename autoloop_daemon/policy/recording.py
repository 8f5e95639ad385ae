"""The log entry of one finished run, from what the run produced. Pure."""

from __future__ import annotations

from datetime import datetime

from autoloop_daemon.clock import to_iso
from autoloop_daemon.models import IterationResult, LogEntry, TargetSpec
from autoloop_daemon.policy.cost import charged_cost_usd
from autoloop_daemon.policy.live_cost import (
    REASON_BUDGET,
    REASON_ITERATION_COST,
    REASON_TARGET_COST,
    REASON_WINDOW,
    overage_usd,
)
from autoloop_daemon.policy.stops import weighted_score
from autoloop_daemon.vocab import RunStatus, TargetStatus

INTERRUPTED_ERROR = "stopped by autoloopd shutdown"
# Why a run was stopped, by the stop's status, where it is not a shutdown.
STOP_ERRORS: dict[str, str] = {
    TargetStatus.LEASE_LOST: "stopped: this host lost the target's lease (another host "
    "may run it now)",
    TargetStatus.HANDED_OVER: "stopped: the target was handed over to another host",
    TargetStatus.STOPPED_OPERATOR: "stopped by an operator (ctl stop)",
}
OVERAGE_ERROR = (
    "overage: reported ${cost:.4f}, above max_iteration_cost_usd ${limit:.4f} by ${over:.4f} "
    '(guarantee = "hard")'
)
CUT_ERRORS = {
    REASON_BUDGET: "stopped: its live cost would pass the shared budget's cap",
    REASON_TARGET_COST: "stopped: its live cost would pass the target's max_cost_usd",
    REASON_WINDOW: "stopped: its live cost would pass the budget window's cap (the target "
    "goes on in the next window)",
    REASON_ITERATION_COST: "stopped: its live cost reached max_iteration_cost_usd",
}

# The run that crosses the shared or the target's cap counts as an iteration, with its cost,
# as in the original script (which ran it to its end and then stopped); a cut at the
# per-iteration limit fails instead, a window's cut is retried in the next window.
CAP_CROSSING_ERRORS = frozenset({CUT_ERRORS[REASON_BUDGET], CUT_ERRORS[REASON_TARGET_COST]})


def build_entry(
    spec: TargetSpec,
    iteration: int,
    started: datetime,
    finished: datetime,
    duration_s: float,
    result: IterationResult | None,
    changed: bool | None = None,
    cut: str | None = None,
    live_cost_usd: float | None = None,
    final_cost_usd: float | None = None,
    stopped_by: str | None = None,
) -> LogEntry:
    """The `iteration_log.jsonl` line of a run; `result` None means it was interrupted.

    An interrupted run is charged its wall time at the target's rate (nothing for the
    simulator), or the live cost the orchestrator last reported if that is more; `cut`
    says which cap stopped it (policy/live_cost.py), `stopped_by` which stop did (the
    stop's status). One that had printed its result line (`final_cost_usd`) before it was
    stopped is charged what that line says, as a finished run would be. A finished run is
    charged what it reported, else its wall time at the rate. The weighted score comes
    from the scores with the target's weights, else as reported.
    """
    if result is None:
        return _interrupted_entry(
            spec, iteration, started, finished, duration_s, cut, live_cost_usd,
            final_cost_usd, stopped_by,
        )  # fmt: skip
    cost, source = charged_cost_usd(result.cost_usd, result.duration_s, spec.cost_per_minute_usd)
    status, error = _flag_overage(spec, cost, RunStatus(result.status), result.error)
    scores = dict(result.scores)
    score = weighted_score(scores, spec.weights_map) if scores else result.weighted_score
    return LogEntry(
        iteration=iteration,
        started_at=to_iso(started),
        finished_at=to_iso(finished),
        status=status,
        decision=result.decision,
        weighted_score=None if score is None else round(score, 6),
        cost_usd=round(cost, 6),
        duration_seconds=round(duration_s, 3),
        candidate_id=result.candidate_id,
        artifact_path=result.artifact_path,
        scores=scores,
        exit_code=result.exit_code,
        error=error,
        cost_source=source,
        changed=changed,
    )


def _flag_overage(
    spec: TargetSpec, cost_usd: float, status: RunStatus, error: str | None
) -> tuple[RunStatus, str | None]:
    """Under `guarantee = "hard"` a run that reports more than its per-iteration limit is
    booked as it was, flagged, and failed (the circuit breaker counts it)."""
    over = overage_usd(cost_usd, spec.max_iteration_cost_usd) if spec.hard_cap else 0.0
    if over <= 0:
        return status, error
    flag = OVERAGE_ERROR.format(cost=cost_usd, limit=spec.max_iteration_cost_usd, over=over)
    return RunStatus.FAILED, flag


def _interrupted_entry(
    spec: TargetSpec,
    iteration: int,
    started: datetime,
    finished: datetime,
    duration_s: float,
    cut: str | None,
    live_cost_usd: float | None,
    final_cost_usd: float | None,
    stopped_by: str | None,
) -> LogEntry:
    """The entry of a run that came back without a result (see `build_entry`)."""
    rate = 0.0 if spec.dry_run else spec.cost_per_minute_usd
    cost, source = charged_cost_usd(None, duration_s, rate)
    if final_cost_usd is not None:
        cost, source = final_cost_usd, "reported"
    elif live_cost_usd is not None and live_cost_usd > cost:
        cost, source = live_cost_usd, "reported"
    # A run stopped at its own per-iteration limit failed (it counts towards the circuit
    # breaker, so a target whose runs always cost too much does not retry for ever).
    failed = cut == REASON_ITERATION_COST
    return LogEntry(
        iteration=iteration,
        started_at=to_iso(started),
        finished_at=to_iso(finished),
        status=RunStatus.FAILED if failed else RunStatus.INTERRUPTED,
        decision=None,
        weighted_score=None,
        cost_usd=round(cost, 6),
        duration_seconds=round(duration_s, 3),
        error=CUT_ERRORS.get(cut or "") or STOP_ERRORS.get(stopped_by or "", INTERRUPTED_ERROR),
        cost_source=source,
    )
