"""What the supervisor knows of each target (`TargetRecord`) and what a reload yields and
reports (`ReloadedConfig`, `ReloadReport`). Plain data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autoloop_daemon.engine.budget import BudgetWindow
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.vocab import Phase


@dataclass(slots=True)
class TargetRecord:
    """Everything the supervisor knows of one target."""

    spec: TargetSpec
    runner: TargetRunner | None = None
    start_error: str | None = None
    result: str | None = None  # the final status once its cycle has ended
    accounted_usd: float = 0.0  # logged spending the budget already holds
    restart_spec: TargetSpec | None = None  # run again once the current cycle ends

    def phase(self, loading: bool) -> str:
        """Its runner's phase; without one, `loading` (at start-up, while the states load)
        unless it failed to start, else not started."""
        if self.runner is not None:
            return self.runner.phase
        return Phase.LOADING if loading and self.start_error is None else Phase.NOT_STARTED


@dataclass(frozen=True, slots=True)
class ReloadedConfig:
    """What a reload yields: the targets and the supervisor-wide limits."""

    targets: tuple[TargetSpec, ...]
    budget_cap_usd: float
    max_concurrent: int
    grace_s: float
    window: BudgetWindow | None = None


Reloader = Callable[[], ReloadedConfig]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did, or why it was refused (`error`)."""

    ok: bool
    error: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
