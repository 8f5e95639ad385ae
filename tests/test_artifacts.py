"""The iteration log (torn tails cut, corruption refused), handoffs and the state root layout."""

from __future__ import annotations

import json
from pathlib import Path

import anyio.to_thread
import pytest

from autoloop_daemon.exceptions import StateCorruptError
from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy import handoff
from autoloop_daemon.storage.files import artifacts


def _entry(iteration: int, **kw: object) -> LogEntry:
    fields: dict[str, object] = {
        "iteration": iteration,
        "started_at": f"2025-01-01T00:0{iteration % 10}:00+00:00",
        "finished_at": f"2025-01-01T00:0{iteration % 10}:30+00:00",
        "status": "completed",
        "decision": "keep",
        "weighted_score": 0.5 + iteration / 100,
        "cost_usd": 0.1,
        "duration_seconds": 30.0,
    }
    fields.update(kw)
    return LogEntry(**fields)  # type: ignore[arg-type]


def _line(entry: LogEntry) -> bytes:
    return (json.dumps(entry.to_json(), separators=(",", ":")) + "\n").encode()


def _write_log(path: Path, *parts: bytes) -> bytes:
    data = b"".join(parts)
    path.write_bytes(data)
    return data


def test_paths_and_layout(tmp_path: Path) -> None:
    """ensure_layout creates the state root with runs/, handoffs/ and learner/."""
    root = tmp_path / "deep" / "state"
    artifacts.ensure_layout(root)
    artifacts.ensure_layout(root)  # idempotent
    for sub in ("runs", "handoffs", "learner"):
        assert (root / sub).is_dir()
    assert artifacts.log_path(root) == root / "iteration_log.jsonl"
    assert artifacts.run_log_path(root, 3) == root / "runs" / "iteration-3.log"
    assert artifacts.handoff_path(root, 3) == root / "handoffs" / "iteration-3.md"
    assert artifacts.learner_path(root, 3) == root / "learner" / "iteration-3.json"


def test_read_log_missing_and_empty(tmp_path: Path) -> None:
    """A missing or empty log has no entries and nothing torn."""
    assert artifacts.read_log(tmp_path / "nope.jsonl") == ([], 0)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert artifacts.read_log(tmp_path / "empty.jsonl") == ([], 0)


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_append_then_read_round_trip(tmp_path: Path) -> None:
    """Entries appended with append_log read back equal, with every status."""
    path = tmp_path / artifacts.LOG_NAME
    entries = [
        _entry(1, scores={"accuracy": 0.7}, candidate_id="c1", artifact_path="/a"),
        _entry(2, status="failed", decision=None, weighted_score=None, exit_code=2, error="boom"),
        _entry(3, status="interrupted", decision=None, weighted_score=None),
    ]
    for e in entries:
        await artifacts.append_log(path, e)
    # Read back off the event loop, as the daemon does (blockbuster checks).
    assert await anyio.to_thread.run_sync(artifacts.read_log, path) == (entries, 0)


def test_torn_tail_without_newline_is_truncated(tmp_path: Path) -> None:
    """A last line with no newline (even a complete-looking one) is cut and counted."""
    path = tmp_path / artifacts.LOG_NAME
    good = _line(_entry(1)) + _line(_entry(2))
    tail = _line(_entry(3)).rstrip(b"\n")
    _write_log(path, good, tail)

    entries, torn = artifacts.read_log(path)

    assert [e.iteration for e in entries] == [1, 2]
    assert torn == len(tail)
    assert path.read_bytes() == good


def test_torn_tail_half_json(tmp_path: Path) -> None:
    """Half a JSON record at the end (the write was cut) is cut off."""
    path = tmp_path / artifacts.LOG_NAME
    good = _line(_entry(1))
    half = _line(_entry(2))[:25]
    _write_log(path, good, half)
    assert artifacts.read_log(path) == ([_entry(1)], 25)
    assert path.read_bytes() == good
    assert artifacts.read_log(path) == ([_entry(1)], 0)  # repaired: nothing more to cut


def test_torn_tail_only_line(tmp_path: Path) -> None:
    """A log whose only line is torn becomes empty."""
    path = tmp_path / artifacts.LOG_NAME
    _write_log(path, b'{"iteration": 1, "sta')
    assert artifacts.read_log(path) == ([], 21)
    assert path.read_bytes() == b""


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00\x00\x00\n", b"not json at all\n", b'{"iteration": 2}\n', b"\xff\xfe\n", b"\n"],
)
def test_garbage_last_line_with_newline_is_torn_tail(tmp_path: Path, garbage: bytes) -> None:
    """A last line that does not parse as an entry is a torn tail even with its newline."""
    path = tmp_path / artifacts.LOG_NAME
    good = _line(_entry(1))
    _write_log(path, good, garbage)
    assert artifacts.read_log(path) == ([_entry(1)], len(garbage))
    assert path.read_bytes() == good


