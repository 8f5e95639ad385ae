"""The state file: one owner (lock), refusal of corrupt files, recovery from the log."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from autoloop_daemon.exceptions import StateCorruptError, StateLockedError
from autoloop_daemon.models import LogEntry, TargetSpec
from autoloop_daemon.policy import stops
from autoloop_daemon.policy.progress import SCORE_HISTORY_LIMIT, Progress
from autoloop_daemon.storage.files import artifacts, fsio
from autoloop_daemon.storage.files.lock import LOCK_NAME, StateLock
from autoloop_daemon.target_state import TargetState
from tests.helpers import state_json as state
from tests.helpers.wait import wait_for

NOW = "2025-01-01T00:00:00+00:00"


def _spec(tmp_path: Path, **kw: Any) -> TargetSpec:
    return TargetSpec(name="t", path=tmp_path / "skill", state_root=tmp_path / "state", **kw)


def _entry(iteration: int, status: str = "completed", **kw: Any) -> LogEntry:
    fields: dict[str, Any] = {
        "iteration": iteration,
        "started_at": f"start-{iteration}",
        "finished_at": f"end-{iteration}",
        "status": status,
        "decision": "keep" if status == "completed" else None,
        "weighted_score": None,
        "cost_usd": 0.1,
        "duration_seconds": 1.0,
    }
    fields.update(kw)
    return LogEntry(**fields)


# --- the lock ---------------------------------------------------------------------------

_HOLDER = """
import sys
from pathlib import Path
from autoloop_daemon.storage.files.lock import StateLock
lock = StateLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()   # hold the lock until the parent closes our stdin
lock.release()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the lock of tmp_path/"state" until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "state")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lock_file = tmp_path / "state" / LOCK_NAME
        # The pid is written right after the lock is taken; "locked" is printed after that.
        wait_for(
            lambda: (
                proc.poll() is not None
                or (lock_file.exists() and lock_file.read_text().strip() == str(proc.pid))
            ),
            timeout=10.0,
            interval=0.01,
            what="the holder to take the lock",
        )
        assert proc.poll() is None, "the lock holder died"
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_lock_held_by_another_process_names_its_pid(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """A second owner gets StateLockedError with the holder's pid; release lets it in."""
    root = tmp_path / "state"
    lock = StateLock(root)
    with pytest.raises(StateLockedError) as info:
        lock.acquire()
    assert str(info.value) == (
        f"{root} is in use by another autoloopd (pid {holder.pid}); stop it first"
    )
    assert not lock.held

    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0

    lock.acquire()
    try:
        assert lock.held
        assert (root / LOCK_NAME).read_text().strip() == str(os.getpid())
    finally:
        lock.release()
    assert (root / LOCK_NAME).exists()  # never unlinked


@pytest.mark.parametrize("before", ["4194304\n", "", "x" * 1000, "  \n"])
def test_a_lock_file_names_its_holder_and_nothing_once_released(
    tmp_path: Path, before: str
) -> None:
    """The pid is written over what was there (blank-padded), a release blanks it: a stale
    pid is seen only where the last holder did not release (it was killed)."""
    root = tmp_path / "state"
    root.mkdir()
    (root / LOCK_NAME).write_text(before)
    lock = StateLock(root)
    lock.acquire()
    assert lock.stale_holder == (4194304 if before.strip().isdigit() else None)
    assert (root / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert (root / LOCK_NAME).stat().st_size <= 64
    lock.release()
    assert (root / LOCK_NAME).read_text().strip() == ""
    again = StateLock(root)
    again.acquire()
    assert again.stale_holder is None
    again.release()


@pytest.mark.parametrize("found", ["", " ", " " * 5, " " * 40])
def test_a_release_leaves_a_blank_lock_file_byte_identical(tmp_path: Path, found: str) -> None:
    """A blank lock file shorter than our pid line (a last holder with a shorter pid, or a
    new file) is blanked back to its own size on release: a run that changed nothing leaves
    the file byte for byte as it found it (it grew by a byte whenever the pid got a digit
    longer, and `test_hostile_json` saw it once the machine's pids passed 9,999)."""
    root = tmp_path / "state"
    root.mkdir()
    (root / LOCK_NAME).write_text(found)
    lock = StateLock(root)
    lock.acquire()
    assert (root / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    assert (root / LOCK_NAME).read_bytes() == found.encode()


def test_lock_freed_when_holder_is_killed(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    """SIGKILL of the owner frees the lock (the kernel drops it); a stale pid does not block."""
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with StateLock(tmp_path / "state") as lock:
        assert lock.held


def test_lock_twice_in_one_process(tmp_path: Path) -> None:
    """Two StateLock objects on one root exclude each other too; release is idempotent."""
    first = StateLock(tmp_path)
    second = StateLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(StateLockedError, match=f"pid {os.getpid()}"):
            second.acquire()
        with pytest.raises(RuntimeError):
            first.acquire()
    finally:
        first.release()
    first.release()
    second.acquire()
    second.release()


def test_lock_constructor_does_nothing(tmp_path: Path) -> None:
    """Creating a StateLock touches no file (constructors do nothing that can fail)."""
    lock = StateLock(tmp_path / "missing" / "root")
    assert not (tmp_path / "missing").exists()
    assert not lock.held


# --- load_state -------------------------------------------------------------------------


def test_load_state_missing_is_none(tmp_path: Path) -> None:
    """No state file yet: None."""
    assert state.load_state(tmp_path / state.STATE_NAME) is None


_VALID = json.dumps({"schema_version": "1.0", "iterations_completed": 1, "status": "idle"})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not json", "not valid JSON"),
        (b"", "empty file"),
        (b"  \n", "empty file"),
        (_VALID[:-10].encode(), "truncated JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b'{"iterations_completed": "3"}', "iterations_completed"),
        (b'{"iterations_completed": 2.5}', "iterations_completed"),
        (b'{"iterations_completed": true}', "iterations_completed"),
        (b'{"total_cost_usd": "1.0"}', "total_cost_usd"),
        (b'{"total_cost_usd": NaN}', "NaN"),
        (b'{"score_history": {}}', "score_history"),
        (b'{"score_history": [1]}', "score_history"),
        (b'{"current_scores": {"a": "x"}}', "current_scores"),
        (b'{"in_flight": {"iteration": "1"}}', "in_flight"),
        (b'{"status": null}', "status"),
        (b'{"paused": "yes"}', "paused"),
        (b'{"paused": 1}', "paused"),
        (b'{"extra_iterations": 1.5}', "extra_iterations"),
        (b'{"extra_cost_usd": "2"}', "extra_cost_usd"),
        (b'{"schema_version": "2.0"}', "written by a newer autoloopd (schema 2.0)"),
        (b'{"schema_version": 1}', "schema_version"),
        ('{"target": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_load_state_refuses_corrupt_files(tmp_path: Path, content: bytes, problem: str) -> None:
    """Each corrupt variant raises StateCorruptError naming the file; its bytes are unchanged."""
    path = tmp_path / state.STATE_NAME
    path.write_bytes(content)
    with pytest.raises(StateCorruptError) as info:
        state.load_state(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.STATE_NAME]


def test_load_state_future_schema_message(tmp_path: Path) -> None:
    """A state from a newer autoloopd is refused with a clear sentence."""
    path = tmp_path / state.STATE_NAME
    path.write_text('{"schema_version": "2.0", "iterations_completed": 1}')
    with pytest.raises(StateCorruptError) as info:
        state.load_state(path)
    assert str(info.value) == (
        f"{path}: written by a newer autoloopd (schema 2.0); refusing to touch it"
    )


def test_load_state_accepts_newer_minor_version(tmp_path: Path) -> None:
    """Schema 1.x of a later minor version is still read (unknown fields are kept)."""
    path = tmp_path / state.STATE_NAME
    path.write_text('{"schema_version": "1.3", "new_field": [1]}')
    loaded = state.load_state(path)
    assert loaded is not None
    assert loaded["schema_version"] == "1.3"
    assert loaded["new_field"] == [1]


def test_load_state_migrates_missing_schema_version(tmp_path: Path) -> None:
    """A seed state without schema_version becomes 1.0 in memory; the caller is told."""
    path = tmp_path / state.STATE_NAME
    seed = {"target": "/skill", "iterations_completed": 2, "total_cost_usd": 0.3}
    raw = json.dumps(seed).encode()
    path.write_bytes(raw)
    notes: list[str] = []
    loaded = state.load_state(path, on_migrate=notes.append)
    assert loaded is not None
    assert loaded["schema_version"] == "1.0"
    assert loaded["iterations_completed"] == 2
    assert loaded["in_flight"] is None  # new fields get their initial values
    assert loaded["next_iteration"] == 1
    assert len(notes) == 1
    assert str(path) in notes[0]
    assert path.read_bytes() == raw  # migrated in memory only


def test_load_state_refuses_every_truncation(tmp_path: Path) -> None:
    """A state file cut at any byte (a torn non-atomic copy) is refused, never half-read."""
    path = tmp_path / state.STATE_NAME
    st = state.reconcile(state.new_state(_spec(tmp_path), NOW), _mixed_log(), {})
    fsio.atomic_write_bytes(path, state.encode_state(st))
    full = path.read_bytes()
    body = full.rstrip()
    for cut in range(len(body)):
        path.write_bytes(body[:cut])
        with pytest.raises(StateCorruptError, match=str(path)):
            state.load_state(path)
    path.write_bytes(full)
    assert state.load_state(path) == st


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_unknown_fields_survive_save_and_load(tmp_path: Path) -> None:
    """Fields this version does not know are written back unchanged."""
    path = tmp_path / state.STATE_NAME
    st = state.new_state(_spec(tmp_path), NOW)
    st["future_thing"] = {"nested": [1, 2, {"x": None}]}
    st["score_history"] = [{"iteration": 1, "weighted_score": 0.5, "extra": "kept"}]
    await state.save_state(path, st)
    loaded = await anyio.to_thread.run_sync(state.load_state, path)
    assert loaded is not None
    assert loaded["future_thing"] == {"nested": [1, 2, {"x": None}]}
    assert loaded["score_history"][0]["extra"] == "kept"
    reconciled = state.reconcile(loaded, [], {})
    assert reconciled["future_thing"] == {"nested": [1, 2, {"x": None}]}


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_save_state_sets_updated_at_and_round_trips(tmp_path: Path) -> None:
    """save_state stamps updated_at and writes a file load_state accepts as it was."""
    path = tmp_path / state.STATE_NAME
    st = state.new_state(_spec(tmp_path), NOW)
    st["in_flight"] = {"iteration": 1, "started_at": NOW, "pid": 1234}
    await state.save_state(path, st)
    assert st["updated_at"] != NOW
    # The sync calls run off the event loop, as the daemon's do (blockbuster checks).
    assert await anyio.to_thread.run_sync(state.load_state, path) == st
    assert os.listdir(tmp_path) == [state.STATE_NAME]  # no temp file left
    st["status"] = "running"
    await anyio.to_thread.run_sync(fsio.atomic_write_bytes, path, state.encode_state(st))
    assert await anyio.to_thread.run_sync(state.load_state, path) == st


def test_new_state_has_every_schema_field(tmp_path: Path) -> None:
    """A fresh state has the seed's fields, the daemon's extras, status idle, and loads back."""
    spec = _spec(tmp_path, max_iterations=7, max_cost_usd=12.5, cooldown_minutes=0.5)
    st = state.new_state(spec, NOW)
    seed_fields = {
        "schema_version", "target", "started_at", "iterations_completed", "max_iterations",
        "total_cost_usd", "max_cost_usd", "current_scores", "score_history", "plateau_counter",
        "plateau_window", "status", "last_failure_trace", "consecutive_errors",
        "max_consecutive_errors", "cooldown_minutes", "next_run_at",
    }  # fmt: skip
    extras = {
        "in_flight", "best_weighted_score", "last_decision", "next_iteration", "updated_at",
        "best_iteration", "estimated_cost_usd", "best_copy_iteration", "content_hash",
    }  # fmt: skip
    controls = {"paused", "extra_iterations", "extra_cost_usd"}  # `autoloopd ctl`
    assert set(st) == seed_fields | extras | controls
    assert (st["paused"], st["extra_iterations"], st["extra_cost_usd"]) == (False, 0, 0.0)
    assert st["status"] == "idle"
    assert st["schema_version"] == "1.0"
    assert (st["max_iterations"], st["max_cost_usd"], st["cooldown_minutes"]) == (7, 12.5, 0.5)
    assert st["target"] == str(spec.path)
    assert st["next_iteration"] == 1
    path = tmp_path / state.STATE_NAME
    fsio.atomic_write_bytes(path, state.encode_state(st))
    assert state.load_state(path) == st


def test_apply_limits_copies_limits_from_spec(tmp_path: Path) -> None:
    """apply_limits returns a copy with the spec's limits; the input is not changed."""
    st = state.new_state(_spec(tmp_path), NOW)
    spec = _spec(
        tmp_path,
        max_iterations=9,
        max_cost_usd=3.0,
        plateau_window=5,
        max_consecutive_errors=1,
        cooldown_minutes=2.0,
    )
    updated = state.apply_limits(st, spec)
    assert updated["max_iterations"] == 9
    assert updated["max_cost_usd"] == 3.0
    assert updated["plateau_window"] == 5
    assert updated["max_consecutive_errors"] == 1
    assert updated["cooldown_minutes"] == 2.0
    assert st["max_iterations"] == 5


# --- reconcile --------------------------------------------------------------------------


def _mixed_log() -> list[LogEntry]:
    return [
        _entry(1, weighted_score=0.5, scores={"a": 0.5}, cost_usd=0.15),
        _entry(2, "failed", cost_usd=0.07, error="exit 1"),
        _entry(3, weighted_score=0.7, decision="reject", scores={"a": 0.7}, cost_usd=0.2),
        _entry(4, "interrupted", cost_usd=0.03),
        _entry(5, weighted_score=0.6, decision="keep", cost_usd=0.1),  # no scores
        _entry(6, "failed", cost_usd=0.01),
        _entry(7, "interrupted", cost_usd=0.02),
        _entry(8, "failed", cost_usd=0.04),
    ]


def test_reconcile_counts_from_a_mixed_log(tmp_path: Path) -> None:
    """Completed, failed and interrupted runs give the right counters and history."""
    entries = _mixed_log()
    st = state.new_state(_spec(tmp_path), NOW)
    st["status"] = "cooldown"
    st["last_failure_trace"] = "trace"
    result = state.reconcile(st, entries, {})

    assert result["iterations_completed"] == 3
    assert math.isclose(result["total_cost_usd"], sum(e.cost_usd for e in entries), abs_tol=1e-9)
    assert [h["iteration"] for h in result["score_history"]] == [1, 3, 5]
    assert result["score_history"][1] == {
        "iteration": 3,
        "weighted_score": 0.7,
        "decision": "reject",
        "scores": {"a": 0.7},
        "timestamp": "end-3",
    }
    assert result["current_scores"] == {"a": 0.7}  # entry 5 had no scores
    assert result["best_weighted_score"] == 0.7
    assert result["last_decision"] == "keep"
    assert result["consecutive_errors"] == 2  # 6 and 8; 7 (interrupted) neither counts nor resets
    assert result["plateau_counter"] == 1  # 0.6 did not beat 0.7
    assert result["next_iteration"] == 9
    # Not derivable from the log: kept.
    assert result["status"] == "cooldown"
    assert result["last_failure_trace"] == "trace"
    # Pure: the input is unchanged.
    assert st["iterations_completed"] == 0


def test_reconcile_empty_log(tmp_path: Path) -> None:
    """No log yet: zero counters and next_iteration 1."""
    result = state.reconcile(state.new_state(_spec(tmp_path), NOW), [], {})
    assert result["iterations_completed"] == 0
    assert result["total_cost_usd"] == 0.0
    assert result["score_history"] == []
    assert result["best_weighted_score"] is None
    assert result["last_decision"] is None
    assert result["next_iteration"] == 1


def test_reconcile_total_cost_is_the_exact_sum() -> None:
    """total_cost_usd equals the sum of logged costs within 1e-9, over many small floats."""
    entries = [_entry(i, cost_usd=0.1 + i * 1e-7) for i in range(1, 1001)]
    result = state.reconcile({}, entries, {})
    assert abs(result["total_cost_usd"] - math.fsum(e.cost_usd for e in entries)) <= 1e-9
    assert Progress.from_entries(entries, {}).total_cost_usd == result["total_cost_usd"]


def test_reconcile_bounds_score_history() -> None:
    """score_history keeps only the newest SCORE_HISTORY_LIMIT completed entries."""
    n = SCORE_HISTORY_LIMIT + 50
    entries = [_entry(i, weighted_score=i / (2 * n)) for i in range(1, n + 1)]
    result = state.reconcile({}, entries, {})
    history = result["score_history"]
    assert len(history) == SCORE_HISTORY_LIMIT
    assert history[0]["iteration"] == 51
    assert history[-1]["iteration"] == n
    assert result["iterations_completed"] == n


def test_reconcile_plateau_counter_and_weights() -> None:
    """The plateau counter skips unscored runs; unlogged scores are weighted with `weights`."""
    entries = [
        _entry(1, weighted_score=0.8),
        _entry(2, weighted_score=None, scores={}),  # no score: neither counts nor resets
        _entry(3, weighted_score=0.79),
        _entry(4, weighted_score=None, scores={"a": 1.0, "b": 0.4}),
    ]
    # Weighted: (2*1.0 + 0.4) / 3 = 0.8: equal to the best, so it does not beat it.
    result = state.reconcile({}, entries, {"a": 2.0, "b": 1.0})
    assert result["plateau_counter"] == 2
    assert result["score_history"][3]["weighted_score"] == pytest.approx(0.8)
    assert result["plateau_counter"] == stops.plateau_counter([0.8, 0.79, 0.8])
    # With a minimum improvement of 0.05, 0.84 does not count as beating 0.8 either.
    entries.append(_entry(5, weighted_score=0.84))
    assert state.reconcile({}, entries, {"a": 2.0}, min_improvement=0.05)["plateau_counter"] == 3
    assert state.reconcile({}, entries, {"a": 2.0})["plateau_counter"] == 0


def test_reconcile_brings_a_lagging_state_up_to_its_log(tmp_path: Path) -> None:
    """A crash between log append and state save: the state catches up with the log."""
    root = tmp_path / "state"
    artifacts.ensure_layout(root)
    log = artifacts.log_path(root)
    entries = [_entry(1, weighted_score=0.5, cost_usd=0.25), _entry(2, weighted_score=0.6)]
    lagging = state.reconcile(state.new_state(_spec(tmp_path), NOW), entries[:1], {})
    lagging["in_flight"] = {"iteration": 2, "started_at": "start-2", "pid": 99999}
    lagging["status"] = "running"
    fsio.atomic_write_bytes(state.state_path(root), state.encode_state(lagging))
    log.write_bytes(b"".join((json.dumps(e.to_json()) + "\n").encode() for e in entries))

    loaded = state.load_state(state.state_path(root))
    assert loaded is not None
    assert loaded["iterations_completed"] == 1
    read, torn = artifacts.read_log(log)
    assert torn == 0
    caught_up = state.reconcile(loaded, read, {})

    assert caught_up["iterations_completed"] == 2
    assert caught_up["total_cost_usd"] == pytest.approx(0.35, abs=1e-9)
    assert caught_up["next_iteration"] == 3
    assert caught_up["in_flight"] is None  # iteration 2 is in the log: no longer in flight
    assert caught_up["status"] == "running"  # the caller decides the status


def test_reconcile_keeps_in_flight_not_yet_logged() -> None:
    """An in-flight iteration the log does not hold yet stays for the caller to recover."""
    in_flight = {"iteration": 3, "started_at": "s", "pid": 12}
    result = state.reconcile({"in_flight": in_flight}, [_entry(1), _entry(2)], {})
    assert result["in_flight"] == in_flight


def test_loop_view_from_log() -> None:
    """The stop conditions' view: completed count, total cost of all runs, scores and
    keep/reject/neutral of completed runs."""
    view = Progress.from_entries(_mixed_log(), {}).view()
    assert view.iterations_completed == 3
    assert view.total_cost_usd == pytest.approx(0.62, abs=1e-9)
    assert list(view.scores) == [0.5, 0.7, 0.6]
    assert list(view.decisions) == ["keep", "reject", "keep"]
    empty = Progress.from_entries([], {}).view()
    assert (empty.iterations_completed, empty.total_cost_usd, list(empty.scores)) == (0, 0.0, [])


def test_seed_entries_keep_a_logless_state() -> None:
    """A seed state with no log turns into log entries that reproduce its count and cost."""
    seed = {
        "iterations_completed": 3,
        "total_cost_usd": 1.0,
        "score_history": [
            {"iteration": 2, "weighted_score": 0.6, "decision": "keep", "scores": {"a": 0.6},
             "timestamp": "t2"},
            {"iteration": 3, "weighted_score": 0.7, "decision": "reject", "scores": {"a": 0.7},
             "timestamp": "t3"},
        ],
    }  # fmt: skip
    entries = state.seed_entries(seed)
    assert [e.iteration for e in entries] == [1, 2, 3]
    result = state.reconcile(seed, entries, {})
    assert result["iterations_completed"] == 3
    assert abs(result["total_cost_usd"] - 1.0) <= 1e-9
    assert result["last_decision"] == "reject"
    assert result["current_scores"] == {"a": 0.7}
    assert state.seed_entries({"iterations_completed": 0, "total_cost_usd": 0.0}) == []
    only_cost = state.seed_entries({"total_cost_usd": 0.5})
    assert [(e.status, e.cost_usd) for e in only_cost] == [("failed", 0.5)]


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_seed_entries_round_trip_through_the_log(tmp_path: Path) -> None:
    """Migrated entries are valid log lines: appended, read back, reconciled."""
    path = tmp_path / artifacts.LOG_NAME
    seed = {"iterations_completed": 2, "total_cost_usd": 0.3, "score_history": []}
    for e in state.seed_entries(seed):
        await artifacts.append_log(path, e)
    entries, torn = await anyio.to_thread.run_sync(artifacts.read_log, path)
    assert torn == 0
    assert state.reconcile(seed, entries, {})["iterations_completed"] == 2


# --- crash injection --------------------------------------------------------------------

_WRITER = """
import sys
from pathlib import Path
from autoloop_daemon.storage.files import artifacts
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.lock import StateLock
from autoloop_daemon.models import LogEntry
from tests.helpers import state_json as state

root = Path(sys.argv[1])
lock = StateLock(root)
lock.acquire()
artifacts.ensure_layout(root)
fsio.remove_stale_tmp(root)
log = artifacts.log_path(root)
entries, _ = artifacts.read_log(log)
st = state.reconcile(state.load_state(state.state_path(root)) or {}, entries, {})
fsio.atomic_write_bytes(state.state_path(root), state.encode_state(st))
print("ready", flush=True)
while True:
    n = len(entries) + 1
    status = ("completed", "failed", "interrupted")[n % 3]
    entry = LogEntry(iteration=n, started_at="s", finished_at="f", status=status,
                     decision="keep" if status == "completed" else None,
                     weighted_score=(n % 7) / 10 if status == "completed" else None,
                     cost_usd=0.01 * (n % 5), duration_seconds=1.0,
                     scores={"a": (n % 7) / 10}, error="x" * (n % 300))
    fsio.append_record(log, fsio.dumps_json_line(entry.to_json()))
    entries.append(entry)
    st = state.reconcile(st, entries, {})
    fsio.atomic_write_bytes(state.state_path(root), state.encode_state(st))
"""


@pytest.mark.crash
def test_sigkill_at_random_instants_keeps_the_invariants(tmp_path: Path) -> None:
    """A writer SIGKILLed at random instants leaves a parseable state at most one run behind.

    After every kill: the state file parses, the log reads (cutting at most a torn tail),
    and the state equals the log's reconciliation or lags it by exactly the last run.
    """
    import random

    rng = random.Random(1234)
    root = tmp_path / "state"
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.005, 0.08))  # the kill instant, not a wait
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

        loaded = state.load_state(state.state_path(root))
        assert loaded is not None
        entries, torn = artifacts.read_log(artifacts.log_path(root))
        assert torn >= 0
        reconciled = state.reconcile(loaded, entries, {})
        done = loaded["iterations_completed"]
        cost = loaded["total_cost_usd"]
        behind = state.reconcile(loaded, entries[:-1], {}) if entries else reconciled
        assert (done, cost) in {
            (reconciled["iterations_completed"], reconciled["total_cost_usd"]),
            (behind["iterations_completed"], behind["total_cost_usd"]),
        }
        assert loaded["next_iteration"] in (len(entries) + 1, len(entries))
    assert len(entries) > 8, "the writer should have made progress between kills"


def test_operator_controls_round_trip_and_default_for_older_files(tmp_path: Path) -> None:
    """`paused`, `extra_iterations` and `extra_cost_usd` are written and read back; a file
    without them (an older one) loads with the defaults (not paused, no extension)."""
    path = tmp_path / state.STATE_NAME
    path.write_text(_VALID)
    loaded = state.load_state(path)
    assert loaded is not None
    assert (loaded["paused"], loaded["extra_iterations"], loaded["extra_cost_usd"]) == (
        False, 0, 0.0,
    )  # fmt: skip
    typed = TargetState.from_json(loaded)
    typed.paused, typed.extra_iterations, typed.extra_cost_usd = True, 3, 1.5
    data = typed.to_json()
    assert (data["paused"], data["extra_iterations"], data["extra_cost_usd"]) == (True, 3, 1.5)
    assert TargetState.from_json(data).paused is True
