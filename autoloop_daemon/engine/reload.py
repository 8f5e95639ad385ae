"""Applying a reload's plan (policy/reload.py decides it) to the supervisor's records and
its budget window; the supervisor applies the limits and starts what the plan starts."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from autoloop_daemon.engine.budget import Budget, BudgetWindow
from autoloop_daemon.engine.records import TargetRecord
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.reload import Known, ReloadPlan, plan_reload
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.supervisor")


def plan_for(
    records: dict[str, TargetRecord], wanted: Mapping[str, TargetSpec], cap_raised: bool
) -> ReloadPlan:
    """The plan from `records` to the configuration `wanted`; drops the records of targets
    that never started and are gone from it."""
    known = {
        name: Known(
            r.runner.spec, r.runner.latest_spec, r.runner.final_status, r.runner.stop_status
        )
        for name, r in records.items()
        if r.runner is not None
    }
    for name in [n for n, r in records.items() if r.runner is None and n not in wanted]:
        del records[name]  # failed to start and gone from the config
    return plan_reload(known, wanted, cap_raised)


def apply_to_runners(records: dict[str, TargetRecord], plan: ReloadPlan, grace_s: float) -> None:
    """Forget the ended runners, stop the removed ones, hand the changed specs over, and
    remember what starts again once its current cycle ends."""
    for name in plan.forget:
        records[name].runner = None
    for name in plan.stop:
        runner = records[name].runner
        assert runner is not None
        runner.request_stop(grace_s, TargetStatus.STOPPED_REMOVED)
    for name, spec in plan.change.items():
        runner = records[name].runner
        assert runner is not None
        runner.update_spec(spec)
    for name, spec in plan.restart_when_done.items():
        records[name].restart_spec = spec
    for name in plan.root_ignored:
        log.warning(
            "reload_state_root_ignored",
            target=name,
            hint="a new state_root takes effect after a restart",
        )


def apply_window(budget: Budget, new: BudgetWindow | None) -> None:
    """A new cap per window applies at once; a new kind of window (whose spending would
    have to be recounted from the logs) only after a restart."""
    old = budget.window
    if new is not None and old is not None and new.window == old.window:
        if new.cap_usd != old.cap_usd:
            budget.set_window(new)
    elif new != old:
        log.warning(
            "reload_window_ignored", hint="a new [budget] window takes effect after a restart"
        )
