"""One iteration of a target: run the orchestrator under a live cost meter, then record it.

The runner builds an `Iteration` per turn that runs one. The run's end is decided by the
stop deadline and the caps (engine/stop_control.py, policy/live_cost.py via the budget's
meter); what it changed in the target's files is hashed, the best version copied, and the
result recorded (log line, handoff, state) in one storage call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import structlog

from autoloop_daemon import worker_threads
from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.budget import Meter
from autoloop_daemon.exceptions import FencedWriteError
from autoloop_daemon.models import IterationResult, LogEntry
from autoloop_daemon.policy import cycle
from autoloop_daemon.policy.handoff import handoff_for
from autoloop_daemon.policy.live_cost import (
    REASON_ITERATION_COST,
    REASON_TARGET_COST,
    graced_limit_usd,
)
from autoloop_daemon.policy.recording import build_entry
from autoloop_daemon.runs.orchestrator import run_iteration, run_log_file
from autoloop_daemon.runs.process import ProcessOutcome
from autoloop_daemon.runs.target_files import content_hash, content_hash_if_dir, save_best
from autoloop_daemon.target_state import InFlight
from autoloop_daemon.vocab import KNOWN_DECISIONS, Decision, Phase, RunStatus, TargetStatus

if TYPE_CHECKING:
    from autoloop_daemon.engine.target_runner import TargetRunner

log = structlog.get_logger("autoloopd.target")
T = TypeVar("T")


class Iteration:
    """The next iteration of `runner`'s target: `run()` runs and records it.

    A part of its runner (which builds it, and whose state it advances), not a stage of it:
    it reads the runner's spec, state and progress and writes the state only through the
    runner's `_enter` and its checkpoint.
    """

    __slots__ = ("_hash_after", "_runner", "number", "spec")

    def __init__(self, runner: TargetRunner) -> None:
        """The iteration after the last one `runner`'s state counts (nothing runs yet)."""
        self._runner = runner
        self.spec = runner.spec
        self.number = runner.state.next_iteration
        self._hash_after: str | OSError | None = None  # `_hash_after_run`'s

    async def run(self) -> float:
        """Run and record the iteration; returns what it cost (for the budget)."""
        runner, spec, state = self._runner, self.spec, self._runner.state
        started = now_utc()
        t0 = runner.running_since = time.monotonic()
        runner._enter(TargetStatus.RUNNING, Phase.RUNNING)
        # No pid: its processes are found after a crash by their AUTOLOOPD_RUN marker, which
        # grandchildren inherit too (recording the pid would cost one more checkpoint).
        state.in_flight = InFlight(self.number, to_iso(started))
        state.next_run_at = None
        before_scores = state.current_scores  # replaced, never changed in place
        await self._hash_if_unknown()
        # bind/reset, not bound_contextvars: that leaves `iteration` in the task's context
        tokens = structlog.contextvars.bind_contextvars(iteration=self.number)
        try:
            result, live_usd, final_usd = await self._run_metered(self._last_handoff())
            runner.running_since = None
            cut = None if result is not None else runner._stop.cut_reason()
            with anyio.CancelScope(shield=True):
                changed = self._files_changed(result)
                entry = build_entry(
                    spec, self.number, started, now_utc(), time.monotonic() - t0, result,
                    changed, cut=cut, live_cost_usd=live_usd, final_cost_usd=final_usd,
                    stopped_by=runner._stop.status if runner._stop.requested else None,
                )  # fmt: skip
                await self._record(entry, result, before_scores)
                await self._keep_best(entry)
            return entry.cost_usd
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _checkpoint_then(self, work: Callable[[], T]) -> T:
        """The in-flight checkpoint, then the run's preparation `work()`: one hand-off.

        The run starts only once the state says it is in flight (a crash then finds it),
        and nothing starts when the checkpoint fails (StateWriteError propagates). The
        iteration is announced once the checkpoint is durable, even when `work` fails (a
        run log that cannot be opened: the run is recorded as failed)."""
        runner = self._runner
        runner._dirty = False
        checkpointed = False

        def after_checkpoint() -> T:
            nonlocal checkpointed
            checkpointed = True
            return work()

        try:
            return await runner._store.save_then(runner.state, after_checkpoint)
        finally:
            if checkpointed:
                self._announce()

    def _announce(self) -> None:
        """Publish `IterationStarted`."""
        runner, state = self._runner, self._runner.state
        handoff = self._last_handoff()
        run_log = run_log_file(self.spec, self.number)
        runner._events.publish(
            ev.IterationStarted(
                target=self.spec.name,
                iteration=self.number,
                completed=state.iterations_completed,
                max_iterations=runner.max_iterations_now,
                retry=state.consecutive_errors,
                handoff=None if handoff is None else str(handoff),
                run_log=None if run_log is None else str(run_log),
            )
        )

    async def _run_metered(
        self, handoff: Path | None
    ) -> tuple[IterationResult | None, float, float | None]:
        """Checkpoint, then run the orchestrator until it ends, the stop deadline or a cap's
        cut.

        Returns its result (None: cut or stopped), the meter's live cost and the cost its
        result line stated (None: none was printed).
        """
        stop = self._runner._stop
        result: IterationResult | None = None
        final: list[float] = []
        stop.clear_cut()
        meter = self._open_meter()
        try:
            with anyio.CancelScope() as scope:
                stop.iteration_started(scope)
                result = await run_iteration(
                    self.spec,
                    self.number,
                    handoff=handoff,
                    on_cost=meter.report,
                    fence=self._runner._store.fence,
                    on_final_cost=final.append,
                    prepare=self._checkpoint_then,
                    at_end=None if self.spec.dry_run else self._hash_after_run,
                )
        finally:
            stop.iteration_ended()
            live_usd = meter.live_usd()
            meter.close()
        return result, live_usd, final[-1] if final else None

    def _last_handoff(self) -> Path | None:
        last = self._runner.progress.history.last_iteration
        return None if last is None else self._runner._store.handoff_file(last)

    def _open_meter(self) -> Meter:
        """Meter the run's live cost: by wall time unless its orchestrator reports cost."""
        runner, spec = self._runner, self.spec
        target_left = runner.limits().max_cost_usd - runner.state.total_cost_usd
        limit = spec.max_iteration_cost_usd
        own_reason = REASON_TARGET_COST
        if limit is not None and limit < target_left:
            target_left, own_reason = limit, REASON_ITERATION_COST
        rate = spec.cost_per_minute_usd / 60.0 if runner._wall_time_priced() else 0.0
        if spec.hard_cap:  # stop early enough that the grace still fits under the limit
            target_left = graced_limit_usd(target_left, rate, spec.term_grace_seconds)
        return runner._budget.open_meter(
            rate_usd_per_s=rate,
            own_limit_usd=target_left,
            own_reason=own_reason,
            on_plan=runner._stop.on_plan,
        )

    def _state_root_inside_target(self) -> Path | None:
        root, target = self.spec.state_root, self.spec.path
        return root if root.is_relative_to(target) else None

    async def _hash_if_unknown(self) -> None:
        """Hash the target before a run when no hash is known yet (the first run, or state
        that lost it), so that this run's own edit is seen as a change."""
        state = self._runner.state
        if self.spec.dry_run or state.content_hash is not None:
            return
        try:  # whether the directory is there is asked in the worker too: a stat can block
            state.content_hash = await worker_threads.run_sync(
                content_hash_if_dir, self.spec.path, self._state_root_inside_target()
            )
        except OSError as exc:
            log.warning("content_hash_failed", error=str(exc))

    def _hash_after_run(self, outcome: ProcessOutcome) -> None:
        """The target's content hash once its run is over (blocking: called in the run
        log's closing worker call, `run_iteration`'s `at_end`). Not for a run that failed:
        only a completed one (exit 0 in time) is asked whether it changed the files."""
        if outcome.timed_out or outcome.returncode != 0:
            return
        try:
            if not self.spec.path.is_dir():  # gone: not "changed" (the hash of nothing)
                raise FileNotFoundError(f"target directory is gone: {self.spec.path}")
            self._hash_after = content_hash(self.spec.path, self._state_root_inside_target())
        except OSError as exc:
            self._hash_after = exc

    def _files_changed(self, result: IterationResult | None) -> bool | None:
        """Whether the run changed the target's files (None: not checked), from the hash
        taken when its run ended (a completed run always ended: `_hash_after_run`)."""
        after, self._hash_after = self._hash_after, None
        if self.spec.dry_run or result is None or result.status != "completed" or after is None:
            return None
        if isinstance(after, OSError):
            log.warning("content_hash_failed", error=str(after))
            return None
        state = self._runner.state
        before, state.content_hash = state.content_hash, after
        return None if before is None else after != before

    async def _keep_best(self, entry: LogEntry) -> None:
        """Copy the target to best/ when a kept run that changed files reached a new best."""
        runner = self._runner
        if (
            entry.decision != Decision.KEEP
            or entry.changed is not True
            or runner.progress.best_iteration != entry.iteration
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
        runner.state.best_copy_iteration = entry.iteration
        runner._dirty = True
        log.info("best_version_saved", iteration=entry.iteration, score=runner.progress.best)

    async def _record(
        self, entry: LogEntry, result: IterationResult | None, before: dict[str, float]
    ) -> None:
        """Add `entry` to the progress and the state, plan what comes next, store it."""
        runner, spec = self._runner, self.spec
        state, progress = runner.state, runner.progress
        runner.last_entry = entry
        progress.add(entry)
        progress.apply_to(state)
        runner._note_rate()
        state.in_flight = None
        if result is not None and entry.status == RunStatus.FAILED:
            state.last_failure_trace = result.failure_trace or result.error
        plan = cycle.after_run(
            run_status=RunStatus(entry.status),
            mode=spec.mode,
            one_shot=runner._one_shot,
            stop_requested=runner._stop.requested,
            finished=parse_iso(entry.finished_at) or now_utc(),
            cooldown_s=spec.cooldown_s,
            schedule=spec.schedule,
        )
        if plan.next_run_at is not None:
            state.next_run_at = to_iso(plan.next_run_at)
        runner._enter(plan.status, Phase.RUNNING)
        handoff = handoff_for(entry, before) if entry.completed else None
        runner._dirty = plan.may_defer_save
        try:
            await runner._store.record(entry, handoff, None if runner._dirty else state)
        except FencedWriteError as exc:  # cluster: journaled here; the lease is elsewhere
            log.warning("cluster_write_fenced", error=str(exc))
            runner.request_stop(0.0, TargetStatus.LEASE_LOST)
        self._warn_once(entry)
        runner._events.publish(
            ev.IterationFinished(
                spec.name, entry, state.total_cost_usd, progress.estimated_cost_usd
            )
        )

    def _warn_once(self, entry: LogEntry) -> None:
        """Warn, once per runner, of a decision word not known and of a run with no scores."""
        runner = self._runner
        decision = entry.decision
        if decision is not None and decision not in KNOWN_DECISIONS:
            key = f"decision {decision}"
            if key not in runner._warned:
                runner._warned |= {key}
                log.warning(
                    "unknown_decision",
                    decision=decision,
                    hint="recorded verbatim as a completed iteration; it counts as not-keep",
                )
        if entry.completed and not entry.scores and "scores_missing" not in runner._warned:
            runner._warned |= {"scores_missing"}
            log.warning(
                "scores_missing",
                hint="no scores in the result, no scorer, no learner file; "
                "plateau detection neither advances nor resets",
            )
