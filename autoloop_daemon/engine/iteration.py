"""One iteration of a target: run the orchestrator under a live cost meter, then record it.

The run's end is decided by the stop deadline and the caps (policy/live_cost.py via the
budget's meter); what it changed in the target's files is hashed, the best version copied,
and the result recorded (log line, handoff, state) in one storage call.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.budget import Meter
from autoloop_daemon.engine.target_control import TargetControls
from autoloop_daemon.exceptions import FencedWriteError
from autoloop_daemon.models import IterationResult, LogEntry
from autoloop_daemon.policy import cycle
from autoloop_daemon.policy.live_cost import (
    REASON_BUDGET,
    REASON_ITERATION_COST,
    REASON_TARGET_COST,
    StopAt,
)
from autoloop_daemon.policy.recording import build_entry
from autoloop_daemon.runs.orchestrator import run_iteration
from autoloop_daemon.runs.target_files import content_hash, save_best
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.target_state import InFlight
from autoloop_daemon.vocab import (
    KNOWN_DECISIONS,
    Decision,
    RunStatus,
    TargetStatus,
)

log = structlog.get_logger("autoloopd.target")

# The stop a cap's live cut leads to (a per-iteration limit only fails the run).
CUT_STATUS = {
    REASON_BUDGET: TargetStatus.STOPPED_BUDGET,
    REASON_TARGET_COST: TargetStatus.STOPPED_COST,
}


class IterationSteps(TargetControls):
    """Running and recording one iteration."""

    def _last_handoff(self) -> Path | None:
        if not self.progress.history:
            return None
        return self._store.handoff_file(int(self.progress.history[-1]["iteration"]))

    async def _iterate(self) -> float:
        """Run and record one iteration; returns what it cost (for the budget)."""
        spec = self.spec
        iteration = self.state.next_iteration
        started = now_utc()
        t0 = time.monotonic()
        self.phase = "running"
        self.running_since = t0
        self.state.status = TargetStatus.RUNNING
        # No pid: its processes are found after a crash by their AUTOLOOPD_RUN marker, which
        # grandchildren inherit too (recording the pid would cost one more checkpoint).
        self.state.in_flight = InFlight(iteration, to_iso(started))
        self.state.next_run_at = None
        before_scores = dict(self.state.current_scores)
        await self._save()
        handoff = self._last_handoff()
        run_log = None if spec.dry_run else artifacts.run_log_path(spec.state_root, iteration)
        with structlog.contextvars.bound_contextvars(iteration=iteration):
            self._events.publish(
                ev.IterationStarted(
                    target=spec.name,
                    iteration=iteration,
                    completed=self.state.iterations_completed,
                    max_iterations=self.limits().max_iterations,
                    retry=self.state.consecutive_errors,
                    handoff=None if handoff is None else str(handoff),
                    run_log=None if run_log is None else str(run_log),
                )
            )
            result: IterationResult | None = None
            self._cut = None
            meter = self._open_meter()
            try:
                with anyio.CancelScope() as scope:
                    self._iter_scope = scope
                    self._apply_deadline()
                    result = await run_iteration(
                        spec,
                        iteration,
                        handoff=handoff,
                        on_cost=meter.report,
                        fence=self._store.fence,
                    )
            finally:
                self._iter_scope = None
                live = meter.live_usd()
                meter.close()
            self.running_since = None
            cut = (
                self._cut.reason
                if result is None and self._cut is not None and self._cut_due()
                else None
            )
            with anyio.CancelScope(shield=True):
                changed = await self._files_changed(result)
                entry = build_entry(
                    spec, iteration, started, now_utc(), time.monotonic() - t0, result, changed,
                    cut=cut, live_cost_usd=live,
                )  # fmt: skip
                if cut is not None and cut in CUT_STATUS:
                    self._cut_status = CUT_STATUS[cut]
                await self._record(entry, result, before_scores)
                await self._keep_best(entry)
            return entry.cost_usd

    def _wall_time_priced(self) -> bool:
        """True when the next run is metered by wall time: its orchestrator did not report
        its cost last time (or has not run yet) and the rate is not zero."""
        spec = self.spec
        return not spec.dry_run and spec.cost_per_minute_usd > 0 and not self.progress.reports_cost

    def _open_meter(self) -> Meter:
        """Meter the run's live cost: by wall time unless its orchestrator reports cost."""
        spec = self.spec
        wall_time = self._wall_time_priced()
        target_left = self.limits().max_cost_usd - self.state.total_cost_usd  # with `ctl extend`
        limit = spec.max_iteration_cost_usd
        own_reason = REASON_TARGET_COST
        if limit is not None and limit < target_left:
            target_left, own_reason = limit, REASON_ITERATION_COST
        return self._budget.open_meter(
            rate_usd_per_s=spec.cost_per_minute_usd / 60.0 if wall_time else 0.0,
            own_limit_usd=target_left,
            own_reason=own_reason,
            on_plan=self._on_plan,
        )

    def _on_plan(self, plan: StopAt) -> None:
        self._cut = plan if plan.reason is not None else None
        self._apply_deadline()

    def _cut_due(self) -> bool:
        return self._cut is not None and anyio.current_time() >= self._cut.at_s - 1e-3

    def _state_root_inside_target(self) -> Path | None:
        root, target = self.spec.state_root, self.spec.path
        return root if root.is_relative_to(target) else None

    async def _files_changed(self, result: IterationResult | None) -> bool | None:
        """Whether the run changed the target's files (None: not checked)."""
        if self.spec.dry_run or result is None or result.status != "completed":
            return None
        before = self.state.content_hash
        try:
            after = await anyio.to_thread.run_sync(
                content_hash, self.spec.path, self._state_root_inside_target()
            )
        except OSError as exc:
            log.warning("content_hash_failed", error=str(exc))
            return None
        self.state.content_hash = after
        return None if before is None else after != before

    async def _keep_best(self, entry: LogEntry) -> None:
        """Copy the target to best/ when a kept run that changed files reached a new best."""
        if (
            entry.decision != Decision.KEEP
            or entry.changed is not True
            or self.progress.best_iteration != entry.iteration
        ):
            return
        try:
            await anyio.to_thread.run_sync(
                save_best,
                self.spec.path,
                self.spec.state_root,
                entry.iteration,
                self._state_root_inside_target(),
            )
        except OSError as exc:
            log.warning("best_copy_failed", iteration=entry.iteration, error=str(exc))
            return
        self.state.best_copy_iteration = entry.iteration
        self._dirty = True
        log.info("best_version_saved", iteration=entry.iteration, score=self.progress.best)

    async def _record(
        self, entry: LogEntry, result: IterationResult | None, before: dict[str, float]
    ) -> None:
        self.last_entry = entry
        self.progress.add(entry)
        self.progress.apply_to(self.state)
        self._note_rate()
        self.state.in_flight = None
        if result is not None and entry.status == RunStatus.FAILED:
            self.state.last_failure_trace = result.failure_trace or result.error
        finished = parse_iso(entry.finished_at) or now_utc()
        plan = cycle.after_run(
            run_status=RunStatus(entry.status),
            mode=self.spec.mode,
            one_shot=self._one_shot,
            stop_requested=self._stop_requested,
            finished=finished,
            cooldown_s=self.spec.cooldown_s,
            schedule=self.spec.schedule,
        )
        if plan.next_run_at is not None:
            self.state.next_run_at = to_iso(plan.next_run_at)
        self.state.status = plan.status
        handoff = None
        if entry.completed:
            handoff = artifacts.handoff_for(entry, before)
        self._dirty = plan.may_defer_save
        try:
            await self._store.record(entry, handoff, None if self._dirty else self.state)
        except FencedWriteError as exc:  # cluster: journaled here; the lease is elsewhere
            log.warning("cluster_write_fenced", error=str(exc))
            self.request_stop(0.0, TargetStatus.LEASE_LOST)
        if (
            entry.decision is not None
            and entry.decision not in KNOWN_DECISIONS
            and entry.decision not in self._warned_decisions
        ):
            self._warned_decisions.add(entry.decision)
            log.warning(
                "unknown_decision",
                decision=entry.decision,
                hint="recorded verbatim as a completed iteration; it counts as not-keep",
            )
        if entry.completed and not entry.scores and not self._warned_no_scores:
            self._warned_no_scores = True
            log.warning(
                "scores_missing",
                hint="no scores in the result, no scorer, no learner file; "
                "plateau detection neither advances nor resets",
            )
        self._events.publish(
            ev.IterationFinished(
                self.spec.name, entry, self.state.total_cost_usd, self.progress.estimated_cost_usd
            )
        )
