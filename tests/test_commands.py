"""The operator's verbs (`Commands`) against a fake supervisor, in-process, no daemon: each
verb's reply, its refusals, and a hosting that routes a verb elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from autoloop_daemon.engine.commands import Commands
from autoloop_daemon.engine.hosting import LocalHosting
from autoloop_daemon.engine.records import TargetRecord
from autoloop_daemon.exceptions import CommandRefusedError, UnknownTargetError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.stops import Limits, LoopView
from autoloop_daemon.storage.memory import MemoryStorage

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]


@dataclass
class FakeState:
    paused: bool = False
    status: str = "idle"
    extra_iterations: int = 0
    extra_cost_usd: float = 0.0


@dataclass
class FakeRunner:
    """What the commands touch of a target runner; records the calls it gets."""

    spec: TargetSpec
    final_status: str | None = None
    stopping: bool = False
    phase: str = "waiting"
    state: FakeState = field(default_factory=FakeState)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    done: int = 0  # iterations completed, against a limit of 3

    @property
    def progress(self) -> Any:
        return SimpleNamespace(view=lambda: LoopView(self.done, 0.0, (), ()))

    def limits(self) -> Limits:
        return Limits(3, 10.0, 0)

    def describe(self, status: str) -> str:
        return f"{status} ({self.done}/3)"

    @property
    def live(self) -> bool:
        """As the runner's: its cycle runs and no stop was requested."""
        return self.final_status is None and not self.stopping

    async def set_paused(self, paused: bool) -> None:
        self.calls.append(("set_paused", (paused,)))
        self.state.paused = paused

    def run_now(self) -> None:
        self.calls.append(("run_now", ()))

    async def extend(self, iterations: int, cost_usd: float) -> None:
        self.calls.append(("extend", (iterations, cost_usd)))

    async def clear_stop(self) -> None:
        self.calls.append(("clear_stop", ()))


class FakeSupervisor:
    """The `Supervised` surface over a dict of records; `prepare` makes fresh fake runners."""

    def __init__(self, records: dict[str, TargetRecord], *, accepting: bool = True) -> None:
        self.hosting: Any = LocalHosting()
        self.storage = MemoryStorage()
        self.accepting = accepting
        self.loading = False
        self.records = records
        self.stopped: list[str] = []
        self.launched: list[FakeRunner] = []
        self.prepared_done = 0  # iterations completed in the states `prepare` reads

    def record(self, name: str) -> TargetRecord | None:
        return self.records.get(name)

    def stop_target(self, name: str, status: str = "stopped_signal") -> None:
        self.stopped.append(name)

    async def prepare(self, specs: list[TargetSpec]) -> list[FakeRunner]:
        runners = [FakeRunner(spec, done=self.prepared_done) for spec in specs]
        for runner in runners:
            self.records[runner.spec.name].runner = runner  # type: ignore[assignment]
        return runners

    def launch(self, runner: FakeRunner) -> bool:
        self.launched.append(runner)
        return True


def spec(tmp_path: Path, name: str) -> TargetSpec:
    return TargetSpec(name=name, path=tmp_path / name, state_root=tmp_path / "state" / name)


def fleet(tmp_path: Path, **kwargs: Any) -> tuple[FakeSupervisor, FakeRunner, TargetRecord]:
    """One target `a` with a live runner, and one `done` whose cycle ended."""
    live = FakeRunner(spec(tmp_path, "a"))
    ended = FakeRunner(spec(tmp_path, "done"), final_status="stopped_max_iter")
    records = {
        "a": TargetRecord(live.spec, runner=live),  # type: ignore[arg-type]
        "done": TargetRecord(ended.spec, runner=ended, result="stopped_max_iter"),  # type: ignore[arg-type]
    }
    return FakeSupervisor(records, **kwargs), live, records["done"]


async def test_pause_resume_and_run_now_act_on_a_live_runner(tmp_path: Path) -> None:
    """pause and resume set the runner's pause; run-now is refused while paused."""
    sup, live, _ = fleet(tmp_path)
    commands = Commands(sup)  # type: ignore[arg-type]
    assert await commands.pause("a") == "a: paused"
    with pytest.raises(CommandRefusedError, match="it is paused"):
        await commands.run_now("a")
    with pytest.raises(CommandRefusedError, match="a: already paused"):
        await commands.pause("a")  # supervisorctl's "ERROR (already started)": did not take
    assert await commands.resume("a") == "a: resumed"
    with pytest.raises(CommandRefusedError, match="a: not paused"):
        await commands.resume("a")
    assert await commands.run_now("a") == "a: runs now"
    assert [c[0] for c in live.calls] == ["set_paused", "set_paused", "run_now"]


async def test_an_unknown_target_is_refused_by_every_verb(tmp_path: Path) -> None:
    """Every verb raises UnknownTargetError for a name with no record."""
    commands = Commands(fleet(tmp_path)[0])  # type: ignore[arg-type]
    for call in (
        commands.stop("x"),
        commands.pause("x"),
        commands.resume("x"),
        commands.run_now("x"),
        commands.reset("x"),
        commands.extend("x", 1, 0.0),
        commands.history("x", 10),
    ):
        with pytest.raises(UnknownTargetError, match="no target named 'x'"):
            await call


