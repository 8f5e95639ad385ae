"""What the runs of a killed autoloopd left running, found by their AUTOLOOPD_RUN marker.

Start-up recovery (storage/files/recovery.py) is handed a `MarkedLeftovers` by the
composition root (cli/run.py, cluster/connect.py): storage finds which runs a state root
had, this module finds and stops their processes.
"""

from __future__ import annotations

import os

import anyio
import structlog

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs.orchestrator import run_marker, run_marker_prefix
from autoloop_daemon.runs.procfs import find_marked, find_runs, stop_group, stop_pids

log = structlog.get_logger("autoloopd.recovery")


class MarkedLeftovers:
    """Stops the processes that carry a state root's run markers (the `Leftovers` protocol)."""

    async def stop_finished_runs(self, spec: TargetSpec, running: int | None) -> None:
        """Stop every process still carrying the marker of one of `spec`'s finished runs
        (any run but `running`, the one in flight when the last owner died)."""
        prefix = run_marker_prefix(spec)
        skip = None if running is None else run_marker(spec, running)
        found = await anyio.to_thread.run_sync(find_runs, prefix)
        pids = [pid for pid, marker in found if marker != skip and marker[len(prefix) :].isdigit()]
        if pids:
            log.warning("earlier_run_processes_stopped", pids=pids)
            with anyio.CancelScope(shield=True):
                await stop_pids(pids, spec.term_grace_seconds)

    async def stop_run(self, spec: TargetSpec, iteration: int) -> int:
        """Stop the orphaned process groups of `spec`'s run `iteration`; how many processes
        carried its marker."""
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
        return len(orphans)
