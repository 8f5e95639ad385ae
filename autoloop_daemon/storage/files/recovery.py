"""Start-up recovery of one state root: lock it and bring its state up to its log.

The log is the source of truth. At start: take the lock, remove temp files a killed write
left, read the state (refusing a corrupt one untouched) and the log (truncating a torn last
line; only past the state's log checkpoint when it still holds, log_checkpoint.py), seed
a log from an old state that has none, stop what earlier runs left running
(found by their AUTOLOOPD_RUN marker), record a run that was in flight when the last process
died as `interrupted` (stopping its orphaned process group), restore a handoff
a crash lost, recompute the state from the log and checkpoint it.

Finding and stopping processes is not storage's business: the caller hands in `Leftovers`
(runs/leftovers.py, passed down by the composition root); without one nothing is stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.cost import elapsed_cost_usd
from autoloop_daemon.policy.handoff import handoff_for
from autoloop_daemon.storage.base import Recovered
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.storage.files import state_file as state_mod
from autoloop_daemon.storage.files.fsio import remove_stale_tmp
from autoloop_daemon.storage.files.group_commit import GroupCommit
from autoloop_daemon.storage.files.lock import StateLock
from autoloop_daemon.storage.files.log_checkpoint import LogSummary, read_summary
from autoloop_daemon.storage.files.review_files import read_verdicts, verdicts_written
from autoloop_daemon.storage.files.worker_batch import WorkerBatch
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import RunStatus

log = structlog.get_logger("autoloopd.recovery")

# Where atomic writes leave temp files when killed (run logs are appended, never replaced).
_SUBDIRS = ("handoffs", "learner")


class Leftovers(Protocol):
    """Finds and stops what a state root's earlier runs left running (by their marker)."""

    async def stop_finished_runs(self, spec: TargetSpec, running: int | None) -> None:
        """Stop the processes of `spec`'s finished runs (all but run `running`)."""
        ...

    async def stop_run(self, spec: TargetSpec, iteration: int) -> int:
        """Stop the orphans of `spec`'s run `iteration`; how many there were."""
        ...


