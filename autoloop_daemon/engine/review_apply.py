"""Reviewers' verdicts reaching a target's loop, between its iterations.

The runner owns its state and progress; a verdict is written by someone else (`ctl review`,
the dashboard, an expiry, a cluster peer's verdict) into the review log, always by this
process while it runs, which then tells the runner (`wake`, or `mark` for an expiry). So the
runner reads the log itself at start, before the turn after such a notice, after a failed
read, and while a verdict still waits for its run's log line (the iteration log only when
something new came; no read at all in the common case), and applies what it finds as
decision overrides: its progress is rebuilt from the iteration log
with them (policy/review_verdicts.py, policy/progress.py), so an approved candidate counts as
a keep (best score, plateau counter) and a rejected or expired one as a reject from then on.
The side effects of a new verdict are done once, and remembered in the state (`extra`
`reviews_applied`, so a restart does not do them again): an approved candidate that became
the best is copied to `best/` when its files are in the target; with
`restore_best_on_reject`, a rejected one puts the target's files back to `best/`.

With `review_pause`, the runner also holds (`waiting_review`) while candidates await review.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.review_verdicts import (
    Verdict,
    match_verdicts,
    overrides_of,
    parse_verdicts,
)
from autoloop_daemon.runs.restore_best import restore_best
from autoloop_daemon.runs.target_files import content_hash, save_best
from autoloop_daemon.storage.base import ReviewSource
from autoloop_daemon.vocab import Decision, Phase, TargetStatus

if TYPE_CHECKING:
    from autoloop_daemon.engine.target_runner import TargetRunner

log = structlog.get_logger("autoloopd.review")
APPLIED_KEY = "reviews_applied"  # the state's `extra` key: review ids whose effects are done
APPLIED_KEPT = 1000  # ids remembered (a verdict older than these is not done again anyway)
PLACE_TRIES = 3  # log growths a verdict waits to find its iteration (the run in flight)
HOLD_RECHECK_S = 10.0


class ReviewApplier:
    """The verdicts one runner has applied, and the check for new ones."""

    __slots__ = ("_checked_at", "_known", "_runner", "_source", "_stale", "_tries", "_warned")

    def __init__(self, runner: TargetRunner) -> None:
        """Nothing applied yet (`apply` at start reads the whole review log)."""
        self._runner = runner
        # The runner's store, when it sees reviews. Its store never changes; asked once, as
        # `isinstance` against a runtime-checkable Protocol costs ~7 µs (twice a turn).
        store = runner._store
        self._source = store if isinstance(store, ReviewSource) else None
        # True until the review log was read after the last notice (`wake`, `mark`): every
        # writer of a verdict is this process, so between notices the log cannot change
        # (issue 24: it was read from disk before every turn, one worker hand-off each).
        self._stale = True
        self._known = -1  # verdicts seen in the review log at the last look
        self._checked_at = -1  # the last iteration the log had when verdicts were placed
        self._tries: dict[str, int] = {}  # unplaced verdicts: log growths waited so far
        self._warned: str | None = None

    async def apply(self) -> None:
        """Apply the verdicts the review log holds that the loop does not count yet (called
        where the runner's task has its `target` bound to the log context)."""
        source = self._source
        if source is None or not self._due():
            return
        self._stale = False
        try:
            verdicts = parse_verdicts(await source.read_verdicts())
        except (OSError, UnicodeDecodeError) as exc:
            self._stale = True  # look again before the next turn
            if self._warned != str(exc):
                self._warned = str(exc)
                log.warning("review_log_unreadable", error=str(exc))
            return
        if not self._worth_a_look(verdicts):
            return
        runner = self._runner
        entries = await runner._store.read_log()
        placed = match_verdicts(entries, verdicts)
        self._note_unplaced(verdicts, placed, entries)
        overrides = overrides_of(placed)
        if overrides == runner.progress.overrides:
            return
        spec = runner.spec
        runner.progress = Progress.from_entries(
            entries, spec.weights_map, spec.min_improvement, overrides
        )
        runner.progress.apply_to(runner.state)
        runner._note_rate()
        runner._dirty = True
        await self._effects(placed, entries)
        await runner._save()

    def _due(self) -> bool:
        """True when the review log must be read: a notice came since the last read (or
        none was read yet), or verdicts wait to be placed and the iteration log grew."""
        if self._stale:
            return True
        return bool(self._tries) and self._runner.progress.last_iteration != self._checked_at

    def _worth_a_look(self, verdicts: list[Verdict]) -> bool:
        """True when the iteration log must be read: new verdicts, or some not placed yet
        and the log has grown since (their run has finished)."""
        if not verdicts and not self._runner.progress.overrides:
            self._known = 0  # the common case: nothing ever reviewed, no log read at start
            return False
        if len(verdicts) != self._known:
            self._known = len(verdicts)
            return True
        return bool(self._tries) and self._runner.progress.last_iteration != self._checked_at

    def _note_unplaced(
        self, verdicts: list[Verdict], placed: dict[int, Verdict], entries: list[LogEntry]
    ) -> None:
        self._checked_at = entries[-1].iteration if entries else 0
        done = {v.review_id for v in placed.values()} | set(self._applied())
        tries = {}
        for verdict in verdicts:
            if verdict.review_id not in done:
                count = self._tries.get(verdict.review_id, 0) + 1
                if count <= PLACE_TRIES:
                    tries[verdict.review_id] = count
        self._tries = tries

    def _applied(self) -> list[str]:
        value = self._runner.state.extra.get(APPLIED_KEY)
        return [str(v) for v in value] if isinstance(value, list) else []

    async def _effects(self, placed: dict[int, Verdict], entries: list[LogEntry]) -> None:
        """The once-only part of newly placed verdicts (oldest iteration first)."""
        applied = self._applied()
        for iteration in sorted(placed):
            verdict = placed[iteration]
            if verdict.review_id in applied:
                continue
            log.info(
                "review_applied",
                review_id=verdict.review_id,
                iteration=iteration,
                verdict=verdict.verdict,
                counts_as=verdict.counts_as,
            )
            if verdict.counts_as == Decision.KEEP:
                await self._keep_best(iteration, entries)
            elif self._runner.spec.restore_best_on_reject and not await self._restore(verdict):
                continue  # not marked applied: the next start restores again
            applied.append(verdict.review_id)
        self._runner.state.extra[APPLIED_KEY] = applied[-APPLIED_KEPT:]

    async def _keep_best(self, iteration: int, entries: list[LogEntry]) -> None:
        """Copy the target to best/ when the approved candidate is now the best and its files
        are the target's: its run changed them, no later run did, nor anyone since."""
        runner, spec = self._runner, self._runner.spec
        if runner.progress.best_iteration != iteration or spec.dry_run:
            return
        later = [e for e in entries if e.iteration >= iteration]
        exclude = _inside(runner)
        in_place = later[0].changed is True and not any(e.changed for e in later[1:])
        try:
            if in_place:
                now = await anyio.to_thread.run_sync(content_hash, spec.path, exclude)
                in_place = now == runner.state.content_hash
            if not in_place:
                log.info("review_best_not_copied", iteration=iteration,
                         why="the approved candidate's files are not the target's")  # fmt: skip
                return
            await anyio.to_thread.run_sync(
                save_best, spec.path, spec.state_root, iteration, exclude
            )
        except OSError as exc:
            log.warning("best_copy_failed", iteration=iteration, error=str(exc))
            return
        runner.state.best_copy_iteration = iteration
        log.info("best_version_saved", iteration=iteration, score=runner.progress.best)

    async def _restore(self, verdict: Verdict) -> bool:
        """`restore_best_on_reject`: the target's files back to best/ (runs/restore_best.py);
        False when a file could not be written."""
        runner, spec = self._runner, self._runner.spec
        exclude = _inside(runner)
        try:
            changed = await anyio.to_thread.run_sync(
                restore_best, spec.path, spec.state_root, exclude
            )
            runner.state.content_hash = await anyio.to_thread.run_sync(
                content_hash, spec.path, exclude
            )
        except FileNotFoundError as exc:
            log.warning("best_not_restored", review_id=verdict.review_id, error=str(exc))
            return True  # nothing to restore, now or later
        except OSError as exc:  # what was restored stays; the next start tries again
            log.warning("best_restore_failed", review_id=verdict.review_id, error=str(exc))
            return False
        log.info("best_version_restored", review_id=verdict.review_id,
                 iteration=runner.state.best_copy_iteration, paths_changed=changed)  # fmt: skip
        return True

    async def awaiting(self) -> int:
        """With `review_pause`: how many candidates await review (0 without it)."""
        source = self._source
        if source is None or not self._runner.spec.review_pause:
            return 0
        return len(await source.pending_reviews())

    async def hold(self, count: int) -> None:
        """Wait (`waiting_review`) a while for the verdicts; `wake` ends it early."""
        runner = self._runner
        if runner.state.status != TargetStatus.WAITING_REVIEW:
            log.info("review_hold", pending=count)
        runner._enter(TargetStatus.WAITING_REVIEW, Phase.PAUSED)
        if runner._dirty:
            await runner._save()
        await runner._stop.sleep(HOLD_RECHECK_S)

    def mark(self) -> None:
        """A verdict was written (an expiry): read the review log before the next turn."""
        self._stale = True

    def wake(self) -> None:
        """A verdict was given: look again now (ends a hold or another wait early)."""
        self._known = -1
        self._stale = True
        self._runner._wake()


def _inside(runner: TargetRunner) -> Path | None:
    """The state root when it lies inside the target (left out of hashes and copies)."""
    root, target = runner.spec.state_root, runner.spec.path
    return root if root.is_relative_to(target) else None
