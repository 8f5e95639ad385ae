"""Start-up recovery of one state root: lock it and bring its state up to its log.

The log is the source of truth. At start: take the lock, remove temp files a killed write
left, read the state (refusing a corrupt one untouched) and the log (truncating a torn last
line; only past the state's log checkpoint when it still holds, log_checkpoint.py), seed
a log from an old state that has none, stop what earlier runs left running
(found by their AUTOLOOPD_RUN marker), record a run that was in flight when the last process
died as `interrupted` (stopping its orphaned process group), restore a handoff
a crash lost, recompute the state from the log and checkpoint it.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.cost import elapsed_cost_usd
from autoloop_daemon.runs.orchestrator import run_marker, run_marker_prefix
from autoloop_daemon.runs.procfs import find_marked, find_runs, stop_group, stop_pids
from autoloop_daemon.storage.base import Recovered
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.storage.files import state_file as state_mod
from autoloop_daemon.storage.files.fsio import remove_stale_tmp
from autoloop_daemon.storage.files.group_commit import GroupCommit
from autoloop_daemon.storage.files.lock import StateLock
from autoloop_daemon.storage.files.log_checkpoint import LogSummary, read_summary
from autoloop_daemon.storage.files.worker_batch import WorkerBatch
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import RunStatus

log = structlog.get_logger("autoloopd.recovery")

# Where atomic writes leave temp files when killed (run logs are appended, never replaced).
_SUBDIRS = ("handoffs", "learner")


def _load_sync(
    spec: TargetSpec, lock: StateLock, migrations: list[str], unsynced: list[Path]
) -> tuple[dict[str, Any] | None, LogSummary, list[Path]]:
    # New directories are made durable with the first checkpoint (`unsynced`): one syncfs
    # for a whole fresh fleet instead of two directory fsyncs per target.
    lock.acquire(unsynced=unsynced)
    try:
        root = spec.state_root
        artifacts.ensure_layout(root, unsynced=unsynced)
        # Only a killed writer leaves temp files. The subdirectories gain a file per
        # iteration, so they are listed only when the last owner did not release the lock.
        dirs = (root, *(root / s for s in _SUBDIRS)) if lock.stale_holder is not None else (root,)
        stale = [p for d in dirs for p in remove_stale_tmp(d)]
        loaded = state_mod.load_state(state_mod.state_path(root), on_migrate=migrations.append)
        marker = None if loaded is None else loaded.get("log_checkpoint")
        summary = read_summary(root, marker, spec.weights_map, spec.min_improvement)
    except BaseException:
        lock.release()
        raise
    return loaded, summary, stale


async def recover(
    spec: TargetSpec, lock: StateLock, commits: GroupCommit, loads: WorkerBatch | None = None
) -> Recovered:
    """Lock `spec`'s state root, recover it from its log and checkpoint it.

    The checkpoint goes through `commits`, so the targets started together sync together;
    the loading (lock, layout, state, log) through `loads` when given, so that the targets
    started together load in a few worker calls instead of one each.

    Raises StateLockedError, StateCorruptError or StateWriteError (the lock is released and
    a refused file is left untouched).
    """
    migrations: list[str] = []
    unsynced: list[Path] = []  # directories created by _load_sync, not yet durable
    if loads is None:
        loaded, summary, stale = await anyio.to_thread.run_sync(
            _load_sync, spec, lock, migrations, unsynced
        )
    else:
        loaded, summary, stale = await loads.run(_load_sync, spec, lock, migrations, unsynced)
    log_file = artifacts.log_path(spec.state_root)
    try:
        if summary.torn:
            log.warning("log_tail_truncated", path=str(log_file), bytes=summary.torn)
        if stale:
            log.info("stale_temp_files_removed", count=len(stale))
        for line in migrations:
            log.info("state_migrated", detail=line)
        fresh = loaded is None
        if loaded is None:
            loaded = state_mod.new_state(spec, to_iso(now_utc()))
            if summary.first_started_at is not None:  # a log without a state: the log wins
                loaded["started_at"] = summary.first_started_at
        elif summary.last_entry is None:
            # A state from the original script has no log: keep its history and cost.
            try:
                seeds = state_mod.seed_entries(loaded)
            except ValueError as exc:  # e.g. a cost no run can have: not written to a log
                state_file = state_mod.state_path(spec.state_root)
                raise StateCorruptError(f"{state_file}: cannot seed a log from it: {exc}") from None
            for entry in seeds:
                await artifacts.append_log(log_file, entry)
                summary.add(entry)
            if seeds:
                log.info("log_seeded_from_state", entries=len(seeds))
        if lock.stale_holder is not None:  # the last owner was killed: look for its runs
            await _stop_earlier_runs(spec, loaded.get("in_flight"))
        await _record_interrupted_run(spec, loaded, summary)
        await _restore_last_handoff(spec, summary)
        progress = summary.progress
        state = TargetState.from_json(loaded)
        state.log_checkpoint = summary.marker
        progress.apply_to(state)
        state.apply_limits(spec)
        state.in_flight = None
        if (
            fresh or unsynced or state.to_json() != loaded
        ):  # a warm restart of an up-to-date state writes nothing
            data = state_mod.encode_state(state)
            await commits.write(
                state_mod.state_path(spec.state_root), data, check_root=True, sync_dirs=unsynced
            )
    except BaseException:
        lock.release()
        raise
    return Recovered(state=state, progress=progress, last_entry=summary.last_entry)


async def _stop_earlier_runs(spec: TargetSpec, in_flight: Any) -> None:
    """Stop every process still carrying the marker of one of this root's finished runs.

    What an earlier autoloopd that was killed left behind (daemonized helpers of past
    iterations, with their environment); the run in flight is `_record_interrupted_run`'s.
    The lock guarantees that no live autoloopd owns such a process. Only called when the
    lock file still names the last owner (it never released the lock): a clean stop has
    swept everything already, and scanning every process's environment costs time.
    """
    prefix = run_marker_prefix(spec)
    current = in_flight.get("iteration") if isinstance(in_flight, dict) else None
    skip = run_marker(spec, current) if isinstance(current, int) else None
    found = await anyio.to_thread.run_sync(find_runs, prefix)
    pids = [pid for pid, marker in found if marker != skip and marker[len(prefix) :].isdigit()]
    if pids:
        log.warning("earlier_run_processes_stopped", pids=pids)
        with anyio.CancelScope(shield=True):
            await stop_pids(pids, spec.term_grace_seconds)


async def _record_interrupted_run(
    spec: TargetSpec, state: dict[str, Any], summary: LogSummary
) -> None:
    """Log the run that was in flight when the last process died, as interrupted.

    Its orphaned processes (found by their AUTOLOOPD_RUN marker) are stopped first; it is
    charged its elapsed time at the target's rate (up to now if it still ran, else up to its
    run log's last write).
    """
    in_flight = state.get("in_flight")
    if not isinstance(in_flight, dict):
        return
    iteration = in_flight.get("iteration")
    if not isinstance(iteration, int) or iteration < 1:
        return
    orphans = await anyio.to_thread.run_sync(find_marked, run_marker(spec, iteration))
    for pid in orphans:
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid in (0, 1, os.getpgrp()):
            continue  # never signal our own group (or init's)
        log.warning("orphan_stopped", iteration=iteration, pid=pid, pgid=pgid)
        with anyio.CancelScope(shield=True):
            await stop_group(pgid, spec.term_grace_seconds, extra_pids=[pid])
    last = summary.progress.last_iteration  # the log numbers its lines 1..last
    if iteration <= last:
        return  # it was logged; the state merely lagged the log
    if iteration != last + 1:
        log.warning("in_flight_ignored", iteration=iteration, last_logged=last)
        return
    started = parse_iso(in_flight.get("started_at")) or now_utc()
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
        orphans=len(orphans),
    )


async def _restore_last_handoff(spec: TargetSpec, summary: LogSummary) -> None:
    """Rewrite the newest completed run's handoff when a crash lost it.

    It is written after the run's log line, so a kill between the two leaves the next
    iteration without the `--source` that tells it what the last one decided.
    """
    last = summary.last_completed
    if last is None:
        return
    path = artifacts.handoff_path(spec.state_root, last.iteration)
    with contextlib.suppress(OSError):
        # Written without fsync: a power cut may leave it empty.
        if (await anyio.to_thread.run_sync(path.stat)).st_size > 0:
            return
    before = summary.before_scores
    text = artifacts.handoff_for(last, before)
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
