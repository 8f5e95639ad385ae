"""What a configuration reload changes, worked out from plain data. Pure.

The supervisor describes each target it knows (`Known`); `plan_reload` compares them with
the targets of the new configuration and says which to forget, stop, change, start, and
which cannot change until a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.vocab import TargetStatus


@dataclass(frozen=True, slots=True)
class Known:
    """A target the supervisor has a runner for."""

    spec: TargetSpec  # the spec in use
    latest_spec: TargetSpec  # the newest one applied (may still be pending)
    final_status: str | None  # set once its cycle has ended
    stop_status: str | None  # the status a requested stop will end with


@dataclass(slots=True)
class ReloadPlan:
    """The changes a reload makes."""

    forget: list[str] = field(default_factory=list)  # ended runners to drop
    stop: list[str] = field(default_factory=list)  # running targets gone from the config
    change: dict[str, TargetSpec] = field(default_factory=dict)  # new limits for running ones
    start: list[TargetSpec] = field(default_factory=list)  # targets to prepare and run
    restart_when_done: dict[str, TargetSpec] = field(default_factory=dict)
    root_ignored: list[str] = field(default_factory=list)  # a new state_root needs a restart


def plan_reload(
    known: Mapping[str, Known], wanted: Mapping[str, TargetSpec], cap_raised: bool
) -> ReloadPlan:
    """The plan that takes the supervisor from `known` to the configuration `wanted`.

    An ended target starts again when it was removed and added back, when its spec changed,
    or when it stopped on the shared budget and the cap was raised. A running target gone
    from the config is stopped (`stopped_removed`); one added back while that stop is still
    under way is started again as soon as its last iteration is recorded.
    """
    plan = ReloadPlan()
    for name, k in known.items():
        spec = wanted.get(name)
        if k.final_status is not None:
            if spec is None:
                plan.forget.append(name)
            elif (
                k.final_status == TargetStatus.STOPPED_REMOVED
                or (k.final_status == TargetStatus.STOPPED_BUDGET and cap_raised)
                or spec != k.spec
            ):
                plan.forget.append(name)
                plan.start.append(spec)
            continue
        if spec is None:
            plan.stop.append(name)
        elif k.stop_status == TargetStatus.STOPPED_REMOVED:
            plan.restart_when_done[name] = spec
        elif spec != k.latest_spec:
            if spec.state_root != k.spec.state_root:
                plan.root_ignored.append(name)
            else:
                plan.change[name] = spec
    plan.start.extend(spec for name, spec in wanted.items() if name not in known)
    return plan