async def test_a_stopped_target_refuses_stop_and_pause_with_its_status(tmp_path: Path) -> None:
    """Once its cycle ended, stop and pause say so and point at reset and extend."""
    sup, _, _ = fleet(tmp_path)
    commands = Commands(sup)  # type: ignore[arg-type]
    with pytest.raises(CommandRefusedError, match=r"stopped \(stopped_max_iter\)"):
        await commands.stop("done")
    with pytest.raises(CommandRefusedError, match="'reset' or 'extend' starts it again"):
        await commands.pause("done")
    assert sup.stopped == []
    assert await commands.stop("a") == (
        "a: stopping (a running iteration gets the shutdown grace period)"
    )
    assert sup.stopped == ["a"]


async def test_extend_checks_its_arguments_then_restarts_a_stopped_target(tmp_path: Path) -> None:
    """extend refuses nothing to add; on an ended target it prepares, extends and launches."""
    sup, _, _ = fleet(tmp_path)
    commands = Commands(sup)  # type: ignore[arg-type]
    with pytest.raises(CommandRefusedError, match="extend needs"):
        await commands.extend("done", 0, 0.0)
    reply = await commands.extend("done", 2, 1.5)
    assert reply == "done: limits extended (+2 iterations, +$1.50); started"
    assert [r.calls for r in sup.launched] == [[("extend", (2, 1.5))]]


@pytest.mark.parametrize(
    ("iterations", "cost", "field"),
    [
        (0, float("nan"), "cost_usd"),
        (0, float("inf"), "cost_usd"),
        (0, 1e308, "cost_usd"),
        (0, -1.0, "cost_usd"),
        (0, "5", "cost_usd"),
        (0, True, "cost_usd"),
        pytest.param(10**5000, 0, "iterations", id="huge-int"),
        (1.5, 0, "iterations"),
        (-1, 0, "iterations"),
        (1_000_001, 0, "iterations"),
    ],
)
async def test_extend_refuses_a_value_out_of_bounds_before_anything_changes(
    tmp_path: Path, iterations: object, cost: object, field: str
) -> None:
    """NaN, infinities, huge, negative and mistyped values are a ValueError naming the field,
    and no runner is prepared, extended or launched."""
    sup, live, done = fleet(tmp_path)
    commands = Commands(sup)  # type: ignore[arg-type]
    for name in ("a", "done"):
        with pytest.raises(ValueError, match=f"^{field}"):
            await commands.extend(name, iterations, cost)
    assert sup.launched == [] and live.calls == [] and done.runner.calls == []  # type: ignore[union-attr]


async def test_extensions_whose_sum_is_over_the_bound_are_refused(tmp_path: Path) -> None:
    """Two extensions each within the bound whose total is not: the second is refused."""
    sup, live, _ = fleet(tmp_path)
    commands = Commands(sup)  # type: ignore[arg-type]
    live.state.extra_cost_usd = 6e8  # as the first extension left it
    with pytest.raises(ValueError, match=r"^cost_usd: .* would total"):
        await commands.extend("a", 0, 6e8)
    live.state.extra_iterations = 999_999
    with pytest.raises(ValueError, match=r"^iterations: .* would total"):
        await commands.extend("a", 2, 0.0)
    assert live.calls == []


async def test_a_restart_whose_limit_still_holds_says_it_stopped_again(tmp_path: Path) -> None:
    """reset of a target whose limit still holds launches it (it records its stop again) but
    answers that it did not take, with the limit's words; extend says so the same way."""
    sup, _, _ = fleet(tmp_path)
    sup.prepared_done = 3
    commands = Commands(sup)  # type: ignore[arg-type]
    with pytest.raises(CommandRefusedError) as refused:
        await commands.reset("done")
    assert str(refused.value) == (
        "done: reset; started, then stopped again: stopped_max_iter (3/3)"
    )
    sup.records["done"].runner = None
    with pytest.raises(CommandRefusedError, match=r"\+\$1.00\); started, then stopped again"):
        await commands.extend("done", 0, 1.0)
    assert len(sup.launched) == 2


async def test_reset_of_a_stopped_target_is_refused_while_shutting_down(tmp_path: Path) -> None:
    """No target starts again once a shutdown was asked; a live one only clears its count."""
    sup, live, _ = fleet(tmp_path, accepting=False)
    commands = Commands(sup)  # type: ignore[arg-type]
    with pytest.raises(CommandRefusedError, match="the daemon is shutting down"):
        await commands.reset("done")
    assert await commands.reset("a") == "a: error count cleared"
    assert live.calls == [("clear_stop", ())]
    assert sup.launched == []


async def test_a_hosting_that_routes_a_verb_answers_for_it(tmp_path: Path) -> None:
    """A hosting's reply (cluster mode) replaces the local action."""

    class Routing:
        async def command(self, verb: str, name: str) -> str | None:
            return f"{name}: {verb} routed"

    sup, live, _ = fleet(tmp_path)
    sup.hosting = Routing()
    commands = Commands(sup)  # type: ignore[arg-type]
    assert await commands.pause("a") == "a: pause routed"
    assert await commands.stop("done") == "done: stop routed"
    assert live.calls == [] and sup.stopped == []


async def test_history_is_the_newest_entries_of_the_targets_log(tmp_path: Path) -> None:
    """history reads the target's log from the storage (empty for a new target)."""
    commands = Commands(fleet(tmp_path)[0])  # type: ignore[arg-type]
    assert await commands.history("a", 10) == []
