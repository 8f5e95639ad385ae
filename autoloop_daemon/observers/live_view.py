"""The terminal's live view of a daemon (rich).

Only used when stdout is a terminal, and imported only then (cli/serve.py): rich costs the
daemon ~5 MB of memory. On a terminal: a table of the targets that matter now (running
iterations with their elapsed time, cooldown and schedule countdowns with the next run in
local time, paused and stopped ones), redrawn every REFRESH_S from the supervisor's snapshot,
with the log lines scrolling above it. A target whose turn has come but that waits for a
concurrency slot is `queued`, never counted as running. At exit the live frame is erased
and the final state printed once, so no stale "running for" stays on the screen. Off a
terminal nothing of this runs (JSON lines).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoloop_daemon.clock import parse_iso
from autoloop_daemon.engine.snapshot import FleetSnapshot
from autoloop_daemon.target_row import TargetRow

REFRESH_S = 0.5
MAX_ROWS = 20  # the view shows the targets that matter now; `status` shows them all
QUEUED = "queued"  # the view's word for a target waiting for a concurrency slot
_ORDER = {"running": 0, "starting": 1, QUEUED: 2, "cooldown": 3, "waiting": 4, "paused": 5}


def _countdown(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _detail(t: TargetRow, now: float, queued: frozenset[str]) -> str:
    if t.target in queued:
        return "waiting for a free slot (max_concurrent_iterations)"
    if t.running_iteration is not None:
        elapsed = _countdown(t.running_for_s or 0.0)
        return f"iteration {t.running_iteration} running for {elapsed}"
    if t.phase in ("cooldown", "waiting"):
        when = parse_iso(t.next_run_at)
        if when is not None:
            local = when.astimezone().strftime("%H:%M:%S")
            return f"next run in {_countdown(when.timestamp() - now)} (at {local})"
        return "waiting for the budget or a slot"
    if t.phase == "paused" or t.paused:
        return "paused (autoloopd ctl resume)"
    return t.reason or ""


def render(snap: FleetSnapshot, now: float | None = None) -> Group:
    """The live view of `snap`: a table of at most MAX_ROWS targets and the summary line."""
    now = time.time() if now is None else now
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TARGET", "PHASE", "ITER", "BEST", "COST", "NOW"):
        table.add_column(column, no_wrap=column != "NOW")
    queued = snap.waiting_for_slot(now)

    def phase(t: TargetRow) -> str:
        return QUEUED if t.target in queued else t.phase

    shown = sorted(snap.targets, key=lambda t: (_ORDER.get(phase(t), 9), t.next_run_at or ""))
    for t in shown[:MAX_ROWS]:
        best = "-" if t.best_weighted_score is None else f"{t.best_weighted_score:.4f}"
        cost = f"{'~' if t.estimated else ''}${t.total_cost_usd:.2f}/${t.max_cost_usd:.2f}"
        style = {"running": "green", "paused": "yellow"}.get(phase(t))
        table.add_row(
            t.target,
            Text(phase(t), style=style or ""),
            f"{t.iterations_completed}/{t.max_iterations}",
            best,
            cost,
            _detail(t, now, queued),
        )
    more = len(snap.targets) - MAX_ROWS
    footer = snap.status_line(now) + (f" ({more} more: autoloopd status)" if more > 0 else "")
    return Group(table, Text(footer, style="dim"))


class LiveView:
    """Redraws `render(snapshot())` until cancelled; prints go above it."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot], console: Console | None = None):
        """Draw on `console` (default: a rich console on stdout)."""
        self._snapshot = snapshot
        self.console = console or Console()

    def say(self, line: str) -> None:
        """Print `line` above the view, as it is (no markup, no highlighting)."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    async def run(self) -> None:
        """Draw until cancelled; then the live frame is erased (it would show iterations
        running that no longer run) and the final state is printed once, as it is."""
        try:
            with Live(
                render(self._snapshot()),
                console=self.console,
                auto_refresh=False,  # redrawn from the event loop, no refresh thread
                redirect_stdout=True,
                redirect_stderr=True,
                transient=True,
            ) as live:
                while True:
                    live.update(render(self._snapshot()), refresh=True)
                    await anyio.sleep(REFRESH_S)
        finally:
            self.console.print(render(self._snapshot()))
