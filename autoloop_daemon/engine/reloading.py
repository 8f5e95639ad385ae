"""Reloading the configuration: read it again and apply what changed (policy/reload.py
decides what that is), one reload at a time."""

from __future__ import annotations

import anyio
import structlog

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.fleet_commands import FleetCommands
from autoloop_daemon.engine.supervisor_base import ReloadedConfig, ReloadReport, TargetRecord
from autoloop_daemon.exceptions import (
    ConfigError,
)
from autoloop_daemon.policy.reload import Known, plan_reload
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.supervisor")


class Reloading(FleetCommands):
    """`reload()` and the application of a new configuration."""

    async def reload(self) -> ReloadReport:
        """Read the configuration again and apply it; reloads run one at a time.

        Before READY the reload is remembered and applied right after it.
        """
        if self._reloader is None:
            return ReloadReport(ok=False, error="no configuration file to reload")
        if not self._ready:
            self._reload_before_ready = True
            return ReloadReport(ok=True)
        async with self._reload_lock:
            if self._shutdown.requests:
                return ReloadReport(ok=False, error="shutting down")
            self.events.publish(ev.ReloadStarted())
            try:
                new = await anyio.to_thread.run_sync(self._reloader)
            except ConfigError as exc:
                self.events.publish(ev.ReloadFailed(str(exc)))
                return ReloadReport(ok=False, error=str(exc))
            report = await self._apply(new)
            self.events.publish(
                ev.ConfigReloaded(report.added, report.removed, report.changed, new.budget_cap_usd)
            )
            return report

    async def _reload_after_ready(self) -> None:
        await self.reload()

    async def _apply(self, new: ReloadedConfig) -> ReloadReport:
        known = {
            name: Known(
                r.runner.spec, r.runner.latest_spec, r.runner.final_status, r.runner.stop_status
            )
            for name, r in self._records.items()
            if r.runner is not None
        }
        wanted = {t.name: t for t in new.targets}
        for name in [n for n, r in self._records.items() if r.runner is None and n not in wanted]:
            del self._records[name]  # failed to start and gone from the config
        plan = plan_reload(known, wanted, new.budget_cap_usd > self._budget.cap_usd)
        for name in plan.forget:
            self._records[name].runner = None
        for name in plan.stop:
            runner = self._records[name].runner
            assert runner is not None
            runner.request_stop(self._grace_s, TargetStatus.STOPPED_REMOVED)
        for name, spec in plan.change.items():
            runner = self._records[name].runner
            assert runner is not None
            runner.update_spec(spec)
        for name, spec in plan.restart_when_done.items():
            self._records[name].restart_spec = spec
        for name in plan.root_ignored:
            log.warning(
                "reload_state_root_ignored",
                target=name,
                hint="a new state_root takes effect after a restart",
            )
        start = plan.start
        self._budget.set_cap(new.budget_cap_usd)
        self._apply_window(new)
        self._slots.total_tokens = new.max_concurrent
        self._grace_s = new.grace_s
        added = []
        if self._member is not None:  # cluster mode: the member's next round claims them
            for spec in start:
                self._records.setdefault(spec.name, TargetRecord(spec)).spec = spec
            added = [s.name for s in start if s.name not in self._member.specs]
            self._member.configure(new.targets)
            start = []
        for runner in await self._prepare_all(start):
            added.append(runner.spec.name)
            if self._targets_tg is not None:
                self._targets_tg.start_soon(self._run_target, runner)
        for name in plan.forget:
            if self._records[name].runner is None and name not in wanted:
                del self._records[name]
        return ReloadReport(
            ok=True,
            added=tuple(sorted(added)),
            removed=tuple(sorted(plan.stop)),
            changed=tuple(sorted(plan.change)),
        )

    def _apply_window(self, new: ReloadedConfig) -> None:
        """A new cap per window applies at once; a new kind of window (whose spending would
        have to be recounted from the logs) only after a restart."""
        old = self._budget.window
        if new.window is not None and old is not None and new.window.window == old.window:
            if new.window.cap_usd != old.cap_usd:
                self._budget.set_window(new.window)
        elif new.window != old:
            log.warning(
                "reload_window_ignored", hint="a new [budget] window takes effect after a restart"
            )
