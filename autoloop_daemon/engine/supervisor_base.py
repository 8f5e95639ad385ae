"""The supervisor's shared state: one record per target, preparing and running targets.

`SupervisorBase` holds what the lifecycle (supervisor.py), the operator's commands
(fleet_commands.py) and reloads (reloading.py) work on; each of those is one class in the
chain `SupervisorBase` -> `ClusterHosting` -> `FleetCommands` -> `Reloading` -> `Supervisor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskGroup

from autoloop_daemon.clock import now_utc, to_iso
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import Budget, BudgetWindow, SharedBudget
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import (
    AutoloopError,
)
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.base import Storage
from autoloop_daemon.vocab import TargetStatus

log = structlog.get_logger("autoloopd.supervisor")


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


@dataclass(slots=True)
class TargetRecord:
    """Everything the supervisor knows of one target."""

    spec: TargetSpec
    runner: TargetRunner | None = None
    start_error: str | None = None
    result: str | None = None  # the final status once its cycle has ended
    accounted_usd: float = 0.0  # logged spending the budget already holds
    restart_spec: TargetSpec | None = None  # run again once the current cycle ends


@dataclass(slots=True)
class _Shutdown:
    requests: int = 0
    reasons: list[str] = field(default_factory=list)


class SupervisorBase:
    """The supervisor's state and the running of targets (see the module docstring)."""

    def __init__(
        self,
        targets: Sequence[TargetSpec],
        *,
        storage: Storage,
        budget_cap_usd: float,
        max_concurrent: int,
        grace_s: float,
        reloader: Reloader | None = None,
        events: ev.EventBus | None = None,
        one_shot: bool = False,
        strict: bool = False,
        stay_up: bool = False,
        window: BudgetWindow | None = None,
        allocation: str = "fcfs",
    ) -> None:
        """Configure; nothing starts until `run()`.

        `stay_up` keeps the daemon running (idle, reloadable, controllable) after every
        target has stopped, until a shutdown request (`daemon.exit_when_idle`).

        `budget_cap_usd` is the lifetime cap; `window` adds a cap per budget window.
        `allocation` "gain_per_usd" hands concurrency slots out by estimated gain per
        dollar (engine/admission.py) instead of first come first served.

        `strict` makes a target that cannot start (locked, corrupt state) fail the whole run
        with its error (the one-target command line); otherwise it is reported and skipped.
        """
        self._initial = tuple(targets)
        self._storage = storage
        self._grace_s = grace_s
        self._reloader = reloader
        self.events = events or ev.EventBus()
        self._one_shot = one_shot
        self._strict = strict
        self._records: dict[str, TargetRecord] = {}
        self._budget: Budget = SharedBudget(
            budget_cap_usd, on_change=self._budget_changed, window=window
        )
        self._slots: anyio.CapacityLimiter | RankedSlots = (
            RankedSlots(max_concurrent)
            if allocation == "gain_per_usd"
            else anyio.CapacityLimiter(max_concurrent)
        )
        self._targets_tg: TaskGroup | None = None
        self._shutdown = _Shutdown()
        self._reload_lock = anyio.Lock()
        self._ready = False
        self._reload_before_ready = False
        self._started_at = to_iso(now_utc())
        self._stay_up = stay_up
        self._shutdown_event: anyio.Event | None = None
        self._retired: dict[str, float] = {}  # state roots no longer configured -> spent

    async def _remember_spending(self) -> None:
        """Record every running target's state root and spending in the storage's registry."""
        spent = {
            r.runner.spec.state_root: r.runner.state.total_cost_usd
            for r in self._records.values()
            if r.runner is not None
        }
        try:
            await self._storage.remember(spent)
        except (OSError, AutoloopError) as exc:
            log.warning("spending_registry_not_written", error=str(exc))

    def _failed_to_start(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, r in self._records.items() if r.start_error is not None))

    async def _prepare_all(self, specs: Sequence[TargetSpec]) -> list[TargetRunner]:
        prepared: list[TargetRunner] = []
        strict_error: list[AutoloopError] = []

        async def prepare(spec: TargetSpec) -> None:
            record = self._records.setdefault(spec.name, TargetRecord(spec))
            record.spec = spec
            runner = TargetRunner(
                spec,
                store=self._storage.target(spec),
                budget=self._budget,
                slots=self._slots,
                events=self.events,
                one_shot=self._one_shot,
            )
            try:
                await runner.prepare()
            except AutoloopError as exc:
                if self._strict:
                    strict_error.append(exc)
                    return
                record.start_error, record.runner = str(exc), None
                self.events.publish(ev.TargetNotStarted(spec.name, str(exc)))
                return
            record.start_error, record.result, record.runner = None, None, runner
            # A state root counted as retired at start (its target was renamed or removed, and
            # is back): its spending is already charged.
            retired = self._retired.pop(str(spec.state_root), 0.0)
            record.accounted_usd = max(record.accounted_usd, retired)
            self._charge_prepared(record, runner)
            prepared.append(runner)
            if self._shutdown.requests:  # a stop arrived while this target was being prepared
                runner.request_stop(self._grace_s)

        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(prepare, spec)
        if strict_error:
            raise strict_error[0]
        return sorted(prepared, key=lambda r: r.spec.name)

    def _charge_prepared(self, record: TargetRecord, runner: TargetRunner) -> None:
        """Charge the budget what the target's log holds beyond what it already knows."""
        unknown = max(0.0, runner.prepared_cost_usd - record.accounted_usd)
        self._budget.charge(unknown, min(unknown, runner.prepared_window_cost_usd))
        record.accounted_usd = max(record.accounted_usd, runner.prepared_cost_usd)

    def _budget_changed(self) -> None:
        ledger = self._budget.ledger
        self.events.publish(
            ev.BudgetChanged(
                ledger.spent_usd,
                ledger.reserved_usd,
                ledger.cap_usd,
                ledger.window,
                ledger.window_spent_usd,
                ledger.window_cap_usd,
            )
        )

    async def _run_target(self, runner: TargetRunner) -> None:
        name = runner.spec.name
        try:
            status = await runner.run()
        except Exception:  # a bug in one target must not stop the others
            log.exception("target_crashed", target=name)
            status = TargetStatus.ERROR
        record = self._records[name]
        if record.runner is not runner:  # replaced by `reset` or `extend` while finishing
            return
        record.result = status
        record.accounted_usd = runner.state.total_cost_usd
        restart, record.restart_spec = record.restart_spec, None
        if restart is not None and not self._shutdown.requests and self._targets_tg is not None:
            for again in await self._prepare_all([restart]):
                self._targets_tg.start_soon(self._run_target, again)
