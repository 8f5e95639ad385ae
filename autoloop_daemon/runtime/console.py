"""The one-target form's stdout lines, as a subscriber of runtime events.

These are the original `autoloop.py`'s lines (`--- Iteration 1/5 ---`, `Decision: ...`,
`Stopped: ...`, `State saved: ...`), kept so that scripts reading them keep working.
"""

from __future__ import annotations

from collections.abc import Callable

from autoloop_daemon.runtime import events as ev
from autoloop_daemon.vocab import RunStatus

Echo = Callable[[str], None]


def money(amount_usd: float, estimated: bool) -> str:
    """`$0.1234`, or `~$0.1234 (estimated)` when the amount is wall time x rate."""
    return f"~${amount_usd:.4f} (estimated)" if estimated else f"${amount_usd:.4f}"


class Console:
    """Prints the original script's lines for the events of one-target runs."""

    def __init__(self, echo: Echo) -> None:
        """`echo` prints one line (flushed)."""
        self._echo = echo

    def __call__(self, event: ev.Event) -> None:
        """Print the line(s) `event` stands for, if any."""
        match event:
            case ev.IterationStarted():
                retry = f" (retry {event.retry})" if event.retry else ""
                self._echo(f"--- Iteration {event.completed + 1}/{event.max_iterations}{retry} ---")
            case ev.IterationFinished():
                self._finished(event)
            case ev.TargetNotContinuing():
                self._echo(
                    f"Not continuing: already stopped: {event.reason}. Raise the limit to continue."
                )
            case ev.CheckpointFailed():
                self._echo(f"Stopped: cannot write state: {event.error}")
            case ev.TargetStopped():
                if event.announce:
                    self._echo(f"Stopped: {event.reason}")
                self._echo(f"State saved: {event.location}")
            case _:
                pass

    def _finished(self, event: ev.IterationFinished) -> None:
        entry = event.entry
        total = f"${event.total_cost_usd:.4f}"
        if entry.status == RunStatus.COMPLETED:
            shown = "n/a" if entry.weighted_score is None else f"{entry.weighted_score:.4f}"
            self._echo(
                f"Decision: {entry.decision}  Weighted score: {shown}  Cumulative cost: {total}"
            )
        else:
            self._echo(f"Iteration {entry.status}: {entry.error}  Cumulative cost: {total}")
