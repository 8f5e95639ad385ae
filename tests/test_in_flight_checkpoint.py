"""The in-flight checkpoint before a run (engine/iteration.py): the run starts only once the
state says it is in flight, and a checkpoint that fails starts nothing and leaves no run log
open. In-process, on the in-memory storage, with a real orchestrator command (`touch`) that
leaves a mark per run, under blockbuster (which also holds the first run's content hash to
its worker thread: whether the target directory exists was once asked on the event loop).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from autoloop_daemon.engine import events as ev
from autoloop_daemon.engine.supervisor import Supervisor
from autoloop_daemon.exceptions import StateWriteError
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.runs.target_files import content_hash, content_hash_if_dir
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.storage.memory import MemoryStorage, MemoryTargetStore
from autoloop_daemon.target_state import TargetState
from autoloop_daemon.vocab import TargetStatus

TOUCH = shutil.which("touch")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.no_blocking,
    pytest.mark.skipif(TOUCH is None, reason="no `touch` on PATH"),
]


@pytest.fixture
def touching(tmp_path: Path) -> tuple[Path, TargetSpec]:
    """A target whose run N touches `<mark>-N`: (mark, its spec)."""
    mark = tmp_path / "started"
    target = tmp_path / "target"
    target.mkdir()
    assert TOUCH is not None
    return mark, TargetSpec(
        name="t", path=target, state_root=tmp_path / "state", mode="single-run",
        max_iterations=2, plateau_window=100, oscillation_window=0, backoff_base_seconds=0.0,
        orchestrator=(TOUCH, f"{mark}-{{iteration}}"), handoff_arg="",
    )  # type: ignore[call-arg]  # fmt: skip


def _open_run_logs(state_root: Path) -> list[str]:
    """The descriptors of this process open on a file under `state_root/runs` (blocking)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if where.startswith(str(state_root / "runs")):
            found.append(where)
    return found


async def _run_with_save(
    spec: TargetSpec,
    monkeypatch: pytest.MonkeyPatch,
    in_flight: Callable[[TargetState], Awaitable[None]],
) -> tuple[Supervisor, list[ev.Event]]:
    """Run `spec` to its end, `in_flight(state)` awaited before each in-flight save is
    stored (it may raise); the supervisor and every event it published."""
    saved = MemoryTargetStore.save

    async def save(self: MemoryTargetStore, state: TargetState) -> None:
        if state.in_flight is not None:
            await in_flight(state)
        await saved(self, state)

    monkeypatch.setattr(MemoryTargetStore, "save", save)
    events = ev.EventBus()
    seen: list[ev.Event] = []
    events.subscribe(seen.append)
    sup = Supervisor(
        [spec], storage=MemoryStorage(), events=events, budget_cap_usd=10.0,
        max_concurrent=1, grace_s=5.0,
    )  # fmt: skip
    with anyio.fail_after(30):
        await sup.run()
    return sup, seen


