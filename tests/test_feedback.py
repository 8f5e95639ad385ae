"""runs/feedback.py: the 30-day filter of a session-feedback store and the discovery of the
sources the real orchestrator would find by itself, on real files (FIFOs, links, huge and
hostile stores included)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autoloop_daemon.runs.feedback import FEEDBACK_STORE, discover_feedback, recent_lines

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _line(**fields: object) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (_line(timestamp=(NOW - timedelta(days=30)).isoformat()), True),  # the boundary
        (_line(timestamp=(NOW - timedelta(days=30, seconds=1)).isoformat()), False),
        (_line(timestamp="2026-12-01T08:00:00Z"), True),  # Z suffix
        (_line(timestamp="2026-12-01T08:00:00"), True),  # naive: UTC
        (_line(timestamp="2026-12-01T08:00:00+09:00"), True),
        (_line(timestamp="2025-01-01T00:00:00+00:00"), False),
        (_line(timestamp=""), True),  # no timestamp: kept, as the orchestrator does
        (_line(note="undated"), True),
        (_line(timestamp="someday"), True),  # unparsable: compared as text ("s" > "2")
        (_line(timestamp="1999"), False),
        (_line(timestamp=12345), False),  # not a string
        (_line(timestamp=None), False),
        ('["a", "list"]', False),
        ("not json", False),
        ('{"timestamp": NaN}', False),
        ("[" * 100_000 + "]" * 100_000, False),  # nested beyond the parser
    ],
)
def test_the_30_day_filter(line: str, kept: bool) -> None:
    """Each line is kept or dropped as the orchestrator's filter would, and never raises."""
    assert recent_lines([line], NOW) == ([line] if kept else [])


def test_blank_lines_are_skipped_and_lines_stripped() -> None:
    """Blank lines disappear; a kept line loses its surrounding whitespace."""
    assert recent_lines(["", "  ", ' {"a": 1} \n'], NOW) == ['{"a": 1}']


def _store(home: Path, name: str = "feedback.jsonl") -> Path:
    store = home / FEEDBACK_STORE / name
    store.parent.mkdir(parents=True, exist_ok=True)
    return store


def test_discovery_order_and_each_source_once(tmp_path: Path) -> None:
    """Both stores' recent copies (in the state root, the raw stores untouched), the memory
    files sorted, then .feedback, learnings and memory as directories, each once."""
    home, target, root = tmp_path / "home", tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    root.mkdir()
    raw = _store(home)
    raw.write_text(_line(timestamp="2026-12-01T00:00:00Z") + "\n" + _line(timestamp="2020") + "\n")
    _store(home, "muse-feedback.jsonl").write_text(_line(note="undated") + "\n")
    before = raw.read_bytes()
    (target / ".improvement-memory").mkdir()
    for name in ("b.json", "a.json", "c.txt"):
        (target / ".improvement-memory" / name).write_text("{}")
    for name in ("memory", ".feedback", "learnings"):
        (target / name).mkdir()
    found = discover_feedback(target, root, home, NOW)
    assert found == [
        str(root / "feedback" / "feedback-recent.jsonl"),
        str(root / "feedback" / "muse-feedback-recent.jsonl"),
        str(target / ".improvement-memory" / "a.json"),
        str(target / ".improvement-memory" / "b.json"),
        str(target / ".feedback"),
        str(target / "learnings"),
        str(target / "memory"),
    ]
    assert Path(found[0]).read_text() == _line(timestamp="2026-12-01T00:00:00Z") + "\n"
    assert raw.read_bytes() == before
    assert oct(Path(found[0]).stat().st_mode & 0o777) == "0o640"
    assert not list((root / "feedback").glob(".*.tmp"))


def test_a_store_without_recent_lines_passes_nothing_and_drops_an_old_copy(
    tmp_path: Path,
) -> None:
    """Once no line is recent any more, no copy is passed and the earlier copy is gone."""
    home, target, root = tmp_path / "home", tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    root.mkdir()
    raw = _store(home)
    raw.write_text(_line(timestamp="2026-12-01T00:00:00Z") + "\n")
    assert len(discover_feedback(target, root, home, NOW)) == 1
    later = NOW + timedelta(days=60)
    assert discover_feedback(target, root, home, later) == []
    assert not (root / "feedback" / "feedback-recent.jsonl").exists()


def test_a_fifo_store_is_skipped_without_blocking_and_a_link_is_followed(tmp_path: Path) -> None:
    """A FIFO as the store is named in a warning and skipped (never opened for a blocking
    read); a store that is a symbolic link (dotfiles) is read through the link."""
    home, target, root = tmp_path / "home", tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    root.mkdir()
    os.mkfifo(_store(home))
    assert discover_feedback(target, root, home, NOW) == []
    real = tmp_path / "dotfiles.jsonl"
    real.write_text(_line(note="kept") + "\n")
    _store(home, "muse-feedback.jsonl").symlink_to(real)
    assert discover_feedback(target, root, home, NOW) == [
        str(root / "feedback" / "muse-feedback-recent.jsonl")
    ]
    loop = _store(home)
    loop.unlink()
    loop.symlink_to(loop)  # a link loop is skipped too
    assert len(discover_feedback(target, root, home, NOW)) == 1


def test_an_unwritable_copy_is_skipped_not_fatal(tmp_path: Path) -> None:
    """`<state_root>/feedback` planted as a file or a link: the store is skipped with a
    warning, nothing is written through the link, the other sources still come."""
    home, target, root = tmp_path / "home", tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    root.mkdir()
    (target / "memory").mkdir()
    _store(home).write_text(_line(note="x") + "\n")
    (root / "feedback").write_text("a file")
    assert discover_feedback(target, root, home, NOW) == [str(target / "memory")]
    (root / "feedback").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "feedback").symlink_to(elsewhere)
    assert discover_feedback(target, root, home, NOW) == [str(target / "memory")]
    assert list(elsewhere.iterdir()) == []


def test_a_large_store_is_streamed(tmp_path: Path) -> None:
    """200,000 lines (half of them old) are filtered line by line into the copy."""
    home, target, root = tmp_path / "home", tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    root.mkdir()
    recent, old = _line(timestamp="2026-12-01T00:00:00Z"), _line(timestamp="2020-01-01")
    _store(home).write_text((recent + "\n" + old + "\n") * 100_000)
    [copy] = discover_feedback(target, root, home, NOW)
    assert Path(copy).read_text() == (recent + "\n") * 100_000
