"""The structured snapshot of a running daemon: one record feeds STATUS=, `status` and more.

`FleetSnapshot` is plain data (JSON-ready through `to_json`) so that sd_notify's one-line
STATUS=, a control channel, metrics and a dashboard all render the same facts. Its targets
are `TargetRow`s (target_row.py, shared with the cluster and `status` without a daemon).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from autoloop_daemon.target_row import TargetRow
from autoloop_daemon.vocab import Phase


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

    def count_by_phase(self) -> dict[str, int]:
        """How many targets are in each phase."""
        return count_phases(t.phase for t in self.targets)

    def status_line(self) -> str:
        """The one-line summary sent to systemd as STATUS=."""
        b = self.budget
        if b.window_cap_usd is not None and b.window_spent_usd is not None:
            return status_line(
                self.count_by_phase(), b.window_spent_usd, b.window_cap_usd, b.window
            )
        return status_line(self.count_by_phase(), b.spent_usd, b.cap_usd)


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
    return (
        f"{phases['running']} running, {phases['cooldown']} cooling down, "
        f"{phases['waiting']} waiting, {phases['stopped']} stopped{failed}; {money}"
    )
