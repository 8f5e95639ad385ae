"""The supervisor: every target in one task group, the shared budget, signals, reload, systemd.

Signal handling only records and flags: the first SIGINT/SIGTERM asks every target to stop
(running iterations get `shutdown_grace_seconds`), a second one forces, SIGHUP reloads the
configuration. The process ends once no target can run any more; the exit code is 1 when a
target ended in `error` or could not start.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus

from autoloop_daemon.exceptions import AutoloopError, ConfigError
from autoloop_daemon.models import (
    STATUS_ERROR,
    STATUS_STOPPED_BUDGET,
    STATUS_STOPPED_REMOVED,
    TargetSpec,
)
from autoloop_daemon.policy.budget import SharedBudget
from autoloop_daemon.runtime.sdnotify import Notifier
from autoloop_daemon.runtime.target import Echo, TargetRunner
from autoloop_daemon.storage.files.lock import StateLock

log = structlog.get_logger("autoloopd.supervisor")

STATUS_INTERVAL_S = 2.0
EXIT_OK = 0
EXIT_TARGET_ERROR = 1

Reloader = Callable[[], "ReloadedConfig"]


@dataclass(frozen=True, slots=True)
class ReloadedConfig:
    """What a reload yields: the targets and the supervisor-wide limits."""

    targets: tuple[TargetSpec, ...]
    budget_cap_usd: float
    max_concurrent: int
    grace_s: float


class Supervisor:
    """Runs many targets concurrently under one budget until none can run any more."""

    def __init__(
        self,
        targets: Sequence[TargetSpec],
        *,
        budget_cap_usd: float,
        max_concurrent: int,
        grace_s: float,
        state_dir: Path | None = None,
        reloader: Reloader | None = None,
        notifier: Notifier | None = None,
        echo: Echo | None = None,
        one_shot: bool = False,
        strict: bool = False,
    ) -> None:
        """Configure; nothing starts until `run()`.

        `strict` makes a target that cannot start (locked, corrupt state) fail the whole run
        with its error (the one-target command line); otherwise it is logged and skipped.
        """
        self._initial = tuple(targets)
        self._budget_cap = budget_cap_usd
        self._max_concurrent = max_concurrent
        self._grace_s = grace_s
        self._state_dir = state_dir
        self._reloader = reloader
        self._notifier = notifier or Notifier({})
        self._echo = echo
        self._one_shot = one_shot
        self._strict = strict
        self._runners: dict[str, TargetRunner] = {}
        self._results: dict[str, str] = {}
        self._failed_to_start: dict[str, str] = {}
        self._shutting_down = False
        self._budget: SharedBudget | None = None
        self._slots: anyio.CapacityLimiter | None = None
        self._targets_tg: anyio.abc.TaskGroup | None = None
        self._last_status = ""
        # Per target, the logged spending the budget already holds (a target started again
        # by a reload must not be charged its history twice).
        self._accounted_usd: dict[str, float] = {}

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        """Run until every target has stopped; returns the process exit code."""
        daemon_lock = StateLock(self._state_dir) if self._state_dir is not None else None
        if daemon_lock is not None:
            daemon_lock.acquire()  # creates state_dir; StateWriteError (exit 74) if it cannot
        try:
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
            if daemon_lock is not None:
                daemon_lock.release()

    async def _run(self) -> int:
        self._budget = SharedBudget(self._budget_cap)
        self._slots = anyio.CapacityLimiter(self._max_concurrent)
        async with anyio.create_task_group() as outer:
            # The signal receiver stays open until every final checkpoint is written.
            await outer.start(self._signal_task)
            runners = await self._prepare_all(self._initial)
            for runner in runners:
                self._charge_prepared(runner)
            log.info(
                "daemon_ready",
                targets=len(runners),
                failed=len(self._failed_to_start),
                spent_usd=round(self._budget.spent_usd, 6),
                cap_usd=self._budget_cap,
            )
            self._notifier.ready(self._status_line())
            outer.start_soon(self._notifier.watchdog_loop)
            outer.start_soon(self._status_loop)
            async with anyio.create_task_group() as targets_tg:
                self._targets_tg = targets_tg
                for runner in runners:
                    targets_tg.start_soon(self._run_target, runner)
            self._targets_tg = None
            self._notifier.stopping()
            outer.cancel_scope.cancel()
        errors = sorted(n for n, s in self._results.items() if s == STATUS_ERROR)
        log.info(
            "daemon_stopped",
            targets=len(self._results),
            errors=errors,
            failed_to_start=sorted(self._failed_to_start),
            spent_usd=round(self._budget.spent_usd, 6),
        )
        if errors or self._failed_to_start:
            return EXIT_TARGET_ERROR
        return EXIT_OK

    async def _prepare_all(self, specs: Sequence[TargetSpec]) -> list[TargetRunner]:
        budget, slots = self._budget, self._slots
        assert budget is not None and slots is not None
        prepared: list[TargetRunner] = []
        strict_error: list[AutoloopError] = []

        async def prepare(spec: TargetSpec) -> None:
            runner = TargetRunner(
                spec,
                budget=budget,
                slots=slots,
                echo=self._echo,
                one_shot=self._one_shot,
            )
            try:
                await runner.prepare()
            except AutoloopError as exc:
                if self._strict:
                    strict_error.append(exc)
                    return
                self._failed_to_start[spec.name] = str(exc)
                log.error("target_not_started", target=spec.name, error=str(exc))
                return
            self._failed_to_start.pop(spec.name, None)
            self._runners[spec.name] = runner
            prepared.append(runner)
            if self._shutting_down:  # a signal arrived while this target was being prepared
                runner.request_stop(self._grace_s)

        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(prepare, spec)
        if strict_error:
            raise strict_error[0]
        return sorted(prepared, key=lambda r: r.spec.name)

    def _charge_prepared(self, runner: TargetRunner) -> None:
        """Charge the budget what the target's log holds beyond what it already knows."""
        assert self._budget is not None
        known = self._accounted_usd.get(runner.spec.name, 0.0)
        self._budget.charge(max(0.0, runner.prepared_cost_usd - known))
        self._accounted_usd[runner.spec.name] = max(known, runner.prepared_cost_usd)

    async def _run_target(self, runner: TargetRunner) -> None:
        try:
            status = await runner.run()
        except Exception:  # a bug in one target must not stop the others
            log.exception("target_crashed", target=runner.spec.name)
            status = STATUS_ERROR
        self._results[runner.spec.name] = status
        self._accounted_usd[runner.spec.name] = float(runner.state.get("total_cost_usd") or 0.0)
        # No status push here: with n targets stopping at once that walk would be O(n^2);
        # the status loop reports within STATUS_INTERVAL_S.

    # ----------------------------------------------------------------- signals

    async def _signal_task(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP and self._reloader is not None:
                    if not self._shutting_down and self._targets_tg is not None:
                        self._targets_tg.start_soon(self._reload)
                elif not self._shutting_down:
                    self._begin_shutdown(name)
                else:
                    self._force_shutdown(name)

    def _begin_shutdown(self, reason: str) -> None:
        self._shutting_down = True
        running = [n for n, r in self._runners.items() if r.phase == "running"]
        log.info("shutdown_requested", signal=reason, grace_s=self._grace_s, running=running)
        self._notifier.stopping()
        for runner in self._runners.values():
            runner.request_stop(self._grace_s)

    def _force_shutdown(self, reason: str) -> None:
        running = [n for n, r in self._runners.items() if r.phase == "running"]
        log.warning("shutdown_forced", signal=reason, cancelled=running)
        for runner in self._runners.values():
            runner.force_stop()

    # ----------------------------------------------------------------- reload

    async def _reload(self) -> None:
        assert self._reloader is not None and self._budget is not None
        assert self._slots is not None
        self._notifier.reloading()
        try:
            new = await anyio.to_thread.run_sync(self._reloader)
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc), kept="the previous configuration")
            self._notifier.ready(self._status_line())
            return
        wanted = {t.name: t for t in new.targets}
        added, removed, changed = [], [], []
        for name, runner in list(self._runners.items()):
            spec = wanted.get(name)
            if runner.final_status is not None:
                raised = new.budget_cap_usd > self._budget.cap_usd
                if (
                    spec is None
                    or runner.final_status == STATUS_STOPPED_REMOVED
                    or (runner.final_status == STATUS_STOPPED_BUDGET and raised)
                ):
                    # Gone from the config; or added back, or the cap raised: start afresh.
                    del self._runners[name]
                continue
            if spec is None:
                removed.append(name)
                runner.request_stop(self._grace_s, STATUS_STOPPED_REMOVED)
            elif spec != runner.latest_spec:
                if spec.state_root != runner.spec.state_root:
                    log.warning(
                        "reload_state_root_ignored",
                        target=name,
                        hint="a new state_root takes effect after a restart",
                    )
                    continue
                changed.append(name)
                runner.update_spec(spec)
        fresh = [
            spec
            for name, spec in wanted.items()
            if name not in self._runners
            or (self._runners[name].final_status is not None and spec != self._runners[name].spec)
        ]
        self._budget.set_cap(new.budget_cap_usd)
        self._slots.total_tokens = new.max_concurrent
        self._grace_s = new.grace_s
        for runner in await self._prepare_all(fresh):
            self._charge_prepared(runner)
            added.append(runner.spec.name)
            self._results.pop(runner.spec.name, None)
            if self._targets_tg is not None:
                self._targets_tg.start_soon(self._run_target, runner)
        log.info(
            "config_reloaded",
            added=sorted(added),
            removed=sorted(removed),
            changed=sorted(changed),
            cap_usd=new.budget_cap_usd,
        )
        self._notifier.ready(self._status_line())

    # ----------------------------------------------------------------- status

    def _status_line(self) -> str:
        phases = {"running": 0, "cooldown": 0, "waiting": 0, "stopped": 0}
        for runner in self._runners.values():
            phase = runner.phase if runner.phase in phases else "running"
            phases[phase] += 1
        spent = self._budget.spent_usd if self._budget else 0.0
        cap = self._budget.cap_usd if self._budget else self._budget_cap
        money = f"${spent:.2f} of ${cap:.2f} spent" if math.isfinite(cap) else f"${spent:.2f} spent"
        failed = f", {len(self._failed_to_start)} failed to start" if self._failed_to_start else ""
        return (
            f"{phases['running']} running, {phases['cooldown']} cooling down, "
            f"{phases['waiting']} waiting, {phases['stopped']} stopped{failed}; {money}"
        )

    def _push_status(self) -> None:
        line = self._status_line()
        if line != self._last_status:
            self._last_status = line
            self._notifier.status(line)

    async def _status_loop(self) -> None:
        while True:
            self._push_status()
            await anyio.sleep(STATUS_INTERVAL_S)
