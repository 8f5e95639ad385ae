"""The operator's controls of one target runner: stop, pause, run now, extend, reset, reload.

Each records what it changes in the target's state (so it survives a restart) and wakes the
cycle where it waits.
"""

from __future__ import annotations

import asyncio

import anyio
import structlog

from autoloop_daemon.engine.target_base import TargetRunnerBase
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.vocab import (
    TargetStatus,
)

log = structlog.get_logger("autoloopd.target")


def cancel_soon(scope: anyio.CancelScope) -> None:
    """Cancel `scope` from the event loop's next callback rather than from the calling task.

    anyio writes the calling task into the cancel's reason, and formatting an asyncio task
    (its coroutine and frame) costs ~15 µs: 0.15 s or more on the event loop when a
    shutdown stops 10,000 waiting targets. From a loop callback there is no calling task.
    A wait entered before the callback runs cancels itself (`_interruptible` checks the
    stop request on entry), and cancelling a scope that has ended does nothing.
    """
    asyncio.get_running_loop().call_soon(scope.cancel)


class TargetControls(TargetRunnerBase):
    """Commands a supervisor (signals, the control channel) gives a target runner."""

    def request_stop(
        self, grace_s: float, status: TargetStatus = TargetStatus.STOPPED_SIGNAL
    ) -> None:
        """Start no new iteration; let a running one finish within `grace_s`, then stop it."""
        if not self._stop_requested:
            self._stop_status = status
        self._stop_requested = True
        deadline = anyio.current_time() + grace_s
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        if self._wait_scope is not None:
            cancel_soon(self._wait_scope)
        self._apply_deadline()

    def force_stop(self) -> None:
        """Skip the grace period: stop a running iteration now."""
        self.request_stop(0.0, self._stop_status)

    # Operator commands (`autoloopd ctl`); each is saved at once so it survives a restart.

    async def set_paused(self, paused: bool) -> None:
        """Pause (a running iteration finishes, then no new one starts) or resume."""
        if self.state.paused != paused:
            self.state.paused = paused
            await self._save()
        self._wake()

    def run_now(self) -> None:
        """Skip the current cooldown, schedule or backoff wait, once."""
        self._run_now = True
        self._wake()

    async def extend(self, iterations: int, cost_usd: float) -> None:
        """Raise this target's iteration and cost limits (kept in its state)."""
        self.state.extra_iterations += iterations
        self.state.extra_cost_usd = round(self.state.extra_cost_usd + cost_usd, 6)
        await self._save()
        self._wake()

    async def clear_stop(self) -> None:
        """Clear the circuit breaker and a final status, so the target runs again."""
        self.state.consecutive_errors = self.progress.consecutive_errors = 0
        if self.state.is_final:
            self.state.status = TargetStatus.IDLE
        await self._save()
        self._wake()

    def _wake(self) -> None:
        """End a cooldown, schedule or pause wait now (never a budget or slot wait)."""
        if self._wait_scope is not None and self.phase in ("cooldown", "waiting", "paused"):
            self._wait_scope.cancel()

    def update_spec(self, spec: TargetSpec) -> None:
        """Apply changed limits from the next iteration on (config reload)."""
        self._pending_spec = None if spec == self.spec else spec

    @property
    def latest_spec(self) -> TargetSpec:
        """The spec of the newest configuration: a pending one, else the one in use."""
        return self._pending_spec or self.spec

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop_requested

    @property
    def stop_status(self) -> TargetStatus | None:
        """The status a requested stop ends with, or None when none was requested."""
        return self._stop_status if self._stop_requested else None

    @property
    def location(self) -> str:
        """Where the state lives (for users)."""
        return self._store.location
