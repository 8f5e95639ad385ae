"""The supervisor's commands: shutdown, and the operator's stop, pause, resume, run-now,
extend, reset and history of one target (a thin layer over the target runners; the
control channel and the signal task call these)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from autoloop_daemon.cluster.hosting import ClusterHosting
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.supervisor_base import TargetRecord
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import (
    CommandRefusedError,
    UnknownTargetError,
)
from autoloop_daemon.runs.process import kill_running_groups

log = structlog.get_logger("autoloopd.supervisor")


class FleetCommands(ClusterHosting):
    """Commands to the whole fleet and to one target."""

    def request_shutdown(self, reason: str) -> None:
        """Stop gracefully; a second request skips the grace period; a third SIGKILLs every
        running orchestrator's process group at once."""
        self._shutdown.requests += 1
        self._shutdown.reasons.append(reason)
        if self._shutdown_event is not None:
            self._shutdown_event.set()
        runners = [r.runner for r in self._records.values() if r.runner is not None]
        running = tuple(sorted(r.spec.name for r in runners if r.phase == "running"))
        if self._shutdown.requests == 1:
            self.events.publish(ev.ShutdownRequested(reason, self._grace_s, running))
            for runner in runners:
                runner.request_stop(self._grace_s)
        elif self._shutdown.requests == 2:
            self.events.publish(ev.ShutdownForced(reason, running))
            for runner in runners:
                runner.force_stop()
        else:  # the third: no more waiting for anything
            for runner in runners:
                runner.force_stop()
            groups = kill_running_groups()
            self.events.publish(ev.ShutdownKilled(reason, tuple(groups)))

    @property
    def shutdown_requests(self) -> int:
        """How many stop requests arrived (0: running normally)."""
        return self._shutdown.requests

    def stop_target(self, name: str) -> None:
        """Stop one target gracefully (`stopped_signal`); UnknownTargetError if unknown."""
        record = self._records.get(name)
        if record is None:
            raise UnknownTargetError(f"no target named {name!r}")
        if record.runner is not None:
            record.runner.request_stop(self._grace_s)

    def _live_runner(self, name: str, verb: str) -> TargetRunner:
        """The target's runner while its cycle runs; CommandRefusedError once it stopped."""
        record = self._record(name)
        runner = record.runner
        if runner is None or runner.final_status is not None or runner.stopping:
            status = record.result or (runner.state.status if runner else "not_started")
            raise CommandRefusedError(
                f"cannot {verb} {name!r}: it is stopped ({status}); "
                "'reset' or 'extend' starts it again"
            )
        return runner

    async def stop(self, name: str) -> str:
        """`stop_target` for the operator: refused (CommandRefusedError) once stopped."""
        routed = await self.cluster_command("stop", name)
        if routed is not None:
            return routed
        self._live_runner(name, "stop")
        self.stop_target(name)
        return f"{name}: stopping (a running iteration gets the shutdown grace period)"

    async def pause(self, name: str) -> str:
        """Let a running iteration finish, then start no new one until `resume`."""
        routed = await self.cluster_command("pause", name)
        if routed is not None:
            return routed
        await self._live_runner(name, "pause").set_paused(True)
        return f"{name}: paused"

    async def resume(self, name: str) -> str:
        """Undo `pause`."""
        routed = await self.cluster_command("resume", name)
        if routed is not None:
            return routed
        await self._live_runner(name, "resume").set_paused(False)
        return f"{name}: resumed"

    async def run_now(self, name: str) -> str:
        """Skip the target's current cooldown or schedule wait, once."""
        routed = await self.cluster_command("run-now", name)
        if routed is not None:
            return routed
        runner = self._live_runner(name, "run now")
        if runner.state.paused:
            raise CommandRefusedError(f"cannot run {name!r} now: it is paused ('resume' first)")
        runner.run_now()
        return f"{name}: runs now" if runner.phase != "running" else f"{name}: already running"

    async def extend(self, name: str, iterations: int, cost_usd: float) -> str:
        """Raise the target's limits; a target stopped by them starts again."""
        if iterations < 0 or cost_usd < 0 or not (iterations or cost_usd):
            raise CommandRefusedError("extend needs --iterations N and/or --cost USD (> 0)")
        record = self._record(name)
        routed = await self.cluster_extend(name, iterations, cost_usd)
        if routed is not None:
            return routed
        runner = record.runner
        if runner is not None and runner.final_status is None and not runner.stopping:
            await runner.extend(iterations, cost_usd)
            return f"{name}: limits extended (+{iterations} iterations, +${cost_usd:.2f})"
        await self._restart(record, lambda r: r.extend(iterations, cost_usd))
        return f"{name}: limits extended (+{iterations} iterations, +${cost_usd:.2f}); started"

    async def reset(self, name: str) -> str:
        """Clear the circuit breaker and a final status; a stopped target starts again."""
        record = self._record(name)
        routed = await self.cluster_reset(name)
        if routed is not None:
            return routed
        runner = record.runner
        if runner is not None and runner.final_status is None and not runner.stopping:
            await runner.clear_stop()
            return f"{name}: error count cleared"
        await self._restart(record, lambda r: r.clear_stop())
        return f"{name}: reset; started"

    async def _restart(
        self, record: TargetRecord, adjust: Callable[[TargetRunner], Awaitable[None]]
    ) -> None:
        """Prepare the target again, apply `adjust` to its state, and run it."""
        name = record.spec.name
        if self._shutdown.requests or self._targets_tg is None:
            raise CommandRefusedError(f"cannot start {name!r}: the daemon is shutting down")
        if record.runner is not None and record.runner.final_status is None:
            raise CommandRefusedError(f"cannot start {name!r}: it is still stopping")
        runners = await self._prepare_all([record.restart_spec or record.spec])
        if not runners:
            raise CommandRefusedError(f"cannot start {name!r}: {record.start_error}")
        await adjust(runners[0])
        self._targets_tg.start_soon(self._run_target, runners[0])

    async def history(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` lines of the target's iteration log, oldest first."""
        record = self._record(name)
        entries = await self._storage.target(record.spec).read_log()
        return [e.to_json() for e in entries[-limit:]]