def test_read_without_repair_leaves_torn_tail(tmp_path: Path) -> None:
    """repair=False (a reader that does not own the root) reports the tail, touches nothing."""
    path = tmp_path / artifacts.LOG_NAME
    data = _write_log(path, _line(_entry(1)), b'{"itera')
    assert artifacts.read_log(path, repair=False) == ([_entry(1)], 7)
    assert path.read_bytes() == data


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b"{not json}\n", "not valid JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"iteration": 2, "started_at": "x"}\n', "missing field"),
        (b"\n", "empty line"),
        (b"\xff\n", "not UTF-8"),
    ],
)
def test_corrupt_middle_line_raises_and_touches_nothing(
    tmp_path: Path, bad: bytes, problem: str
) -> None:
    """A bad line followed by good ones is corruption: file:line named, file unchanged."""
    path = tmp_path / artifacts.LOG_NAME
    data = _write_log(path, _line(_entry(1)), bad, _line(_entry(2)), b'{"torn')
    with pytest.raises(StateCorruptError) as info:
        artifacts.read_log(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert problem in str(info.value)
    assert path.read_bytes() == data


def test_duplicate_iteration_raises(tmp_path: Path) -> None:
    """The same iteration twice is corruption, even on the last line."""
    path = tmp_path / artifacts.LOG_NAME
    data = _write_log(path, _line(_entry(1)), _line(_entry(2)), _line(_entry(2)))
    with pytest.raises(StateCorruptError, match=r":3: iteration 2 appears twice"):
        artifacts.read_log(path)
    assert path.read_bytes() == data


@pytest.mark.parametrize("numbers", [[2], [1, 3], [1, 2, 4, 3]])
def test_iterations_not_one_to_n_raise(tmp_path: Path, numbers: list[int]) -> None:
    """Iteration numbers must run 1..n in order; a gap or a swap is corruption."""
    path = tmp_path / artifacts.LOG_NAME
    data = _write_log(path, *(_line(_entry(n)) for n in numbers))
    with pytest.raises(StateCorruptError, match="out of order"):
        artifacts.read_log(path)
    assert path.read_bytes() == data


# --- handoffs ---------------------------------------------------------------------------


def _sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("## ")]


def test_render_handoff_keep_with_deltas() -> None:
    """A kept candidate: decision listed, nothing rejected, before → after with signed deltas."""
    text = handoff.render_handoff(
        iteration=4,
        decision="keep",
        candidate_id="cand-01-skill",
        artifact_path="/state/receipts/gate-1.json",
        before={"accuracy": 0.62, "coverage": 0.9, "style": 0.85},
        after={"accuracy": 0.71, "coverage": 0.85, "clarity": 0.5},
    )
    assert text.startswith("# Iteration 4 handoff\n")
    assert _sections(text) == ["## Decided", "## Rejected", "## Scores", "## Remaining"]
    decided = text.split("## Decided\n")[1].split("\n\n")[0]
    assert "- Decision: keep" in decided
    assert "- Candidate: cand-01-skill" in decided
    assert "- Artifact: /state/receipts/gate-1.json" in decided
    assert text.split("## Rejected\n")[1].startswith("none\n")
    assert "- accuracy: 0.62 → 0.71 (+0.09)" in text
    assert "- coverage: 0.90 → 0.85 (-0.05)" in text
    assert "- clarity: n/a → 0.50 (n/a)" in text
    assert "- style: 0.85 → n/a (n/a)" in text
    remaining = text.split("## Remaining\n")[1]
    assert "accuracy" in remaining
    assert "clarity" in remaining
    assert "coverage" not in remaining
    assert "style" not in remaining  # no score after: judged by its score before (0.85)
    assert text.endswith("\n")


@pytest.mark.parametrize("decision", ["reject", "revert"])
def test_render_handoff_rejected_candidate(decision: str) -> None:
    """A rejected or reverted candidate appears under Rejected."""
    text = handoff.render_handoff(
        iteration=2,
        decision=decision,
        candidate_id="cand-07",
        artifact_path=None,
        before={"accuracy": 0.9},
        after={"accuracy": 0.9},
    )
    assert f"## Rejected\n- cand-07 ({decision})\n" in text
    assert "- accuracy: 0.90 → 0.90 (+0.00)" in text
    assert "## Remaining\nnone\n" in text
    assert "- Artifact: none" in text


def test_render_handoff_failed_iteration_and_threshold() -> None:
    """No decision: shows "none" and the error on one line; threshold is configurable."""
    text = handoff.render_handoff(
        iteration=1,
        decision=None,
        candidate_id=None,
        artifact_path=None,
        before={},
        after={},
        error="Pipeline error:\n  boom",
    )
    assert "- Decision: none" in text
    assert "- Error: Pipeline error: boom" in text
    assert "## Scores\nnone\n" in text
    assert "## Remaining\nnone\n" in text
    strict = handoff.render_handoff(
        iteration=1,
        decision="pending",
        candidate_id="c",
        artifact_path=None,
        before={"a": 0.9},
        after={"a": 0.93},
        threshold=0.95,
    )
    assert "## Remaining\n- a: 0.93 (below 0.95)\n" in strict
    assert "## Rejected\nnone\n" in strict


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_write_handoff_creates_directory(tmp_path: Path) -> None:
    """write_handoff creates handoffs/ and writes the file atomically, returning its path."""
    path = await artifacts.write_handoff(tmp_path / "root", 5, "# Iteration 5 handoff\n")
    assert path == tmp_path / "root" / "handoffs" / "iteration-5.md"
    assert path.read_text(encoding="utf-8") == "# Iteration 5 handoff\n"
    assert [p.name for p in path.parent.iterdir()] == ["iteration-5.md"]
