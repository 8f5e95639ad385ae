"""The one-target form's stdout lines, as a subscriber of runtime events.

These are the original `autoloop.py`'s lines, kept so that scripts reading them keep working:
`Autoloop starting: ...`, `--- Iteration 1/5 ---`, `Decision: ...`, `  Cooling down ...`,
`Stopped: ...` and the `=== Autoloop Summary ===` block. Money that is wall time x rate (no
cost reported by the orchestrator) is marked `~$0.0023 (estimated)`. Also the notice printed
on a terminal at the first Ctrl+C (both forms; the daemon's live view prints it above itself).
"""

from __future__ import annotations

from collections.abc import Callable

from autoloop_daemon.engine import events as ev
from autoloop_daemon.vocab import RunStatus

Echo = Callable[[str], None]


def money(amount_usd: float, estimated: bool) -> str:
    """`$0.1234`, or `~$0.1234 (estimated)` when any of it is wall time x rate."""
    return f"~${amount_usd:.4f} (estimated)" if estimated else f"${amount_usd:.4f}"


def summary_block(event: ev.TargetStopped) -> list[str]:
    """The original script's closing block."""
    best = (
        "n/a"
        if event.best_score is None
        else f"{event.best_score:.4f} (iteration {event.best_iteration})"
    )
    return [
        "=== Autoloop Summary ===",
        f"  Iterations: {event.iterations_completed}/{event.max_iterations}",
        f"  Total cost: {money(event.total_cost_usd, event.estimated_usd > 0)}",
        f"  Status: {event.status}",
        f"  Best score: {best}",
        f"  State saved: {event.location}",
    ]


class Console:
    """Prints the original script's lines for the events of a one-target run."""

    def __init__(self, echo: Echo) -> None:
        """`echo` prints one line (flushed)."""
        self._echo = echo

    def __call__(self, event: ev.Event) -> None:
        """Print the line(s) `event` stands for, if any."""
        match event:
            case ev.TargetStarting():
                self._echo(
                    f"Autoloop starting: target={event.path}, mode={event.mode}, "
                    f"max_iter={event.max_iterations}, max_cost=${event.max_cost_usd:.2f}"
                )
            case ev.IterationStarted():
                retry = f" (retry {event.retry})" if event.retry else ""
                self._echo(f"--- Iteration {event.completed + 1}/{event.max_iterations}{retry} ---")
            case ev.IterationFinished():
                self._finished(event)
            case ev.CoolingDown():
                self._echo(f"  Cooling down {event.seconds / 60:.1f}m (next: {event.next_run_at})")
            case ev.WaitingBudget():
                self._echo(f"  Budget window spent: waiting until {event.reset_at}")
            case ev.ScheduledExit():
                self._echo("  Scheduled mode: exiting after single iteration")
            case ev.ShutdownRequested() if event.reason == "SIGINT":
                self._echo("Interrupted by user")
            case ev.TargetNotContinuing():
                self._echo(
                    f"Not continuing: already stopped: {event.reason}. Raise the limit to continue."
                )
            case ev.CheckpointFailed():
                self._echo(f"Stopped: cannot write state: {event.error}")
            case ev.TargetStopped():
                if event.announce:
                    self._echo(f"Stopped: {event.reason}")
                for line in summary_block(event):
                    self._echo(line)
            case _:
                pass

    def _finished(self, event: ev.IterationFinished) -> None:
        entry = event.entry
        total = money(event.total_cost_usd, event.estimated_usd > 0)
        if entry.status == RunStatus.COMPLETED:
            shown = "n/a" if entry.weighted_score is None else f"{entry.weighted_score:.4f}"
            unchanged = (
                "  (kept, but no file changed)"
                if entry.changed is False and entry.decision == "keep"
                else ""
            )
            self._echo(
                f"Decision: {entry.decision}  Weighted score: {shown}  "
                f"Cumulative cost: {total}{unchanged}"
            )
        else:
            self._echo(f"Iteration {entry.status}: {entry.error}  Cumulative cost: {total}")


def shutdown_notice(echo: Callable[[str], None]) -> Callable[[ev.Event], None]:
    """A subscriber that tells the person at the terminal what a Ctrl+C is doing, at once."""

    def notice(event: ev.Event) -> None:
        match event:
            case ev.ShutdownRequested():
                n = len(event.running)
                if n:
                    echo(
                        f"Stopping gracefully: waiting up to {event.grace_s:g} s for {n} running "
                        f"iteration{'s' if n != 1 else ''} (Ctrl+C again to stop them now)"
                    )
                else:
                    echo("Stopping: no iteration is running")
            case ev.ShutdownForced():
                n = len(event.cancelled)
                echo(f"Stopping now: {n} running iteration{'s' if n != 1 else ''} cancelled")
            case _:
                pass

    return notice
