"""The pieces under a verdict's effect on the loop (issue 23): placing verdicts on the log,
counting them in the progress, and putting a target's files back to `best/` on real files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.models import LogEntry
from autoloop_daemon.policy.progress import Progress
from autoloop_daemon.policy.review_verdicts import match_verdicts, overrides_of, parse_verdicts
from autoloop_daemon.runs.restore_best import restore_best
from autoloop_daemon.runs.target_files import content_hash, save_best


def _entry(i: int, decision: str, score: float, candidate: str, minute: int) -> LogEntry:
    return LogEntry(
        iteration=i,
        started_at=f"2026-12-05T10:{minute:02d}:00Z",
        finished_at=f"2026-12-05T10:{minute:02d}:50Z",
        status="completed",  # type: ignore[arg-type]
        decision=decision,
        weighted_score=score,
        cost_usd=0.1,
        duration_seconds=50.0,
        candidate_id=candidate,
        changed=True,
    )


LOG = [
    _entry(1, "keep", 0.5, "cand-01", 1),
    _entry(2, "pending_promote", 0.8, "cand-01", 2),  # candidate ids repeat across runs
    _entry(3, "pending_promote", 0.7, "cand-01", 3),
    _entry(4, "reject", 0.4, "cand-02", 4),
]


def _verdict(review_id: str, candidate: str, verdict: str, created: str | None) -> dict[str, Any]:
    return {"id": review_id, "candidate_id": candidate, "verdict": verdict, "created_at": created}


def test_a_verdict_is_placed_on_the_held_run_it_was_written_during() -> None:
    records = [
        _verdict("r2:cand-01", "cand-01", "approve", "2026-12-05T10:02:30Z"),
        _verdict("r3:cand-01", "cand-01", "reject", "2026-12-05T10:03:10Z"),
        _verdict("r9:cand-02", "cand-02", "approve", "2026-12-05T10:04:10Z"),  # a reject run
        _verdict("r5:cand-05", "cand-05", "approve", None),  # its run is not logged yet
        _verdict("r2:cand-01", "cand-01", "reject", None),  # a second verdict: the first holds
        {"id": 7, "candidate_id": "x", "verdict": "approve"},
        {"id": "r8:x", "candidate_id": "x", "verdict": "maybe"},
    ]
    placed = match_verdicts(LOG, parse_verdicts(records))
    assert overrides_of(placed) == {2: "keep", 3: "reject"}
    assert placed[2].review_id == "r2:cand-01"
    # Without a time, the newest held run of that candidate not taken yet.
    undated = parse_verdicts([_verdict("a", "cand-01", "expire", None)])
    assert overrides_of(match_verdicts(LOG, undated)) == {3: "reject"}


def test_verdicts_change_best_score_plateau_and_decisions_and_refuse_old_checkpoints() -> None:
    plain = Progress.from_entries(LOG, {}, 0.0)
    assert (plain.best, plain.best_iteration) == (0.8, 2)
    assert list(plain.decisions) == ["keep", "neutral", "neutral", "reject"]
    rejected = Progress.from_entries(LOG, {}, 0.0, {2: "reject", 3: "reject"})
    # Rejected candidates improved nothing: at most the best before them.
    assert (rejected.best, rejected.best_iteration) == (0.5, 1)
    assert list(rejected.scores) == [0.5, 0.5, 0.5, 0.4]
    assert (plain.plateau_counter, rejected.plateau_counter) == (2, 3)
    assert list(rejected.decisions) == ["keep", "reject", "reject", "reject"]
    approved = Progress.from_entries(LOG, {}, 0.0, {3: "keep"})
    assert approved.history[2]["decision"] == "keep" and approved.last_decision == "reject"
    unchanged_keep = [_entry(1, "keep", 0.5, "c", 1), _entry(2, "pending_promote", 0.9, "c", 2)]
    unchanged_keep[1] = dataclasses.replace(unchanged_keep[1], changed=False)
    assert Progress.from_entries(unchanged_keep, {}, 0.0, {2: "keep"}).best == 0.9
    # A checkpoint that counts verdicts is never taken up as it is: rebuilt from the log.
    with pytest.raises(ValueError, match="verdicts"):
        Progress.from_json(rejected.to_json(), {}, 0.0)
    assert Progress.from_json(plain.to_json(), {}, 0.0).best == 0.8


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_restore_best_puts_back_files_links_and_dirs_and_leaves_git_and_feedback(
    tmp_path: Path,
) -> None:
    target, root = tmp_path / "skill", tmp_path / "skill" / ".state"
    root.mkdir(parents=True)
    _tree(target, {"SKILL.md": "v1\n", "refs/a.md": "a\n", "keep/x": "x\n"})
    os.symlink("SKILL.md", target / "link")
    (target / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(target / "run.sh", 0o755)
    save_best(target, root, 1, root)
    before = content_hash(target, root)
    # The rejected candidate: edits, a new file, a dir turned into a file, a link retargeted.
    _tree(target, {"SKILL.md": "v2\n", "new.md": "n\n", ".git/HEAD": "ref\n"})
    _tree(target, {".feedback/autoloopd-review-x.md": "rejected\n"})
    (target / "refs" / "a.md").unlink()
    (target / "refs").rmdir()
    (target / "refs").write_text("not a dir\n")
    (target / "link").unlink()
    os.symlink("/etc/passwd", target / "link")
    os.mkfifo(target / "pipe")
    (root / "autoloop_state.json").write_text("{}")  # the state root inside: left alone

    changed = restore_best(target, root, root)
    assert changed >= 5
    assert content_hash(target, root) == before
    assert os.readlink(target / "link") == "SKILL.md"
    assert not (target / "new.md").exists() and not (target / "pipe").exists()
    assert (target / ".git" / "HEAD").read_text() == "ref\n"
    assert (target / ".feedback" / "autoloopd-review-x.md").exists()
    assert (root / "autoloop_state.json").exists()
    assert (target / "run.sh").stat().st_mode & 0o777 == 0o755  # its own mode kept
    assert restore_best(target, root, root) == 0  # nothing left to do
    assert not list(target.rglob("*.autoloopd-restore"))


def test_restore_best_without_a_best_version_says_so(tmp_path: Path) -> None:
    target, root = tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    root.mkdir()
    with pytest.raises(FileNotFoundError, match="no best version"):
        restore_best(target, root, None)
    (root / "best").symlink_to("/etc")  # not a copy of this state root's
    with pytest.raises(FileNotFoundError):
        restore_best(target, root, None)
