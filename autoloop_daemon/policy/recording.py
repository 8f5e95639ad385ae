"""The log entry of one finished run, from what the run produced. Pure."""

from __future__ import annotations

from datetime import datetime

from autoloop_daemon.clock import to_iso
from autoloop_daemon.models import IterationResult, LogEntry, TargetSpec
from autoloop_daemon.policy.cost import charged_cost_usd
from autoloop_daemon.policy.stops import weighted_score
from autoloop_daemon.vocab import RunStatus

INTERRUPTED_ERROR = "stopped by autoloopd shutdown"


def build_entry(
    spec: TargetSpec,
    iteration: int,
    started: datetime,
    finished: datetime,
    duration_s: float,
    result: IterationResult | None,
) -> LogEntry:
    """The `iteration_log.jsonl` line of a run; `result` None means it was interrupted.

    An interrupted run is charged its wall time at the target's rate (nothing for the
    simulator); a finished one what it reported, else its wall time at the rate. The
    weighted score comes from the scores with the target's weights, else as reported.
    """
    if result is None:
        cost = (
            0.0 if spec.dry_run else charged_cost_usd(None, duration_s, spec.cost_per_minute_usd)[0]
        )
        return LogEntry(
            iteration=iteration,
            started_at=to_iso(started),
            finished_at=to_iso(finished),
            status=RunStatus.INTERRUPTED,
            decision=None,
            weighted_score=None,
            cost_usd=round(cost, 6),
            duration_seconds=round(duration_s, 3),
            error=INTERRUPTED_ERROR,
            cost_source=None if spec.dry_run else "estimated",
        )
    cost, source = charged_cost_usd(result.cost_usd, result.duration_s, spec.cost_per_minute_usd)
    scores = dict(result.scores)
    score = weighted_score(scores, spec.weights_map) if scores else result.weighted_score
    return LogEntry(
        iteration=iteration,
        started_at=to_iso(started),
        finished_at=to_iso(finished),
        status=RunStatus(result.status),
        decision=result.decision,
        weighted_score=None if score is None else round(score, 6),
        cost_usd=round(cost, 6),
        duration_seconds=round(duration_s, 3),
        candidate_id=result.candidate_id,
        artifact_path=result.artifact_path,
        scores=scores,
        exit_code=result.exit_code,
        error=result.error,
        cost_source=source,
    )
