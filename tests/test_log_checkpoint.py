"""Log checkpoints: start-up parses only the log's new lines, and changes nothing else.

Pinned down: a start after a long log leaves a checkpoint that the state names; the next
start parses none of the old lines yet recovers the same state; new lines after it are
parsed; a damaged line before the checkpoint is still refused (the prefix no longer
matches, so the whole log is read); a damaged or foreign checkpoint file falls back to a
full read; other weights fall back too; Progress survives its JSON round trip exactly.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.storage.files import artifacts, log_checkpoint
from autoloop_daemon.storage.files import state_file as state_mod
from autoloop_daemon.storage.files.store import FileTargetStore
from autoloop_daemon.target_state import TargetState

pytestmark = pytest.mark.anyio

LINES = log_checkpoint.MIN_LINES + 200
WEIGHTS = {"a": 0.5, "b": 0.5}


def _entries(first: int, n: int, seed: int = 7) -> list[LogEntry]:
    rng = random.Random(seed + first)
    out = []
    for i in range(first, first + n):
        kind = rng.random()
        status = "failed" if kind < 0.1 else "interrupted" if kind < 0.13 else "completed"
        scores = {"a": round(rng.random(), 4), "b": round(rng.random(), 4)}
        out.append(
            LogEntry(
                iteration=i,
                started_at="2026-01-01T00:00:00+00:00",
                finished_at="2026-01-01T00:01:00+00:00",
                status=status,
                decision=rng.choice(["keep", "reject"]) if status == "completed" else None,
                weighted_score=None if rng.random() < 0.3 else round(rng.random(), 4),
                cost_usd=round(rng.uniform(0, 0.3), 6),
                duration_seconds=60.0,
                scores=scores if status == "completed" and rng.random() < 0.8 else {},
                cost_source=rng.choice([None, "reported", "estimated"]),
            )
        )
    return out


def _write_log(root: Path, entries: list[LogEntry]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with artifacts.log_path(root).open("ab") as f:
        for e in entries:
            f.write((json.dumps(e.to_json(), separators=(",", ":")) + "\n").encode())


def _spec(tmp_path: Path, weights: dict[str, float] = WEIGHTS) -> TargetSpec:
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    return TargetSpec(
        name="t",
        path=target,
        state_root=tmp_path / "state",
        weights=tuple(weights.items()),
        orchestrator=("true",),
        handoff_arg=None,
    )


async def _open(spec: TargetSpec) -> tuple[TargetState, Any]:
    store = FileTargetStore(spec)
    try:
        recovered = await store.open()
    finally:
        await store.close()
    return recovered.state, recovered


def _lines_read(spec: TargetSpec) -> int:
    loaded = state_mod.load_state(state_mod.state_path(spec.state_root))
    assert loaded is not None
    summary = log_checkpoint.read_summary(
        spec.state_root, loaded.log_checkpoint, spec.weights_map, spec.min_improvement
    )
    return summary.lines_read


def _comparable(state: TargetState) -> dict[str, Any]:
    data = state.to_json()
    for key in ("updated_at", "started_at", "log_checkpoint"):
        data.pop(key, None)
    return data


async def test_the_second_start_parses_no_old_line_and_recovers_the_same_state(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path)
    _write_log(spec.state_root, _entries(1, LINES))
    first, rec1 = await _open(spec)
    assert first.log_checkpoint is not None
    assert log_checkpoint.checkpoint_path(spec.state_root).is_file()
    assert _lines_read(spec) == 0
    second, rec2 = await _open(spec)
    assert _comparable(second) == _comparable(first)
    assert rec2.last_entry == rec1.last_entry
    assert rec2.progress.to_json() == rec1.progress.to_json()


async def test_new_lines_after_the_checkpoint_are_parsed_into_the_same_totals(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path)
    _write_log(spec.state_root, _entries(1, LINES))
    await _open(spec)
    _write_log(spec.state_root, _entries(LINES + 1, 25))
    assert _lines_read(spec) == 25
    state, rec = await _open(spec)
    entries, _ = artifacts.read_log(artifacts.log_path(spec.state_root))
    full = Progress.from_entries(entries, spec.weights_map, spec.min_improvement)
    assert rec.progress.to_json() == full.to_json()
    assert state.iterations_completed == full.completed
    assert rec.last_entry == entries[-1]


async def test_a_damaged_line_before_the_checkpoint_is_still_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _write_log(spec.state_root, _entries(1, LINES))
    await _open(spec)
    log_file = artifacts.log_path(spec.state_root)
    lines = log_file.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[9])
    entry["cost_usd"] = -1  # whatever its length, the prefix's CRC no longer matches
    lines[9] = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
    log_file.write_bytes(b"".join(lines))
    before = log_file.read_bytes()
    with pytest.raises(StateCorruptError, match=r"iteration_log.jsonl:10: cost_usd"):
        await _open(spec)
    assert log_file.read_bytes() == before


@pytest.mark.parametrize("damage", ["garbage", "foreign", "missing"])
async def test_a_bad_checkpoint_file_falls_back_to_a_full_read(tmp_path: Path, damage: str) -> None:
    spec = _spec(tmp_path)
    _write_log(spec.state_root, _entries(1, LINES))
    good, _ = await _open(spec)
    path = log_checkpoint.checkpoint_path(spec.state_root)
    if damage == "garbage":
        path.write_bytes(b'{"offset": 1')
    elif damage == "foreign":
        data = json.loads(path.read_bytes())
        data["offset"] -= 1
        path.write_text(json.dumps(data))
    else:
        path.unlink()
    assert _lines_read(spec) == LINES
    again, _ = await _open(spec)
    assert _comparable(again) == _comparable(good)


async def test_other_weights_fall_back_to_a_full_read(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _write_log(spec.state_root, _entries(1, LINES))
    await _open(spec)
    other = _spec(tmp_path, {"a": 0.9, "b": 0.1})
    assert _lines_read(other) == LINES


def test_progress_survives_its_json_round_trip() -> None:
    entries = _entries(1, 300)
    full = Progress.from_entries(entries, WEIGHTS, 0.01)
    head = Progress.from_entries(entries[:180], WEIGHTS, 0.01)
    restored = Progress.from_json(json.loads(json.dumps(head.to_json())), WEIGHTS, 0.01)
    for e in entries[180:]:
        restored.add(e)
    assert restored.to_json() == full.to_json()
    assert list(restored.scores) == list(full.scores)
    assert list(restored.decisions) == list(full.decisions)
    with pytest.raises(ValueError, match="weights"):
        Progress.from_json(head.to_json(), {"a": 1.0}, 0.01)


async def test_a_short_log_gets_no_checkpoint_and_its_state_no_new_field(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    _write_log(spec.state_root, _entries(1, 20))
    state, _ = await _open(spec)
    assert state.log_checkpoint is None
    assert "log_checkpoint" not in json.loads(state_mod.state_path(spec.state_root).read_text())
    assert not log_checkpoint.checkpoint_path(spec.state_root).exists()


@pytest.mark.parametrize("root", ["state", "a b/é", "x/./y", "z/", "/", ".", "rel/dir", ""])
def test_a_stores_location_is_its_state_files_path(tmp_path: Path, root: str) -> None:
    """`location` (asked of every target by every status rendering) joins strings, and says
    what `str(state_path(root))` says."""
    under = root.startswith("/") or root in (".", "") or root.startswith("rel")
    state_root = Path(root) if under else Path(str(tmp_path / root))
    spec = dataclasses.replace(_spec(tmp_path), state_root=state_root)
    assert FileTargetStore(spec).location == str(state_mod.state_path(spec.state_root))
