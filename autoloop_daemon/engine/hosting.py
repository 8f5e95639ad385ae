"""Where targets run: the `Hosting` seam, chosen once by the composition root.

`LocalHosting` runs every configured target on this host (the single-host daemon and the
one-target form); cluster/hosting.py's `ClusterHosting` runs those whose lease this host
claims. The supervisor calls the hooks below at fixed points of its lifecycle and never asks
which hosting it has. A hosting acts on the supervisor through `Fleet`, the small surface the
supervisor offers it (the operator's commands use the same one, engine/commands.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import structlog

from autoloop_daemon.engine.budget import Budget, BudgetWindow, SharedBudget
from autoloop_daemon.engine.records import TargetRecord
from autoloop_daemon.engine.snapshot import ClusterSnapshot
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import AutoloopError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.base import Storage
from autoloop_daemon.target_row import TargetRow

log = structlog.get_logger("autoloopd.supervisor")


class Fleet(Protocol):
    """What a hosting sees of the supervisor."""

    @property
    def grace_s(self) -> float:
        """The shutdown grace period a graceful stop gives a running iteration."""
        ...

    @property
    def accepting(self) -> bool:
        """True while targets may start: the run is under way and no shutdown was asked."""
        ...

    @property
    def storage(self) -> Storage:
        """Where the targets' states and logs live."""
        ...

    def record(self, name: str) -> TargetRecord | None:
        """The target's record (None: no such target)."""
        ...

    def runners(self) -> list[TargetRunner]:
        """Every target's current runner (targets that never started have none)."""
        ...

    async def prepare(
        self, specs: Sequence[TargetSpec], *, transient: tuple[type[Exception], ...] = ()
    ) -> list[TargetRunner]:
        """Prepare `specs` (lock, recover); the runners of those that could start, by name.
        A failure of a `transient` kind is no start error (it is logged): the caller tries
        again later."""
        ...

    def launch(self, runner: TargetRunner) -> bool:
        """Run a prepared runner in the targets' task group; False once that has closed."""
        ...


