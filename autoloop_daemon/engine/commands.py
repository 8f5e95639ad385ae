"""The operator's verbs on one target: stop, pause, resume, run-now, extend, reset, history.

`Commands` holds the supervisor (supervisord's rpcinterface shape): each verb looks the
target up, asks the hosting whether it routes the verb (cluster mode: through the
cluster's row), otherwise checks the target's state and calls one runner method. The
control API (control/api.py) serves these; `Supervised` is all they use of the supervisor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from autoloop_daemon.engine.hosting import Fleet, Hosting
from autoloop_daemon.engine.records import TargetRecord
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.exceptions import CommandRefusedError, UnknownTargetError
from autoloop_daemon.policy.bounds import check_extension
from autoloop_daemon.policy.stops import stop_reason
from autoloop_daemon.vocab import Phase, TargetStatus


def _checked_extension(
    record: TargetRecord, iterations: object, cost_usd: object
) -> tuple[int, float]:
    """The extension's values within their bounds, counting the runner's extensions so far."""
    state = None if record.runner is None else record.runner.state
    return check_extension(
        iterations,
        cost_usd,
        0 if state is None else state.extra_iterations,
        0.0 if state is None else state.extra_cost_usd,
    )


async def _extended(runner: TargetRunner, iterations: int, cost_usd: float) -> None:
    """Extend a freshly prepared runner, its own saved extensions counted (ValueError)."""
    check_extension(
        iterations, cost_usd, runner.state.extra_iterations, runner.state.extra_cost_usd
    )
    await runner.extend(iterations, cost_usd)


class Supervised(Fleet, Protocol):
    """What the commands use of the supervisor: the hostings' `Fleet`, plus the hosting
    that may route a verb elsewhere and the graceful stop of one target."""

    @property
    def hosting(self) -> Hosting:
        """Routes a verb elsewhere (or answers None: act here)."""
        ...

    def stop_target(self, name: str, status: TargetStatus = TargetStatus.STOPPED_SIGNAL) -> None:
        """Stop one target gracefully; it ends with `status`."""
        ...

    @property
    def loading(self) -> bool:
        """True at start-up until every target's state has loaded."""
        ...


