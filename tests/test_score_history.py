"""A runner's score_history held as one text (score_history.py): the same items, the same
bytes in the state file, the newest ones kept, whatever the appends."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from autoloop_daemon.json_text import LIST_ITEM_SEPARATOR
from autoloop_daemon.score_history import (
    EMPTY_HISTORY,
    ScoreHistory,
    ScoreItem,
    item_text,
)
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.state_file import encode_state, load_state
from autoloop_daemon.target_state import TargetState


def _fields(i: int, rng: random.Random) -> tuple[object, ...]:
    scores = {f"d{k}": round(rng.random(), 6) for k in range(rng.randrange(0, 4))}
    reported = round(rng.random(), 3) if rng.random() < 0.2 else None
    decision = rng.choice(["keep", "reject", None, 'ünïcode "quoted"\nline'])
    return (i, round(rng.random(), 6), decision, scores or None, f"2026-12-07T00:00:{i % 60:02d}Z",
            reported)  # fmt: skip


def _pair(fields: tuple[object, ...]) -> tuple[int, str]:
    return fields[0], item_text(*fields)  # type: ignore[arg-type, return-value]


def test_appends_keep_the_newest_items_whatever_their_sizes() -> None:
    """Appends of 0 to 60 items at a time onto histories of every length keep exactly the
    newest `limit` items, each readable as its file object, oldest first."""
    rng = random.Random(24)
    for limit in (1, 3, 50):
        history, model = EMPTY_HISTORY, []
        number = 0
        for _ in range(120):
            batch = []
            for _ in range(rng.choice([0, 1, 1, 1, 2, limit, limit + 7])):
                number += 1
                batch.append(_fields(number, rng))
            history = history.appended([_pair(f) for f in batch], limit)
            model = (model + [ScoreItem(*f).to_json() for f in batch])[-limit:]  # type: ignore[arg-type]
            assert len(history) == len(model)
            assert history.to_json() == model == [item.to_json() for item in history]
            assert history.last_iteration == (model[-1]["iteration"] if model else None)
            assert history.text == LIST_ITEM_SEPARATOR.join(json.dumps(m, ensure_ascii=False,
                   separators=(", ", ": ")) for m in model)  # fmt: skip


def test_items_read_as_the_files_objects() -> None:
    """Indexing (negative, out of range, slices) gives `ScoreItem`s equal to the file's
    objects; a history equals a list of equal mappings, either way round."""
    rng = random.Random(5)
    fields = [_fields(i, rng) for i in range(1, 8)]
    history = ScoreHistory(_pair(f) for f in fields)
    objects = [ScoreItem(*f).to_json() for f in fields]  # type: ignore[arg-type]
    assert [type(item) for item in history] == [ScoreItem] * 7
    assert history[-1]["iteration"] == 7 and history[0] == objects[0]
    assert history[2:5] == objects[2:5] and history[::-2] == objects[::-2]
    with pytest.raises(IndexError):
        history[7]
    with pytest.raises(IndexError):
        history[-8]
    assert history == objects and objects == history and history != objects[:-1]
    assert history == ScoreHistory.of(objects) and history != EMPTY_HISTORY
    assert history != "not a history"
    assert ScoreHistory.of([]) == [] and EMPTY_HISTORY.last_iteration is None
    with pytest.raises(KeyError):
        ScoreHistory.of([{"iteration": 1}])
    with pytest.raises(ValueError):
        item_text(1, float("nan"), "keep", None, "t")


def test_a_state_writes_a_history_as_its_text() -> None:
    """`encode_state` writes a runner's history text as it is: the same bytes as its items
    written as plain dicts, and `[]` when it is empty."""
    rng = random.Random(9)
    history = ScoreHistory(_pair(_fields(i, rng)) for i in range(1, 51))
    state = TargetState.from_json({"extra_key": {"nested": [1, 2]}})
    state.score_history = history
    data = encode_state(state)
    assert data == fsio.dumps_json({**state.to_json(), "score_history": history.to_json()})
    assert json.loads(data)["score_history"] == history.to_json()
    state.score_history = EMPTY_HISTORY
    assert b'"score_history": []' in encode_state(state)


def test_a_loaded_state_holds_its_history_as_text_every_key_kept(tmp_path: Path) -> None:
    """`load_state` holds a file's history as a `ScoreHistory` of the items as they are
    (unknown keys, missing ones and key order kept), which writes back the same objects; an
    item whose iteration is not an integer keeps the list. A history is never copied."""
    items = [
        {"iteration": 1, "weighted_score": 0.5, "decision": "keep", "scores": {"a": 0.5},
         "timestamp": "t1"},
        {"decision": "reject", "iteration": 2, "odd": ["kept", {"x": 1}]},
        {"iteration": 3},
        {"iteration": 10**20},  # beyond 64 bits: kept as it is
    ]  # fmt: skip
    path = tmp_path / "autoloop_state.json"
    path.write_text(json.dumps({"target": "t", "score_history": items}))
    state = load_state(path)
    assert state is not None and isinstance(state.score_history, ScoreHistory)
    assert state.score_history == items and state.score_history.last_iteration == 10**20
    assert state.score_history[-1]["iteration"] == 10**20
    assert list(state.score_history[1]) == ["decision", "iteration", "odd"]
    assert json.loads(encode_state(state))["score_history"] == items
    assert copy.deepcopy(state).score_history is state.score_history
    for odd in ({"weighted_score": 0.5}, {"iteration": None}):
        path.write_text(json.dumps({"target": "t", "score_history": [*items, odd]}))
        again = load_state(path)
        assert again is not None and type(again.score_history) is list
        assert again.score_history == [*items, odd]
