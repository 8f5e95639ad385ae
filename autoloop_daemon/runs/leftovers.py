"""What the runs of a killed autoloopd left running, found by their AUTOLOOPD_RUN marker.

Start-up recovery (storage/files/recovery.py) is handed a `MarkedLeftovers` by the
composition root (cli/run.py, cluster/connect.py): storage finds which runs a state root
had, this module finds and stops their processes.
"""

from __future__ import annotations

import math
import os

import anyio
import structlog

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs.orchestrator import run_marker, run_marker_prefix
from autoloop_daemon.runs.procfs import marked_processes, still_marked, stop_group, stop_pids

log = structlog.get_logger("autoloopd.recovery")


# A restart after a SIGKILL recovers every state root the dead daemon held, each looking for
# its runs' processes: one /proc scan each (every process's environment read) was 10,000
# scans at 10,000 targets. One scan now serves the targets that recover within
# SCAN_REUSE_S of it; each pid it found is checked again right before it is signalled, so
# a pid reused since the scan is never hit.
SCAN_REUSE_S = 1.0


class MarkedLeftovers:
    """Stops the processes that carry a state root's run markers (the `Leftovers` protocol)."""

    def __init__(self) -> None:
        """No scan yet; each is made when a recovery first needs one."""
        self._scan: dict[int, str] = {}
        self._scanned_at = -math.inf
        self._scanning: anyio.Lock | None = None

    async def _marked(self) -> dict[int, str]:
        """Every marked process (pid -> marker), from a scan begun at most SCAN_REUSE_S ago;
        the targets recovering together wait for the same scan."""
        if self._scanning is None:
            self._scanning = anyio.Lock()
        async with self._scanning:
            began = anyio.current_time()
            if began - self._scanned_at > SCAN_REUSE_S:
                self._scan = await anyio.to_thread.run_sync(marked_processes)
                self._scanned_at = began
            return self._scan

    async def stop_finished_runs(self, spec: TargetSpec, running: int | None) -> None:
        """Stop every process still carrying the marker of one of `spec`'s finished runs
        (any run but `running`, the one in flight when the last owner died)."""
        prefix = run_marker_prefix(spec)
        skip = None if running is None else run_marker(spec, running)
        candidates = {
            pid: marker
            for pid, marker in (await self._marked()).items()
            if marker.startswith(prefix) and marker != skip and marker[len(prefix) :].isdigit()
        }
        pids = await anyio.to_thread.run_sync(still_marked, candidates) if candidates else []
        if pids:
            log.warning("earlier_run_processes_stopped", pids=pids)
            with anyio.CancelScope(shield=True):
                await stop_pids(pids, spec.term_grace_seconds)

    async def stop_run(self, spec: TargetSpec, iteration: int) -> int:
        """Stop the orphaned process groups of `spec`'s run `iteration`; how many processes
        carried its marker."""
        marker = run_marker(spec, iteration)
        candidates = {pid: m for pid, m in (await self._marked()).items() if m == marker}
        orphans = await anyio.to_thread.run_sync(still_marked, candidates) if candidates else []
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