class Commands:
    """The operator's verbs over `supervisor` (see the module docstring)."""

    def __init__(self, supervisor: Supervised) -> None:
        """Hold the supervisor; nothing else."""
        self._supervisor = supervisor

    def _record(self, name: str) -> TargetRecord:
        """The target's record; UnknownTargetError if there is none."""
        record = self._supervisor.record(name)
        if record is None:
            raise UnknownTargetError(f"no target named {name!r}")
        return record

    def _live_runner(self, name: str, verb: str) -> TargetRunner:
        """The target's runner while its cycle runs; CommandRefusedError once it stopped."""
        record = self._loaded(name, verb)
        runner = record.runner
        if runner is None or not runner.live:
            status = record.result or (runner.state.status if runner else "not_started")
            raise CommandRefusedError(
                f"cannot {verb} {name!r}: it is stopped ({status}); "
                "'reset' or 'extend' starts it again"
            )
        return runner

    def _loaded(self, name: str, verb: str) -> TargetRecord:
        """The target's record; CommandRefusedError while its state is still loading."""
        record = self._record(name)
        if record.phase(self._supervisor.loading) == Phase.LOADING:
            raise CommandRefusedError(
                f"cannot {verb} {name!r}: its state is still loading (start-up); "
                "try again in a moment"
            )
        return record

    async def _routed(self, verb: str, name: str) -> str | None:
        """The hosting's answer when it routes `verb` elsewhere (cluster mode), else None:
        act here. UnknownTargetError for an unknown target."""
        self._record(name)
        return await self._supervisor.hosting.command(verb, name)

    async def stop(self, name: str) -> str:
        """Stop the target gracefully: refused (CommandRefusedError) once stopped."""
        if (routed := await self._routed("stop", name)) is not None:
            return routed
        self._live_runner(name, "stop")
        self._supervisor.stop_target(name, TargetStatus.STOPPED_OPERATOR)
        return f"{name}: stopping (a running iteration gets the shutdown grace period)"

    async def pause(self, name: str) -> str:
        """Let a running iteration finish, then start no new one until `resume`."""
        if (routed := await self._routed("pause", name)) is not None:
            return routed
        runner = self._live_runner(name, "pause")
        if runner.state.paused:
            raise CommandRefusedError(f"{name}: already paused")
        await runner.set_paused(True)
        return f"{name}: paused"

    async def resume(self, name: str) -> str:
        """Undo `pause`."""
        if (routed := await self._routed("resume", name)) is not None:
            return routed
        runner = self._live_runner(name, "resume")
        if not runner.state.paused:
            raise CommandRefusedError(f"{name}: not paused (already running)")
        await runner.set_paused(False)
        return f"{name}: resumed"

    async def run_now(self, name: str) -> str:
        """Skip the target's current cooldown or schedule wait, once."""
        if (routed := await self._routed("run-now", name)) is not None:
            return routed
        runner = self._live_runner(name, "run now")
        if runner.state.paused:
            raise CommandRefusedError(f"cannot run {name!r} now: it is paused ('resume' first)")
        if runner.phase == Phase.RUNNING:
            raise CommandRefusedError(f"{name}: already running an iteration")
        runner.run_now()
        return f"{name}: runs now"

    async def extend(self, name: str, iterations: object, cost_usd: object) -> str:
        """Raise the target's limits; a target stopped by them starts again. Each value is
        checked against its bound (policy/bounds.py, ValueError naming it) before anything
        changes."""
        record = self._loaded(name, "extend")
        iterations, cost_usd = _checked_extension(record, iterations, cost_usd)
        if not (iterations or cost_usd):
            raise CommandRefusedError("extend needs --iterations N and/or --cost USD (> 0)")
        routed = await self._supervisor.hosting.extend(name, iterations, cost_usd)
        if routed is not None:
            return routed
        runner = record.runner
        done = f"{name}: limits extended (+{iterations} iterations, +${cost_usd:.2f})"
        if runner is not None and runner.live:
            await _extended(runner, iterations, cost_usd)  # checked again: no await between
            return done
        await self._restart(record, lambda r: _extended(r, iterations, cost_usd), done)
        return f"{done}; started"

    async def reset(self, name: str) -> str:
        """Clear the circuit breaker and a final status; a stopped target starts again."""
        record = self._loaded(name, "reset")
        routed = await self._supervisor.hosting.reset(name)
        if routed is not None:
            return routed
        runner = record.runner
        if runner is not None and runner.live:
            await runner.clear_stop()
            return f"{name}: error count cleared"
        await self._restart(record, lambda r: r.clear_stop(), f"{name}: reset")
        return f"{name}: reset; started"

    async def _restart(
        self, record: TargetRecord, adjust: Callable[[TargetRunner], Awaitable[None]], done: str
    ) -> None:
        """Prepare the target again, apply `adjust` to its state, and run it. When a stop
        condition still holds, it stops again at once: CommandRefusedError says so after
        `done` (supervisorctl's "ERROR (already started)": the command did not take)."""
        name = record.spec.name
        if not self._supervisor.accepting:
            raise CommandRefusedError(f"cannot start {name!r}: the daemon is shutting down")
        if record.runner is not None and record.runner.final_status is None:
            raise CommandRefusedError(f"cannot start {name!r}: it is still stopping")
        runners = await self._supervisor.prepare([record.restart_spec or record.spec])
        if not runners:
            raise CommandRefusedError(f"cannot start {name!r}: {record.start_error}")
        await adjust(runners[0])
        holding = stop_reason(runners[0].progress.view(), runners[0].limits())
        self._supervisor.launch(runners[0])
        if holding is not None:
            why = runners[0].describe(holding)
            raise CommandRefusedError(f"{done}; started, then stopped again: {why}")

    async def history(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` lines of the target's iteration log, oldest first."""
        record = self._record(name)
        entries = await self._supervisor.storage.target(record.spec).read_log()
        return [e.to_json() for e in entries[-limit:]]
