"""Progress (O(1) per entry) agrees with totals recomputed from scratch by a reference
implementation written here, and state_file.reconcile writes exactly what Progress derives."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy import stops
from autoloop_daemon.policy.progress import SCORE_HISTORY_LIMIT, Progress, entry_score
from autoloop_daemon.score_history import ScoreItem
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.state_file import encode_state
from autoloop_daemon.target_state import TargetState
from tests.helpers.state_json import reconcile


def _kind(decision: str | None) -> str:
    if decision == "keep":
        return "keep"
    return "reject" if decision in ("reject", "revert") else "neutral"


def _reference(
    entries: list[LogEntry], weights: dict[str, float], min_improvement: float
) -> dict[str, Any]:
    """Every log-derived field, recomputed from the whole log the obvious way."""
    completed = [e for e in entries if e.completed]
    scored = [(e, entry_score(e, weights)) for e in completed]
    weighted = [s for _, s in scored if s is not None]
    errors = 0
    for e in reversed(entries):
        if e.completed:
            break
        errors += e.status == "failed"
    return {
        "iterations_completed": len(completed),
        "total_cost_usd": round(math.fsum(e.cost_usd for e in entries), 9),
        "score_history": [
            {"iteration": e.iteration, "weighted_score": s, "decision": e.decision,
             "scores": dict(e.scores), "timestamp": e.finished_at}
            for e, s in scored[-SCORE_HISTORY_LIMIT:]
        ],
        "current_scores": next((dict(e.scores) for e in reversed(completed) if e.scores), {}),
        "best_weighted_score": max(weighted) if weighted else None,
        "last_decision": completed[-1].decision if completed else None,
        "consecutive_errors": errors,
        "plateau_counter": stops.plateau_counter(weighted, min_improvement),
        "next_iteration": entries[-1].iteration + 1 if entries else 1,
        "scores": weighted,
        "decisions": [_kind(e.decision) for e in completed],
    }  # fmt: skip


def _random_log(rng: random.Random, n: int) -> list[LogEntry]:
    entries = []
    for i in range(1, n + 1):
        status = rng.choices(["completed", "failed", "interrupted"], [6, 2, 1])[0]
        scored = status == "completed" and rng.random() < 0.8
        scores = {"a": round(rng.random(), 3), "b": round(rng.random(), 3)} if scored else {}
        entries.append(
            LogEntry(
                iteration=i,
                started_at="2026-01-01T00:00:00Z",
                finished_at=f"t{i}",
                status=status,  # type: ignore[arg-type]
                decision=rng.choice(["keep", "reject", "revert", "pending_promote", "odd"])
                if status == "completed"
                else None,
                weighted_score=None if not scored or rng.random() < 0.5 else round(rng.random(), 3),
                cost_usd=round(rng.random(), 4),
                duration_seconds=1.0,
                scores=scores,
            )
        )
    return entries


@pytest.mark.parametrize("seed", range(20))
def test_progress_matches_reference(seed: int) -> None:
    """For random logs, the incremental totals equal the ones recomputed from scratch, and
    reconcile (the files backend's recovery step) writes exactly those."""
    rng = random.Random(seed)
    entries = _random_log(rng, rng.choice([0, 1, 5, 40, SCORE_HISTORY_LIMIT + 30]))
    weights = {"a": 2.0}
    min_improvement = rng.choice([0.0, 0.01])
    expected = _reference(entries, weights, min_improvement)
    progress = Progress.from_entries(entries, weights, min_improvement)
    got = TargetState.from_json({}).to_json()
    typed = TargetState.from_json({})
    progress.apply_to(typed)
    got = typed.to_json()
    reconciled = reconcile({}, entries, weights, min_improvement)
    for key in (
        "iterations_completed",
        "score_history",
        "current_scores",
        "best_weighted_score",
        "last_decision",
        "consecutive_errors",
        "plateau_counter",
        "next_iteration",
    ):
        assert got[key] == expected[key], key
        assert reconciled[key] == expected[key], key
    assert got["total_cost_usd"] == pytest.approx(expected["total_cost_usd"], abs=1e-9)
    assert list(progress.view().scores) == expected["scores"]
    assert list(progress.view().decisions) == expected["decisions"]
    assert progress.view().iterations_completed == expected["iterations_completed"]


def test_history_items_are_compact_and_read_and_write_as_the_files_objects() -> None:
    """A runner's score_history items are `ScoreItem`s: equal to the file's objects both
    ways, `reported_score` present only for a keep that changed no file, the same JSON in
    the state file and the checkpoint, and a checkpoint item missing a key refused (the
    caller then rebuilds from the log)."""
    entries = _random_log(random.Random(7), SCORE_HISTORY_LIMIT + 5)
    unchanged = LogEntry(
        iteration=len(entries) + 1, started_at="s", finished_at="f", status="completed",
        decision="keep", weighted_score=None, cost_usd=0.0, duration_seconds=1.0,
        scores={"a": 0.999}, changed=False,
    )  # fmt: skip
    progress = Progress.from_entries([*entries, unchanged], {"a": 2.0}, 0.0)
    assert all(type(item) is ScoreItem for item in progress.history)
    last = progress.history[-1]
    assert last["iteration"] == last.to_json()["iteration"] == unchanged.iteration
    assert last["reported_score"] == pytest.approx(0.999)
    assert last["weighted_score"] < last["reported_score"]
    assert len(last) == 6 and list(last)[-1] == "reported_score"
    plain = progress.history[-2]
    assert "reported_score" not in plain and plain.get("reported_score") is None
    assert len(plain) == 5
    with pytest.raises(KeyError):
        plain["reported_score"]
    as_dicts = [dict(item) for item in progress.history]
    assert progress.history == as_dicts and as_dicts == progress.history
    state = TargetState.from_json({})
    progress.apply_to(state)
    written = json.loads(json.dumps(state.to_json()))["score_history"]
    assert written == as_dicts and all(type(item) is dict for item in written)
    checkpoint = json.loads(json.dumps(progress.to_json()))
    again = Progress.from_json(checkpoint, {"a": 2.0}, 0.0)
    assert again.history == progress.history
    assert all(type(item) is ScoreItem for item in again.history)
    del checkpoint["history"][-1]["timestamp"]
    with pytest.raises(KeyError):
        Progress.from_json(checkpoint, {"a": 2.0}, 0.0)
    # A state read from a file keeps plain dicts; one that holds both writes both alike.
    mixed = TargetState.from_json({"score_history": as_dicts[:2]})
    mixed.score_history = [*mixed.score_history, *progress.history[-2:]]
    assert mixed.to_json()["score_history"] == as_dicts[:2] + as_dicts[-2:]


def test_a_state_file_writes_each_history_item_as_the_text_it_was_encoded_to_once() -> None:
    """`encode_state` writes a `ScoreItem`'s kept text: the same bytes as the file's objects
    encoded as plain dicts (a state read from an older file holds dicts, unknown keys and
    all, and may hold both), and a NaN score is refused when the item is made."""
    entries = _random_log(random.Random(11), SCORE_HISTORY_LIMIT + 3)
    progress = Progress.from_entries(entries, {"a": 2.0}, 0.0)
    state = TargetState.from_json({"score_history": [{"iteration": 0, "odd": ["kept", 1]}]})
    progress.apply_to(state)
    state.score_history = [{"iteration": 0, "odd": ["kept", 1]}, *state.score_history]
    data = encode_state(state)
    as_dicts = [dict(item) for item in state.score_history]
    expected = fsio.dumps_json({**state.to_json(), "score_history": as_dicts})
    assert data == expected
    assert json.loads(data)["score_history"] == as_dicts
    assert all(item.text in data.decode() for item in progress.history)
    empty = TargetState.from_json({})
    assert b'"score_history": []' in encode_state(empty)
    with pytest.raises(ValueError):
        ScoreItem(1, 0.5, "keep", {"a": math.nan}, "2026-12-06T00:00:00Z")
