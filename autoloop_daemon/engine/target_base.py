"""The state every part of a target runner shares, and opening the target's store.

`TargetRunnerBase` holds what the cycle (target.py), one iteration (iteration.py) and the
operator's controls (target_control.py) work on; each of those is one class in the chain
`TargetRunnerBase` -> `TargetControls` -> `IterationSteps` -> `TargetRunner`.
"""

from __future__ import annotations

import math
from datetime import datetime

import anyio
import structlog

from autoloop_daemon.clock import now_utc, parse_iso, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import Budget
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.allocation import closure, gain_per_usd
from autoloop_daemon.policy.ledger import estimate_cost
from autoloop_daemon.policy.live_cost import (
    StopAt,
)
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.stops import Goals, Limits
from autoloop_daemon.policy.windows import spent_in_window
from autoloop_daemon.storage.base import TargetStore
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import (
    TargetStatus,
)

log = structlog.get_logger("autoloopd.target")

# Reservation for a target's first iteration when it has no history and no estimate is
# configured: ten minutes at the target's rate.
FIRST_ESTIMATE_MINUTES = 10.0


class TargetRunnerBase:
    """A target runner's shared state (see the module docstring)."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        store: TargetStore,
        budget: Budget,
        slots: anyio.CapacityLimiter | RankedSlots,
        events: ev.EventBus,
        one_shot: bool = False,
    ) -> None:
        """Set up a runner; nothing here touches storage (see `prepare`)."""
        self.spec = spec
        self._pending_spec: TargetSpec | None = None
        self._store = store
        self._budget = budget
        self._slots = slots
        self._events = events
        self._one_shot = one_shot
        self.state = TargetState.new(spec, to_iso(now_utc()))
        self.progress = Progress(spec.weights_map, spec.min_improvement)
        self.last_entry: LogEntry | None = None
        # True when the state in memory is ahead of the store and the save was deferred
        # (policy.cycle.after_run); every wait, stop and the next in-flight save flush it.
        self._dirty = False
        self._stop_requested = False
        self._stop_status = TargetStatus.STOPPED_SIGNAL
        self._stop_deadline: float | None = None
        self._wait_scope: anyio.CancelScope | None = None
        self._iter_scope: anyio.CancelScope | None = None
        self._warned_no_scores = False
        self._cut: StopAt | None = None  # when a cap says the running iteration must stop
        self._cut_status: TargetStatus | None = None  # the stop a cap's cut leads to
        self._announced_wait: str | None = None
        self._warned_decisions: set[str] = set()
        self.phase = "starting"  # running | cooldown | waiting | stopped
        self.running_since: float | None = None  # monotonic start of the running iteration
        self.final_status: str | None = None
        self.prepared_cost_usd = 0.0
        self.prepared_window_cost_usd = 0.0  # of it, in the budget's current window
        self._run_now = False  # `ctl run-now`: skip the next wait once
        self._turn_skipped = False  # the last turn ran nothing (a wait or a stop request)
        self._deadline_at: datetime | None = None  # `deadline`, fixed when the cycle begins

    # ----------------------------------------------------------------- start-up

    async def prepare(self) -> None:
        """Open the store: lock, recover from the log, checkpoint.

        Raises StateLockedError, StateCorruptError or StateWriteError; nothing is changed
        by a refusal.
        """
        with structlog.contextvars.bound_contextvars(target=self.spec.name):
            recovered = await self._store.open()
        self.state = recovered.state
        self.progress = recovered.progress
        self.last_entry = recovered.last_entry
        self.prepared_cost_usd = self.state.total_cost_usd
        self._note_rate()
        since = self._budget.window_start
        if since is not None and self.prepared_cost_usd > 0:
            entries = await self._store.read_log()
            self.prepared_window_cost_usd = spent_in_window(
                ((parse_iso(e.started_at), e.cost_usd) for e in entries), since
            )

    async def _save(self) -> None:
        self._dirty = False
        await self._store.save(self.state)

    def limits(self) -> Limits:
        """The limits the stop conditions compare against."""
        s = self.spec
        return Limits(
            self.max_iterations_now, self.max_cost_usd_now,
            s.plateau_window, s.min_improvement, s.oscillation_window,
        )  # fmt: skip

    @property
    def max_iterations_now(self) -> int:
        """The iteration limit with what `ctl extend` added."""
        return self.spec.max_iterations + self.state.extra_iterations

    @property
    def max_cost_usd_now(self) -> float:
        """The cost limit with what `ctl extend` added."""
        return self.spec.max_cost_usd + self.state.extra_cost_usd

    def next_estimate_usd(self) -> float:
        """What the next iteration is expected to cost (its budget reservation)."""
        return estimate_cost(
            list(self.progress.recent_costs),
            self.spec.estimated_cost_usd,
            FIRST_ESTIMATE_MINUTES * self.spec.cost_per_minute_usd,
            fleet_recent_usd=self._budget.recent_costs,
            iteration_limit_usd=self.spec.max_iteration_cost_usd,
        )

    def gain_per_usd(self) -> float:
        """The estimated gain per dollar of the next iteration (policy/allocation.py).

        The expected cost is the mean of the target's own recent costs, else of the fleet's
        (else the reservation): the reservation is cautious (the fleet's dearest recent
        run), which would make every target look alike and new ones look dear.
        """
        recent = [c for c in self.progress.recent_costs if c > 0]
        fleet = [c for c in self._budget.recent_costs if c > 0]
        if recent:
            cost = sum(recent) / len(recent)
        elif fleet:
            cost = sum(fleet) / len(fleet)
        else:
            cost = self.next_estimate_usd()
        return gain_per_usd(
            self.progress.scores,
            cost,
            self._budget.pooled_rate,
            self.progress.current_scores or None,
        )

    def _note_rate(self) -> None:
        """Tell the fleet how fast this target has been improving."""
        self._budget.rates[self.spec.name] = closure(self.progress.scores)

    def _goals(self) -> Goals:
        return Goals(self.spec.target_score, self.spec.min_gain_per_usd, self._deadline_at)

    def _apply_deadline(self) -> None:
        """The running iteration ends at the stop deadline or when a cap says so."""
        if self._iter_scope is None:
            return
        deadline = math.inf if self._stop_deadline is None else self._stop_deadline
        if self._cut is not None:
            deadline = min(deadline, self._cut.at_s)
        self._iter_scope.deadline = deadline