async def test_a_failed_in_flight_checkpoint_starts_nothing_and_leaves_no_log_open(
    touching: tuple[Path, TargetSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    mark, spec = touching

    async def disk_full(state: TargetState) -> None:
        await anyio.lowlevel.checkpoint()
        raise StateWriteError("cannot write the state: disk full (this test)")

    sup, seen = await _run_with_save(spec, monkeypatch, disk_full)
    failed = [e for e in seen if isinstance(e, ev.CheckpointFailed)]
    assert [e.target for e in failed] == ["t"] and "disk full" in failed[0].error
    assert [t.status for t in sup.snapshot().targets] == [TargetStatus.ERROR]
    assert not [e for e in seen if isinstance(e, ev.IterationStarted)]
    assert not await anyio.to_thread.run_sync(Path(f"{mark}-1").exists)  # never started
    assert await anyio.to_thread.run_sync(_open_run_logs, spec.state_root) == []


async def test_each_run_starts_after_its_in_flight_checkpoint(
    touching: tuple[Path, TargetSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    mark, spec = touching
    in_flight_saved: list[int] = []

    async def slow_disk(state: TargetState) -> None:
        assert state.in_flight is not None
        await anyio.sleep(0.05)  # a slow disk: the run waits for it
        started = Path(f"{mark}-{state.in_flight.iteration}")
        assert not await anyio.to_thread.run_sync(started.exists)
        in_flight_saved.append(state.in_flight.iteration)

    _, seen = await _run_with_save(spec, monkeypatch, slow_disk)
    # `touch` prints no result: each run fails, and three failures stop the target.
    finished = [e.entry.iteration for e in seen if isinstance(e, ev.IterationFinished)]  # type: ignore[attr-defined]
    assert in_flight_saved == finished == [1, 2, 3]
    for n in finished:  # each started, once its checkpoint was saved
        assert await anyio.to_thread.run_sync(Path(f"{mark}-{n}").exists)
    assert await anyio.to_thread.run_sync(_open_run_logs, spec.state_root) == []


def test_the_hash_before_a_first_run_is_none_when_the_target_is_gone(tmp_path: Path) -> None:
    """No directory, no hash to compare a run's changes with (not the hash of nothing)."""
    target = tmp_path / "target"
    assert content_hash_if_dir(target) is None
    target.mkdir()
    (target / "SKILL.md").write_text("x")
    assert content_hash_if_dir(target) == content_hash(target)
    (target / "SKILL.md").unlink()
    target.rmdir()
    target.write_text("a file, not a directory")
    assert content_hash_if_dir(target) is None


async def test_a_run_log_that_cannot_be_opened_is_announced_and_recorded_as_failed(
    touching: tuple[Path, TargetSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint was saved, so the iteration is announced (`IterationStarted`) before
    its failure is recorded, even though its run log (a directory planted in its place)
    stops it before anything starts."""
    mark, spec = touching
    planted = artifacts.run_log_path(spec.state_root, 1)
    await anyio.Path(planted).mkdir(parents=True)

    async def nothing(state: TargetState) -> None:
        await anyio.lowlevel.checkpoint()

    _, seen = await _run_with_save(spec, monkeypatch, nothing)
    first = [e for e in seen if getattr(e, "iteration", None) == 1 or (
        isinstance(e, ev.IterationFinished) and e.entry.iteration == 1)]  # fmt: skip
    assert [type(e) for e in first] == [ev.IterationStarted, ev.IterationFinished]
    finished = first[1]
    assert isinstance(finished, ev.IterationFinished)
    assert finished.entry.status == "failed" and "not started" in (finished.entry.error or "")
    assert not await anyio.to_thread.run_sync(Path(f"{mark}-1").exists)  # never started


@pytest.mark.skipif(shutil.which("false") is None, reason="no `false` on PATH")
async def test_the_target_is_hashed_after_runs_that_exit_0_only(
    touching: tuple[Path, TargetSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a run changed the files is asked of completed runs (exit 0 in time) only;
    a run that exits 1 is not hashed (`touch` exits 0 and prints no result: hashed, then
    failed for its missing result)."""
    _, spec = touching
    hashed: list[Path] = []

    def counting_hash(path: Path, exclude: Path | None = None) -> str:
        hashed.append(path)
        return content_hash(path, exclude)

    monkeypatch.setattr("autoloop_daemon.engine.iteration.content_hash", counting_hash)
    await _run_with_save(spec, monkeypatch, lambda state: anyio.lowlevel.checkpoint())
    assert hashed == [spec.path] * 3
    hashed.clear()
    false = shutil.which("false")
    assert false is not None
    failing = replace(spec, orchestrator=(false,), state_root=spec.state_root.with_name("s2"))
    _, seen = await _run_with_save(failing, monkeypatch, lambda state: anyio.lowlevel.checkpoint())
    finished = [e for e in seen if isinstance(e, ev.IterationFinished)]
    assert len(finished) == 3 and all(e.entry.status == "failed" for e in finished)  # type: ignore[attr-defined]
    assert hashed == []


async def test_a_run_that_removes_its_target_is_not_recorded_as_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completed run after which the target directory is gone: whether it changed the
    files is not known (None, with a warning), not "changed" for the hash of nothing."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "SKILL.md").write_text("x")
    result = (
        '{{"final_decision": "keep", "weighted_score": 0.5, "cost_usd": 0.01}}'  # argv template
    )
    spec = TargetSpec(
        name="t", path=target, state_root=tmp_path / "state", mode="single-run",
        max_iterations=1, plateau_window=100, oscillation_window=0, backoff_base_seconds=0.0,
        orchestrator=("/bin/sh", "-c", f'rm -r "{target}" && echo \'{result}\''),
        handoff_arg="",
    )  # type: ignore[call-arg]  # fmt: skip
    _, seen = await _run_with_save(spec, monkeypatch, lambda state: anyio.lowlevel.checkpoint())
    finished = [e.entry for e in seen if isinstance(e, ev.IterationFinished)]  # type: ignore[attr-defined]
    assert [(e.status, e.decision, e.changed) for e in finished] == [("completed", "keep", None)]
