"""The supervisor and the target runner in-process, on the in-memory storage and the dry-run
simulator: stop, drain, force, reload and budget behaviour through the command API and the
typed events, each under `anyio.fail_after` and with blockbuster watching the event loop.

(The same behaviours are tested end to end through the real binary elsewhere; here nothing
is spawned where a spawn adds nothing.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from autoloop_daemon.control.status_routes import status_payload
from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine import supervisor as supervisor_module
from autoloop_daemon.engine.commands import Commands
from autoloop_daemon.engine.records import ReloadedConfig
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import CommandRefusedError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.status_text import render_summary
from autoloop_daemon.storage.memory import MemoryStorage
from autoloop_daemon.vocab import TargetStatus

pytestmark = [pytest.mark.anyio, pytest.mark.no_blocking]


def spec(tmp_path: Path, name: str, **overrides: object) -> TargetSpec:
    """A dry-run target; the simulator writes its run logs under the state root."""
    target = tmp_path / name
    target.mkdir(exist_ok=True)
    root = tmp_path / "state" / name
    for sub in ("runs", "learner"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "mode": "single-run", "max_iterations": 3, "plateau_window": 100,
        "oscillation_window": 0, "dry_run": True, "simulated_seconds": 0.0,
    }  # fmt: skip
    values.update(overrides)
    return TargetSpec(name=name, path=target, state_root=root, **values)  # type: ignore[arg-type]


class Recorder:
    """Collects events; `wait_for` returns once a predicate over them holds."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._changed = anyio.Event()

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: type[ev.Event]) -> list[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


def supervisor(specs: list[TargetSpec], **kwargs: object) -> tuple[Supervisor, Recorder]:
    recorder = Recorder()
    events = ev.EventBus()
    events.subscribe(recorder)
    options: dict[str, object] = {"budget_cap_usd": 100.0, "max_concurrent": 4, "grace_s": 5.0}
    options.update(kwargs)
    sup = Supervisor(specs, storage=MemoryStorage(), events=events, **options)  # type: ignore[arg-type]
    return sup, recorder


def stopped(recorder: Recorder) -> dict[str, str]:
    return {e.target: e.status for e in recorder.of(ev.TargetStopped)}  # type: ignore[attr-defined]


async def test_targets_run_to_their_limits_and_the_supervisor_returns_0(tmp_path: Path) -> None:
    """Three single-run targets run three iterations each and stop on max_iterations."""
    sup, rec = supervisor([spec(tmp_path, n) for n in ("a", "b", "c")])
    with anyio.fail_after(30):
        assert await sup.run() == 0
    assert len(rec.of(ev.IterationFinished)) == 9
    assert stopped(rec) == dict.fromkeys("abc", TargetStatus.STOPPED_MAX_ITER)
    snapshot = sup.snapshot()
    assert [t.iterations_completed for t in snapshot.targets] == [3, 3, 3]
    assert snapshot.budget.spent_usd == pytest.approx(
        sum(t.total_cost_usd for t in snapshot.targets)
    )


async def test_a_shutdown_request_drains_a_running_iteration(tmp_path: Path) -> None:
    """A stop request while an iteration runs: it finishes within the grace and is recorded
    completed; the target ends stopped_signal."""
    sup, rec = supervisor([spec(tmp_path, "slow", simulated_seconds=0.5, max_iterations=10)])
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            tg.start_soon(sup.run)
            await rec.wait_for(lambda: bool(rec.of(ev.IterationStarted)))
            sup.request_shutdown("test")
    finished = rec.of(ev.IterationFinished)
    assert [e.entry.status for e in finished] == ["completed"]  # type: ignore[attr-defined]
    assert stopped(rec) == {"slow": TargetStatus.STOPPED_SIGNAL}


async def test_a_second_request_skips_the_grace(tmp_path: Path) -> None:
    """With a 60 s grace and a 30 s iteration, the second request interrupts it at once."""
    sup, rec = supervisor([spec(tmp_path, "long", simulated_seconds=30.0)], grace_s=60.0)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            tg.start_soon(sup.run)
            await rec.wait_for(lambda: bool(rec.of(ev.IterationStarted)))
            sup.request_shutdown("first")
            sup.request_shutdown("second")
    [finished] = rec.of(ev.IterationFinished)
    assert finished.entry.status == "interrupted"  # type: ignore[attr-defined]
    assert rec.of(ev.ShutdownForced)


async def test_reload_adds_removes_and_changes_targets(tmp_path: Path) -> None:
    """reload(): a new target starts, a removed one stops stopped_removed, a raised limit of
    a continuous target applies; the report says so."""
    keep = spec(tmp_path, "keep", mode="continuous", cooldown_minutes=600, max_iterations=5)
    gone = spec(tmp_path, "gone", mode="continuous", cooldown_minutes=600, max_iterations=5)
    new = spec(tmp_path, "new")
    changed = spec(tmp_path, "keep", mode="continuous", cooldown_minutes=600, max_iterations=9)
    sup, rec = supervisor(
        [keep, gone],
        reloader=lambda: ReloadedConfig((changed, new), 100.0, 4, 5.0),
    )
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            tg.start_soon(sup.run)
            await rec.wait_for(lambda: len(rec.of(ev.IterationFinished)) >= 2)
            report = await sup.reload()
            await rec.wait_for(lambda: "new" in stopped(rec) and "gone" in stopped(rec))
            sup.request_shutdown("test")
    assert (report.ok, report.added, report.removed, report.changed) == (
        True, ("new",), ("gone",), ("keep",),
    )  # fmt: skip
    assert stopped(rec)["gone"] == TargetStatus.STOPPED_REMOVED
    assert stopped(rec)["new"] == TargetStatus.STOPPED_MAX_ITER
    assert [t.max_iterations for t in sup.snapshot().targets if t.target == "keep"] == [9]


async def test_the_shared_budget_stops_targets_when_it_cannot_fund_a_run(
    tmp_path: Path,
) -> None:
    """A $0.30 cap for targets whose simulated runs cost $0.05-0.25: they stop
    stopped_budget and the total never passes the cap (costs are reported, reservations
    come from the fleet's evidence)."""
    specs = [spec(tmp_path, n, max_iterations=50, estimated_cost_usd=0.25) for n in "ab"]
    sup, rec = supervisor(specs, budget_cap_usd=0.3, max_concurrent=1)
    with anyio.fail_after(30):
        assert await sup.run() == 0
    assert set(stopped(rec).values()) == {TargetStatus.STOPPED_BUDGET}
    assert sup.snapshot().budget.spent_usd <= 0.3 + 1e-9


class _GatedStorage:
    """MemoryStorage whose targets' states load only once `gate` is set (a slow disk)."""

    def __init__(self, gate: anyio.Event) -> None:
        self._inner = MemoryStorage()
        self._gate = gate
        self.opened: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def target(self, spec: TargetSpec) -> object:
        store, gate, opened = self._inner.target(spec), self._gate, self.opened

        class Gated:
            def __getattr__(self, name: str) -> object:
                return getattr(store, name)

            async def open(self) -> object:
                opened.append(spec.name)
                await gate.wait()
                return await store.open()

        return Gated()


async def test_ready_comes_before_the_states_load_and_loading_targets_say_so(
    tmp_path: Path,
) -> None:
    """READY=1's event (`TargetsLoading`) comes once the configuration is in and the storage
    locked, before any state has loaded: meanwhile the targets are `loading` in the rows and
    the STATUS= line and the summary under `status` (the budget does not count them yet), a
    verb on one is refused as still loading; once the
    states are in, `DaemonReady` follows and the targets run."""
    gate = anyio.Event()
    recorder, events = Recorder(), ev.EventBus()
    events.subscribe(recorder)
    specs = [spec(tmp_path, n, max_iterations=1) for n in ("a", "b")]
    sup = Supervisor(
        specs, storage=_GatedStorage(gate), events=events,  # type: ignore[arg-type]
        budget_cap_usd=100.0, max_concurrent=4, grace_s=5.0,
    )  # fmt: skip
    commands = Commands(sup)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            await recorder.wait_for(lambda: bool(recorder.of(ev.TargetsLoading)))
            await anyio.wait_all_tasks_blocked()
            assert not recorder.of(ev.DaemonReady) and sup.loading
            assert recorder.of(ev.TargetsLoading) == [ev.TargetsLoading(2)]
            assert ", 2 loading;" in sup.status_line()
            rows = sup.target_rows()
            assert [(r["phase"], r["status"]) for r in rows] == [("loading", "loading")] * 2
            assert sup.snapshot().ready is False
            payload = status_payload(sup.snapshot(targets=False), rows=rows)
            summary = render_summary(payload, daemon=False)
            assert "\n2 targets still loading: not counted in the budget yet" in summary
            for verb in (commands.stop("a"), commands.pause("b"), commands.reset("a")):
                with pytest.raises(CommandRefusedError, match="still loading"):
                    await verb
            gate.set()
    assert recorder.of(ev.DaemonReady) and not sup.loading
    assert stopped(recorder) == dict.fromkeys("ab", TargetStatus.STOPPED_MAX_ITER)
    loading_at = recorder.events.index(recorder.of(ev.TargetsLoading)[0])
    assert loading_at < recorder.events.index(recorder.of(ev.DaemonReady)[0])


async def test_a_shutdown_while_loading_leaves_the_rest_unloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during start-up (READY=1 came before the states): the targets being loaded
    finish loading and stop; the others are not loaded at all, and the daemon exits 0."""
    monkeypatch.setattr(supervisor_module, "PREPARE_AT_ONCE", 1)
    gate = anyio.Event()
    recorder, events = Recorder(), ev.EventBus()
    events.subscribe(recorder)
    storage = _GatedStorage(gate)
    specs = [spec(tmp_path, n, mode="continuous") for n in ("a", "b", "c")]
    sup = Supervisor(
        specs, storage=storage, events=events,  # type: ignore[arg-type]
        budget_cap_usd=100.0, max_concurrent=4, grace_s=5.0,
    )  # fmt: skip
    codes: list[int] = []

    async def run() -> None:
        codes.append(await sup.run())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await recorder.wait_for(lambda: bool(recorder.of(ev.TargetsLoading)))
            await anyio.wait_all_tasks_blocked()
            sup.request_shutdown("test")
            gate.set()
    assert codes == [0] and storage.opened == ["a"]
    assert stopped(recorder) == {"a": TargetStatus.STOPPED_SIGNAL}
    assert not recorder.of(ev.IterationStarted)
