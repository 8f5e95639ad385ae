"""The structured snapshot of a running daemon: one record feeds STATUS=, `status` and more.

`FleetSnapshot` is plain data (JSON-ready through `to_json`) so that sd_notify's one-line
STATUS=, a control channel, metrics and a dashboard all render the same facts. Its targets
are `TargetRow`s (target_row.py, shared with the cluster and `status` without a daemon).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from autoloop_daemon.clock import parse_iso, to_iso
from autoloop_daemon.policy.hard_fit import fit_now
from autoloop_daemon.target_row import TargetRow
from autoloop_daemon.vocab import Phase

if TYPE_CHECKING:
    from autoloop_daemon.engine.budget import Budget


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """The shared budget now."""

    spent_usd: float  # everything, including retired_usd
    reserved_usd: float
    cap_usd: float | None  # None: no shared cap (the one-target form)
    retired_usd: float = 0.0  # spent by state roots no longer in the configuration
    window: str | None = None  # `[budget] window` ("daily", "6h"...), None without one
    window_start: str | None = None  # the current window (ISO UTC)
    window_resets_at: str | None = None  # when the next window opens (ISO UTC)
    window_spent_usd: float | None = None  # charged to the current window
    window_cap_usd: float | None = None  # the cap per window (`max_cost_usd`)
    # guarantee = "hard": the dearest worst case per run, and how many such runs fit at
    # once in what is left (concurrency shrinks below the slots when that is fewer)
    hard_worst_case_usd: float | None = None
    hard_runs_at_once: int | None = None


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """One host of a cluster: when it last renewed its leases, and how many it holds."""

    host: str
    seen_at: str
    live: bool  # renewed within a lease period, and not stopped
    stopped: bool  # left the cluster gracefully
    leases: int


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Cluster mode: this host, whether its leases are known good, and every host."""

    host: str
    leases_fresh: bool
    hosts: tuple[HostSnapshot, ...]


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The whole daemon now."""

    pid: int
    started_at: str
    ready: bool
    shutting_down: bool
    budget: BudgetSnapshot
    targets: tuple[TargetRow, ...]
    queued: int = 0  # targets waiting for a concurrency slot
    cluster: ClusterSnapshot | None = None

    def to_json(self) -> dict[str, Any]:
        """The snapshot as a JSON-ready dict (stable keys, in the order of the fields).

        What `dataclasses.asdict` gives, without its deep copy of every value (every field
        of a target or the budget is a scalar): a tenth of its time at 10,000 targets.
        """
        out = plain(self)
        out["budget"] = plain(self.budget)
        out["targets"] = [target.to_json() for target in self.targets]
        out["cluster"] = None if self.cluster is None else asdict(self.cluster)  # a few hosts
        return out

    def waiting_for_slot(self, now: float) -> frozenset[str]:
        """The targets whose turn has come but that hold no concurrency slot yet.

        Their phase is still the one before (starting, running between iterations, or a
        cooldown that is over); no iteration of theirs runs. Only while some target does
        wait for a slot (`queued`), so that the instants between an iteration's end and
        the next wait are not taken for one.
        """
        if not self.queued:
            return frozenset()
        return frozenset(t.target for t in self.targets if _due_without_slot(t, now))

    def count_by_phase(self, now: float | None = None) -> dict[str, int]:
        """How many targets are in each phase; with `now`, those waiting for a slot apart
        (`queued`) instead of in the phase they are still in."""
        counts = count_phases(t.phase for t in self.targets)
        if now is None or not self.queued:
            return counts
        turns = ((t.phase, t.running_iteration is not None, t.next_run_at) for t in self.targets)
        return set_apart_queued(counts, turns, now)

    def status_line(self, now: float | None = None) -> str:
        """The one-line summary sent to systemd as STATUS= (with `now`: targets waiting for
        a slot counted apart, "2 running, 2 waiting for a slot, ...")."""
        b = self.budget
        phases = self.count_by_phase(now)
        if b.window_cap_usd is not None and b.window_spent_usd is not None:
            return status_line(phases, b.window_spent_usd, b.window_cap_usd, b.window)
        return status_line(phases, b.spent_usd, b.cap_usd)


def budget_snapshot(
    budget: Budget, retired_usd: float, hard_caps: Iterable[float | None], slots: int
) -> BudgetSnapshot:
    """The budget now (its window rolled first): `retired_usd` charged for state roots no
    longer configured, and `hard_caps` (the per-run limits of `guarantee = "hard"` targets)
    fitted into what `slots` concurrent runs may still take."""
    budget.roll()
    cap, window = budget.cap_usd, budget.window
    return BudgetSnapshot(
        spent_usd=round(budget.spent_usd, 6),
        reserved_usd=round(budget.ledger.reserved_usd, 6),
        retired_usd=round(retired_usd, 6),
        cap_usd=cap if cap != float("inf") else None,
        window=None if window is None else window.window.name,
        window_start=None if budget.window_start is None else to_iso(budget.window_start),
        window_resets_at=None if budget.window_end is None else to_iso(budget.window_end),
        window_spent_usd=None if window is None else round(budget.window_spent_usd, 6),
        window_cap_usd=None if window is None else window.cap_usd,
        **fit_now(hard_caps, budget.ledger, slots),
    )


def _due_without_slot(t: TargetRow, now: float) -> bool:
    return waits_for_slot(t.phase, t.running_iteration is not None, t.next_run_at, now)


def waits_for_slot(phase: str, iterating: bool, next_run_at: str | None, now: float) -> bool:
    """True for a target in `phase` whose turn has come (call it only while some target
    waits for a slot): not `iterating`, and between turns or past its cooldown."""
    if iterating:
        return False
    if phase in (Phase.STARTING, Phase.RUNNING):
        return True
    due = parse_iso(next_run_at) if phase == Phase.COOLDOWN else None
    return due is not None and due.timestamp() <= now


def set_apart_queued(
    counts: dict[str, int], turns: Iterable[tuple[str, bool, str | None]], now: float
) -> dict[str, int]:
    """`counts` (count_phases') with the targets waiting for a slot moved from their phase to
    `queued`; `turns` gives each target's (phase, iterating, next_run_at)."""
    queued = 0
    for phase, iterating, next_run_at in turns:
        if waits_for_slot(phase, iterating, next_run_at, now):
            counts[phase if phase in counts else Phase.RUNNING] -= 1
            queued += 1
    return {**counts, "queued": queued}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def plain(record: Any) -> dict[str, Any]:
    """The fields of the dataclass instance `record`, by name (values not copied)."""
    kind = type(record)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(record))
    return {name: getattr(record, name) for name in names}