class Hosting(Protocol):
    """Where the supervisor's targets run (see the module docstring)."""

    @property
    def host(self) -> str | None:
        """This host's name in the targets' rows (None: a single host)."""
        ...

    @property
    def retired_usd(self) -> float:
        """What state roots no longer configured spent, charged at start."""
        ...

    def attach(self, fleet: Fleet) -> None:
        """Called once by the supervisor's constructor: the fleet the hooks act on."""
        ...

    def make_budget(
        self, cap_usd: float, window: BudgetWindow | None, on_change: Callable[[], None]
    ) -> Budget:
        """The budget every target of the supervisor shares (called once, unstarted)."""
        ...

    async def start(self, specs: Sequence[TargetSpec]) -> list[TargetRunner]:
        """Before READY: take up the configured `specs`; the runners to run at once."""
        ...

    async def run(self, targets: Callable[[], Awaitable[None]]) -> None:
        """Run `targets()` (the targets' task group) among the hosting's own services, then
        what must be done before the exit code (shielded)."""
        ...

    async def serve(self, shutdown: anyio.Event, stay_up: bool) -> None:
        """A task of the targets' group, which stays open while it runs: return when the
        daemon may end once its targets have."""
        ...

    def charge_prepared(self, runner: TargetRunner, accounted_usd: float) -> float:
        """Charge the budget what a just prepared target's log holds beyond
        `accounted_usd`; returns what the budget now holds of the target's spending."""
        ...

    async def target_ended(self, runner: TargetRunner) -> None:
        """A target's cycle here has ended (its record is up to date)."""
        ...

    async def command(self, verb: str, name: str) -> str | None:
        """Route `pause`, `resume`, `run-now` or `stop` of a known target: the reply, or
        None to act locally. CommandRefusedError refuses it."""
        ...

    async def reset(self, name: str) -> str | None:
        """Route `reset` of a known target: the reply, or None to act locally."""
        ...

    async def extend(self, name: str, iterations: int, cost_usd: float) -> str | None:
        """Route `extend` of a known target: the reply, or None to act locally."""
        ...

    async def review(
        self, name: str, wanted: str | None, verb: str, note: str | None, by: str
    ) -> dict[str, Any] | None:
        """Route a reviewer's verdict on a known target: what was recorded, or None to
        decide locally. CommandRefusedError refuses it."""
        ...

    async def review_queues(self, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`/api/reviews`' queues, given `local`: those read from this host's files."""
        ...

    def remote_snapshot(self, name: str, record: TargetRecord) -> TargetRow | None:
        """A target not running here, as another host runs it (None: as this host has it)."""
        ...

    def cluster_snapshot(self) -> ClusterSnapshot | None:
        """The snapshot's cluster block (None: a single host)."""
        ...

    async def reconfigure(
        self, targets: Sequence[TargetSpec], start: Sequence[TargetSpec]
    ) -> list[str]:
        """A reload: the configuration now lists `targets`, and `start` (new, or ended and
        changed) are to start; returns the names of the targets added."""
        ...


class LocalHosting:
    """Every configured target runs on this host, under this host's budget."""

    def __init__(self) -> None:
        """Unattached; the supervisor attaches itself."""
        self._fleet: Fleet | None = None
        self._budget: SharedBudget | None = None
        self._retired: dict[str, float] = {}  # state roots no longer configured -> spent

    @property
    def host(self) -> str | None:
        """None: rows name no host."""
        return None

    @property
    def retired_usd(self) -> float:
        """What the retired state roots not configured again since spent."""
        return sum(self._retired.values())

    @property
    def _attached(self) -> tuple[Fleet, SharedBudget]:
        assert self._fleet is not None and self._budget is not None, "not attached"
        return self._fleet, self._budget

    def attach(self, fleet: Fleet) -> None:
        """Remember the fleet."""
        self._fleet = fleet

    def make_budget(
        self, cap_usd: float, window: BudgetWindow | None, on_change: Callable[[], None]
    ) -> SharedBudget:
        """This host's own ledger."""
        self._budget = SharedBudget(cap_usd, on_change=on_change, window=window)
        return self._budget

    async def start(self, specs: Sequence[TargetSpec]) -> list[TargetRunner]:
        """Prepare every target, charge what retired state roots spent, and record the
        spending of every state root in use."""
        fleet, budget = self._attached
        runners = await fleet.prepare(specs)
        self._retired = await fleet.storage.spent_elsewhere(r.spec.state_root for r in runners)
        if self._retired:
            start = budget.window_start
            in_window = 0.0
            if start is not None:
                in_window = await fleet.storage.spent_since(self._retired, start)
            budget.charge(sum(self._retired.values()), in_window)
            log.info(
                "retired_spending_charged",
                state_roots=len(self._retired),
                spent_usd=round(sum(self._retired.values()), 6),
            )
        await self._remember_spending()
        return runners

    async def run(self, targets: Callable[[], Awaitable[None]]) -> None:
        """Run the targets, then record their spending once more."""
        await targets()
        with anyio.CancelScope(shield=True):
            await self._remember_spending()

    async def serve(self, shutdown: anyio.Event, stay_up: bool) -> None:
        """With `stay_up`, keep the daemon until a shutdown request."""
        if stay_up:
            await shutdown.wait()

    async def _remember_spending(self) -> None:
        """Record every running target's state root and spending in the storage's registry."""
        fleet = self._attached[0]
        spent = {r.spec.state_root: r.state.total_cost_usd for r in fleet.runners()}
        try:
            await fleet.storage.remember(spent)
        except (OSError, AutoloopError) as exc:
            log.warning("spending_registry_not_written", error=str(exc))

    def charge_prepared(self, runner: TargetRunner, accounted_usd: float) -> float:
        """A state root counted as retired at start (its target was renamed or removed, and
        is back) is charged already; the rest of its log is charged now."""
        budget = self._attached[1]
        known = max(accounted_usd, self._retired.pop(str(runner.spec.state_root), 0.0))
        unknown = max(0.0, runner.prepared_cost_usd - known)
        budget.charge(unknown, min(unknown, runner.prepared_window_cost_usd))
        return max(known, runner.prepared_cost_usd)

    async def target_ended(self, runner: TargetRunner) -> None:
        """Nothing to tell anyone."""

    async def command(self, verb: str, name: str) -> str | None:
        """Always local."""
        return None

    async def reset(self, name: str) -> str | None:
        """Always local."""
        return None

    async def extend(self, name: str, iterations: int, cost_usd: float) -> str | None:
        """Always local."""
        return None

    async def review(
        self, name: str, wanted: str | None, verb: str, note: str | None, by: str
    ) -> dict[str, Any] | None:
        """Always local."""
        return None

    async def review_queues(self, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every target runs here: the files are the whole queue."""
        return local

    def remote_snapshot(self, name: str, record: TargetRecord) -> TargetRow | None:
        """No target runs elsewhere."""
        return None

    def cluster_snapshot(self) -> ClusterSnapshot | None:
        """No cluster."""
        return None

    async def reconfigure(
        self, targets: Sequence[TargetSpec], start: Sequence[TargetSpec]
    ) -> list[str]:
        """Prepare and run `start` here; the added are those that could start."""
        fleet = self._attached[0]
        added = []
        for runner in await fleet.prepare(start):
            added.append(runner.spec.name)
            fleet.launch(runner)
        return added