@dataclass(frozen=True, slots=True)
class ReviewLogAtOpen:
    """A state root's review log as its start-up load read it: the verdicts, and how many
    verdicts this process had written when the load was queued (`verdicts_written`)."""

    verdicts: list[dict[str, Any]]
    written_before: int

    def current(self) -> list[dict[str, Any]] | None:
        """The verdicts, while no verdict was written since (else None: read the log)."""
        return self.verdicts if verdicts_written() == self.written_before else None


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What one blocking start-up call read of a state root."""

    state: TargetState | None
    summary: LogSummary
    stale: list[Path]  # temp files a killed write left, removed
    handoff_intact: bool  # the newest completed run's handoff is there, not empty
    verdicts: list[dict[str, Any]] | None  # the review log (None: unreadable, said later)


def _load_sync(
    spec: TargetSpec, lock: StateLock, migrations: list[str], unsynced: list[Path]
) -> _Loaded:
    # New directories are made durable with the first checkpoint (`unsynced`): one syncfs
    # for a whole fresh fleet instead of two directory fsyncs per target.
    if not lock.held:  # else taken before READY (root_locks.py)
        lock.acquire(unsynced=unsynced)
    try:
        root = spec.state_root
        artifacts.ensure_layout(root, unsynced=unsynced)
        # Only a killed writer leaves temp files. The subdirectories gain a file per
        # iteration, so they are listed only when the last owner did not release the lock.
        dirs = (root, *(root / s for s in _SUBDIRS)) if lock.stale_holder is not None else (root,)
        stale = [p for d in dirs for p in remove_stale_tmp(d)]
        loaded = state_mod.load_state(state_mod.state_path(root), on_migrate=migrations.append)
        marker = None if loaded is None else loaded.log_checkpoint
        summary = read_summary(root, marker, spec.weights_map, spec.min_improvement)
        # Read here, in the start-up's batched call, rather than one worker hand-off each
        # afterwards: at 10,000 warm targets those two hand-offs were 2/3 of the load's time.
        last = summary.last_completed
        intact = last is not None and _has_content(artifacts.handoff_path(root, last.iteration))
        verdicts = _verdicts_or_none(root)
    except BaseException:
        lock.release()
        raise
    return _Loaded(loaded, summary, stale, intact, verdicts)


def _verdicts_or_none(root: Path) -> list[dict[str, Any]] | None:
    try:
        return read_verdicts(root)
    except (OSError, UnicodeDecodeError):
        return None  # the runner reads it again, and says what is wrong


def _has_content(path: Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


async def recover(
    spec: TargetSpec,
    lock: StateLock,
    commits: GroupCommit,
    loads: WorkerBatch | None = None,
    leftovers: Leftovers | None = None,
) -> tuple[Recovered, ReviewLogAtOpen | None]:
    """Lock `spec`'s state root, recover it from its log and checkpoint it; with the
    review log as the load read it (None when it could not be read).

    `leftovers` stops what earlier runs left running (None: nothing is looked for). `lock`
    may be held already (taken before READY, root_locks.py).

    The checkpoint goes through `commits`, so the targets started together sync together;
    the loading (lock, layout, state, log) through `loads` when given, so that the targets
    started together load in a few worker calls instead of one each.

    Raises StateLockedError, StateCorruptError or StateWriteError (the lock is released and
    a refused file is left untouched).
    """
    migrations: list[str] = []
    unsynced: list[Path] = []  # directories created by _load_sync, not yet durable
    written_before = verdicts_written()  # before the load is queued: see ReviewLogAtOpen
    if loads is None:
        read = await anyio.to_thread.run_sync(_load_sync, spec, lock, migrations, unsynced)
    else:
        read = await loads.run(_load_sync, spec, lock, migrations, unsynced)
    loaded, summary, stale = read.state, read.summary, read.stale
    log_file = artifacts.log_path(spec.state_root)
    try:
        if summary.torn:
            log.warning("log_tail_truncated", path=str(log_file), bytes=summary.torn)
        if stale:
            log.info("stale_temp_files_removed", count=len(stale))
        for line in migrations:
            log.info("state_migrated", detail=line)
        state, before = await _starting_state(spec, loaded, summary)
        running = None if state.in_flight is None else state.in_flight.iteration
        if lock.stale_holder is not None and leftovers is not None:
            # The last owner was killed: look for its runs.
            await leftovers.stop_finished_runs(spec, running)
        await _record_interrupted_run(spec, state, summary, leftovers)
        if not read.handoff_intact:
            await _restore_last_handoff(spec, summary)
        progress = summary.progress
        state.log_checkpoint = summary.marker
        progress.apply_to(state)
        state.apply_limits(spec)
        state.in_flight = None
        # A warm restart of an up-to-date state writes nothing (a migrated one is written).
        if before is None or unsynced or migrations or _compared(state) != before:
            data = state_mod.encode_state(state)
            await commits.write(
                state_mod.state_path(spec.state_root), data, check_root=True, sync_dirs=unsynced
            )
    except BaseException:
        lock.release()
        raise
    reviews = None if read.verdicts is None else ReviewLogAtOpen(read.verdicts, written_before)
    return Recovered(state=state, progress=progress, last_entry=summary.last_entry), reviews


async def _starting_state(
    spec: TargetSpec, loaded: TargetState | None, summary: LogSummary
) -> tuple[TargetState, dict[str, Any] | None]:
    """The state recovery starts from, and the file's content (None: there is no file).

    A log without a state gives a fresh state started when the log did; a state from the
    original script, which has no log, gets one written from its history and cost.
    """
    if loaded is None:
        state = TargetState.new(spec, to_iso(now_utc()))
        if summary.first_started_at is not None:  # a log without a state: the log wins
            state.started_at = summary.first_started_at
        return state, None
    before = _compared(loaded)
    if summary.last_entry is None:
        await _seed_log(spec, loaded, summary)
    return loaded, before


def _compared(state: TargetState) -> dict[str, Any]:
    """The file's object of `state` with its history as it is held (a `ScoreHistory`
    compares by its text, without decoding): what a restart compares to skip a write."""
    data = state.to_json(history=False)
    data["score_history"] = state.score_history
    return data


async def _seed_log(spec: TargetSpec, state: TargetState, summary: LogSummary) -> None:
    """Write a log for a state from the original script, which has none: its history and
    cost are kept (state_file.seed_entries)."""
    try:
        seeds = state_mod.seed_entries(state)
    except ValueError as exc:  # e.g. a cost no run can have: not written to a log
        state_file = state_mod.state_path(spec.state_root)
        raise StateCorruptError(f"{state_file}: cannot seed a log from it: {exc}") from None
    log_file = artifacts.log_path(spec.state_root)
    for entry in seeds:
        await artifacts.append_log(log_file, entry)
        summary.add(entry)
    if seeds:
        log.info("log_seeded_from_state", entries=len(seeds))


async def _record_interrupted_run(
    spec: TargetSpec, state: TargetState, summary: LogSummary, leftovers: Leftovers | None
) -> None:
    """Log the run that was in flight when the last process died, as interrupted.

    Its orphaned processes (found by their AUTOLOOPD_RUN marker) are stopped first; it is
    charged its elapsed time at the target's rate (up to now if it still ran, else up to its
    run log's last write).
    """
    in_flight = state.in_flight
    if in_flight is None or in_flight.iteration < 1:
        return
    iteration = in_flight.iteration
    orphans = 0 if leftovers is None else await leftovers.stop_run(spec, iteration)
    last = summary.progress.last_iteration  # the log numbers its lines 1..last
    if iteration <= last:
        return  # it was logged; the state merely lagged the log
    if iteration != last + 1:
        log.warning("in_flight_ignored", iteration=iteration, last_logged=last)
        return
    started = parse_iso(in_flight.started_at) or now_utc()
    finished = (
        now_utc()
        if orphans
        else await anyio.to_thread.run_sync(_last_sign_of_life, spec, iteration, started)
    )
    duration = max(0.0, (finished - started).total_seconds())
    entry = LogEntry(
        iteration=iteration,
        started_at=to_iso(started),
        finished_at=to_iso(finished),
        status=RunStatus.INTERRUPTED,
        decision=None,
        weighted_score=None,
        cost_usd=0.0 if spec.dry_run else elapsed_cost_usd(duration, spec.cost_per_minute_usd),
        duration_seconds=round(duration, 3),
        error="autoloopd stopped while this iteration ran (recovered at start)",
        cost_source="estimated",
    )
    await artifacts.append_log(artifacts.log_path(spec.state_root), entry)
    summary.add(entry)
    log.warning(
        "interrupted_iteration_recorded",
        iteration=iteration,
        cost_usd=entry.cost_usd,
        orphans=orphans,
    )


async def _restore_last_handoff(spec: TargetSpec, summary: LogSummary) -> None:
    """Rewrite the newest completed run's handoff, which the load found missing or empty.

    It is written after the run's log line (without fsync: a power cut may leave it empty),
    so a kill between the two leaves the next iteration without the `--source` that tells
    it what the last one decided.
    """
    last = summary.last_completed
    if last is None:
        return
    before = summary.before_scores
    text = handoff_for(last, before)
    await artifacts.write_handoff(spec.state_root, last.iteration, text)
    log.warning("handoff_restored", iteration=last.iteration)


def _last_sign_of_life(spec: TargetSpec, iteration: int, started: datetime) -> datetime:
    """When a dead run last did something: its run log's mtime, else its start."""
    try:
        mtime = artifacts.run_log_path(spec.state_root, iteration).stat().st_mtime
    except OSError:
        return started
    moment = datetime.fromtimestamp(mtime, tz=started.tzinfo)
    return max(started, min(moment, now_utc()))