# The phases counted, in the order of the counts ("starting" counts as running).
_COUNTED = tuple(phase.value for phase in Phase if phase is not Phase.STARTING)


def count_phases(phases: Iterable[str]) -> dict[str, int]:
    """How many of `phases` are running, cooling down, waiting, stopped, not started."""
    counts = dict.fromkeys(_COUNTED, 0)
    for phase in phases:
        counts[phase if phase in counts else Phase.RUNNING] += 1
    return counts


def status_line(
    phases: dict[str, int], spent_usd: float, cap_usd: float | None, window: str | None = None
) -> str:
    """`2 running, 1 cooling down, 0 waiting, 3 stopped; $1.20 of $10.00 spent` (with a
    budget window: `... spent this daily window`)."""
    money = (
        f"${spent_usd:.2f} of ${cap_usd:.2f} spent"
        if cap_usd is not None and math.isfinite(cap_usd)
        else f"${spent_usd:.2f} spent"
    )
    if window is not None:
        money += f" this {window} window"
    if sum(phases.values()) and phases["stopped"] == sum(phases.values()):
        return f"all targets stopped; {money}"
    failed = f", {phases['not_started']} failed to start" if phases["not_started"] else ""
    if phases.get("paused"):
        failed = f", {phases['paused']} paused{failed}"
    if phases.get("elsewhere"):  # cluster mode: run by other hosts
        failed = f", {phases['elsewhere']} on other hosts{failed}"
    if phases.get("loading"):  # start-up: states not loaded yet
        failed = f", {phases['loading']} loading{failed}"
    queued = f", {phases['queued']} waiting for a slot" if phases.get("queued") else ""
    return (
        f"{phases['running']} running{queued}, {phases['cooldown']} cooling down, "
        f"{phases['waiting']} waiting, {phases['stopped']} stopped{failed}; {money}"
    )
