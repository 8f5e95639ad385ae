"""The supervisor: every target in one task group, the shared budget, shutdown and reload.

Its lifecycle reads as a table of contents: start (recover every target, READY), run (one
task per target), stop (every target checkpointed, STOPPING, exit code). Its public methods
are the command API that signals, tests and a control channel all call: `snapshot()`,
`request_shutdown()`, `reload()`, `stop_target()`, and the operator's commands `pause()`,
`resume()`, `run_now()`, `extend()`, `reset()` (control/api.py serves them over HTTP).
What happens is published on `events`.
The exit code is 1 when a target ended in `error` or could not start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from autoloop_daemon.clock import to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.reloading import Reloading
from autoloop_daemon.engine.snapshot import (
    BudgetSnapshot,
    FleetSnapshot,
    TargetSnapshot,
    count_phases,
    status_line,
)
from autoloop_daemon.engine.supervisor_base import (
    ReloadedConfig,
    Reloader,
    ReloadReport,
    TargetRecord,
)
from autoloop_daemon.exceptions import (
    AutoloopError,
)
from autoloop_daemon.exit_codes import EXIT_OK, EXIT_TARGET_ERROR
from autoloop_daemon.target_row import not_started_row, row_json
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.supervisor")

__all__ = ["ReloadReport", "ReloadedConfig", "Reloader", "Supervisor", "TargetRecord"]


class Supervisor(Reloading):
    """Runs many targets concurrently under one budget until none can run any more."""

    # ----------------------------------------------------------------- lifecycle

    async def run(self, after_lock: Callable[[], Awaitable[object]] | None = None) -> int:
        """Run until every target has stopped; returns the process exit code.

        `after_lock` runs once the storage is owned, before any target is prepared (the
        control server binds its socket there, so a second daemon is told who holds the lock).
        """
        self._storage.acquire()  # StateLockedError / StateWriteError if it cannot
        try:
            if after_lock is not None:
                await after_lock()
            return await self._run()
        except BaseExceptionGroup as group:
            # A strict start-up error (locked, corrupt state) is raised inside the task group,
            # which wraps it: raise it bare so the command line maps it to its exit code.
            matched, rest = group.split(AutoloopError)
            if matched is None or rest is not None:
                raise
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            self._storage.release()

    async def _run(self) -> int:
        self._shutdown_event = anyio.Event()
        if self._shutdown.requests:
            self._shutdown_event.set()
        if self._member is not None:
            return await self._run_cluster()
        runners = await self._prepare_all(self._initial)
        self._retired = await self._storage.spent_elsewhere(r.spec.state_root for r in runners)
        if self._retired:
            start = self._budget.window_start
            in_window = 0.0
            if start is not None:
                in_window = await self._storage.spent_since(self._retired, start)
            self._budget.charge(sum(self._retired.values()), in_window)
            log.info(
                "retired_spending_charged",
                state_roots=len(self._retired),
                spent_usd=round(sum(self._retired.values()), 6),
            )
        await self._remember_spending()
        self._ready = True
        self.events.publish(
            ev.DaemonReady(
                targets=len(runners),
                failed=len(self._failed_to_start()),
                spent_usd=self._budget.spent_usd,
                cap_usd=self._budget.cap_usd,
            )
        )
        async with anyio.create_task_group() as targets_tg:
            self._targets_tg = targets_tg
            for runner in runners:
                targets_tg.start_soon(self._run_target, runner)
            if self._reload_before_ready:
                targets_tg.start_soon(self.reload)
            if self._stay_up:
                targets_tg.start_soon(self._shutdown_event.wait)
        self._targets_tg = None
        with anyio.CancelScope(shield=True):
            await self._remember_spending()
        errors = tuple(
            sorted(n for n, r in self._records.items() if r.result == TargetStatus.ERROR)
        )
        failed = self._failed_to_start()
        self.events.publish(
            ev.DaemonStopped(len(self._records), errors, failed, self._budget.spent_usd)
        )
        return EXIT_TARGET_ERROR if errors or failed else EXIT_OK

    # ----------------------------------------------------------------- snapshot

    def status_line(self) -> str:
        """The one-line summary (systemd's STATUS=), without building a whole snapshot."""
        phases = count_phases(
            r.runner.phase if r.runner is not None else "not_started"
            for r in self._records.values()
        )
        budget = self._budget
        if budget.window is not None:
            return status_line(
                phases, budget.window_spent_usd, budget.window.cap_usd, budget.window.window.name
            )
        return status_line(phases, budget.spent_usd, budget.cap_usd)

    def snapshot(self, targets: bool = True) -> FleetSnapshot:
        """The daemon and every target now (`targets=False`: with none, for callers that
        take the targets from `target_rows()`, which is much cheaper at 10,000 targets)."""
        rows = self.target_rows() if targets else []
        cap = self._budget.cap_usd
        budget = self._budget
        budget.roll()
        window = budget.window
        return FleetSnapshot(
            pid=os.getpid(),
            started_at=self._started_at,
            ready=self._ready,
            shutting_down=self._shutdown.requests > 0,
            budget=BudgetSnapshot(
                spent_usd=round(self._budget.spent_usd, 6),
                reserved_usd=round(self._budget.ledger.reserved_usd, 6),
                retired_usd=round(sum(self._retired.values()), 6),
                cap_usd=cap if cap != float("inf") else None,
                window=None if window is None else window.window.name,
                window_start=None if budget.window_start is None else to_iso(budget.window_start),
                window_resets_at=None if budget.window_end is None else to_iso(budget.window_end),
                window_spent_usd=None if window is None else round(budget.window_spent_usd, 6),
                window_cap_usd=None if window is None else window.cap_usd,
            ),
            targets=tuple(TargetSnapshot(**row) for row in rows),
            queued=self._slots.statistics().tasks_waiting,
            cluster=self._cluster_snapshot(),
        )

    def target_rows(self) -> list[dict[str, Any]]:
        """Every target now, by name, as the fields of its `TargetSnapshot` in their order
        (what `snapshot().to_json()["targets"]` holds, without building the dataclasses:
        a frozen one costs ~5 µs, a fifth of a second per status request at 10,000)."""
        now = time.monotonic()
        records = self._records
        return [self._target_row(name, records[name], now) for name in sorted(records)]

    def _target_row(self, name: str, record: TargetRecord, now: float) -> dict[str, Any]:
        runner = record.runner
        ended_here = runner is None or runner.final_status is not None
        remote = self._remote_snapshot(name, record) if ended_here else None
        if remote is not None:
            return remote.to_json()
        if runner is None:
            return not_started_row(name, record.spec, record.start_error)
        since = runner.running_since
        final = runner.final_status
        return row_json(
            runner.state,
            name=name,
            phase=runner.phase,
            reason=runner.describe(final) if final else None,
            max_iterations=runner.max_iterations_now,
            max_cost_usd=runner.max_cost_usd_now,
            last_weighted_score=runner.progress.last_score,
            running_for_s=None if since is None else round(now - since, 3),
            state_location=runner.location,
            host=None if self._member is None else self._member.host,
        )
