"""Human review of held-back candidates (issue 23): the orchestrator's queue made visible.

Pinned down: the upstream `pending_promote.json` shape is read into entries with stable ids;
whatever is wrong with the file (not JSON, NaN, a FIFO or a link in its place, too big, the
wrong shape) is that target's problem, said with the file's path, never an exception; the
review log subtracts decided entries without the orchestrator's file being rewritten; and
`autoloopd review list` shows what a real fake orchestrator held back, without a daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from autoloop_daemon.policy.review_queue import (
    feedback_text,
    find_entry,
    parse_pending,
    still_pending,
)
from autoloop_daemon.storage.files import review_files as rf
from tests.helpers.fakes import fake_argv
from tests.helpers.review_queue import upstream_entry, write_pending

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _hold(state_root: Path, target: Path, iteration: int) -> None:
    """Run the fake orchestrator's `hold` behaviour once, as a real subprocess."""
    argv = fake_argv("hold", "--target", str(target), "--state-root", str(state_root))
    argv += ["--iteration", str(iteration)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    assert '"decision": "pending_promote"' in done.stdout


def _review_list(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "autoloop_daemon", "review", "list", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_upstream_entries_are_read_with_their_review_fields_and_age() -> None:
    payload = {"pending": [upstream_entry("c1"), upstream_entry("c2", run="run-2")]}
    entries = parse_pending(payload, NOW)
    assert [e.review_id for e in entries] == ["run-1:c1", "run-2:c2"]
    first = entries[0]
    assert (first.risk_level, first.title, first.request_id) == (
        "high",
        "Rewrite the prompt",
        "review-c1",
    )
    assert first.age_s == 3600.0
    assert first.to_json()["category"] == "prompt"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [([], "not a JSON object"), ({"pending": {"a": 1}}, '"pending" is not a list')],
)
def test_a_payload_of_the_wrong_shape_is_refused_with_a_reason(
    payload: object, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_pending(payload, NOW)


def test_unnamed_foreign_and_repeated_entries_are_skipped_and_fields_bounded() -> None:
    huge = "x" * 100_000
    payload = {
        "pending": [
            "not an object",
            {"category": "prompt"},  # neither run nor candidate: cannot be decided
            upstream_entry("c1", created_at="yesterday", category=huge),
            upstream_entry("c1"),  # the same id again
            {"candidate_id": ["nested", {"deep": 1}], "run_id": 7, "human_review_request": "x"},
        ]
    }
    entries = parse_pending(payload, NOW)
    assert [e.review_id for e in entries] == ["run-1:c1", "7:"]
    assert entries[0].age_s is None and entries[0].category is not None
    assert len(entries[0].category) == 2000


def test_find_entry_names_one_candidate_or_says_which_ids_to_use() -> None:
    entries = parse_pending({"pending": [upstream_entry("c1"), upstream_entry("c2")]}, NOW)
    assert find_entry(entries, "c2").review_id == "run-1:c2"
    assert find_entry(entries, "review-c1").review_id == "run-1:c1"
    with pytest.raises(ValueError, match="2 candidates await review; name one of: run-1:c1"):
        find_entry(entries, None)
    with pytest.raises(ValueError, match="no pending candidate 'c9'"):
        find_entry(entries, "c9")
    assert find_entry(entries[:1], None).candidate_id == "c1"
    assert still_pending(entries, {"run-1:c1"}) == entries[1:]


def test_feedback_text_says_what_the_reviewer_decided() -> None:
    entry = parse_pending({"pending": [upstream_entry("c1")]}, NOW)[0]
    assert feedback_text(entry, "approve", "good change") == (
        "candidate c1 (Rewrite the prompt) of run run-1 was approved by a reviewer: good change\n"
    )
    assert "was rejected by a reviewer." in feedback_text(entry, "reject", None)
    assert "nobody reviewed it in time" in feedback_text(entry, "expire", None)


def test_no_pending_file_is_an_empty_queue(tmp_path: Path) -> None:
    assert rf.read_queue(tmp_path, NOW) == rf.ReviewQueue()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"pending": [', "Expecting"),
        (b'{"pending": [{"candidate_id": "a", "run_id": NaN}]}', "non-finite number NaN"),
        (b"\xff\xfe", "codec"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_hostile_json_is_that_targets_problem_naming_the_file(
    tmp_path: Path, data: bytes, why: str
) -> None:
    path = write_pending(tmp_path, data)
    queue = rf.read_queue(tmp_path, NOW)
    assert queue.entries == []
    assert queue.problem is not None and queue.problem.startswith(f"{path}: ")
    assert why in queue.problem


def test_a_fifo_link_or_huge_file_in_place_is_refused_without_blocking(tmp_path: Path) -> None:
    path = rf.pending_path(tmp_path)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # opening it for reading would block forever
    assert "is a FIFO, not a regular file" in (rf.read_queue(tmp_path, NOW).problem or "")
    path.unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"pending": [upstream_entry("c1")]}))
    path.symlink_to(elsewhere)
    assert "is a symbolic link" in (rf.read_queue(tmp_path, NOW).problem or "")
    path.unlink()
    with path.open("wb") as f:
        f.truncate(rf.PENDING_LIMIT + 1)
    assert f"larger than {rf.PENDING_LIMIT} bytes" in (rf.read_queue(tmp_path, NOW).problem or "")


def test_the_review_log_subtracts_verdicts_and_never_touches_the_queue_file(
    tmp_path: Path,
) -> None:
    data = json.dumps({"pending": [upstream_entry("c1"), upstream_entry("c2")]}).encode()
    path = write_pending(tmp_path, data)
    entry = rf.read_queue(tmp_path, NOW).entries[0]
    rf.record_verdict(tmp_path, entry, {"verdict": "approve", "by": "uid 1000", "note": None})
    with rf.review_log_path(tmp_path).open("ab") as log:
        log.write(b'{"id": "torn')  # a crash mid-append leaves at most a torn last line
    queue = rf.read_queue(tmp_path, NOW)
    assert [e.candidate_id for e in queue.entries] == ["c2"] and queue.problem is None
    assert path.read_bytes() == data
    assert rf.read_verdicts(tmp_path)[0]["by"] == "uid 1000"


def test_feedback_goes_to_the_targets_feedback_dir_under_a_safe_name(tmp_path: Path) -> None:
    entry = parse_pending({"pending": [upstream_entry("../../etc/passwd", run="r/1")]}, NOW)[0]
    written = rf.write_feedback(tmp_path, entry, "text\n")
    assert written.parent == tmp_path / ".feedback"
    assert written.name == "autoloopd-review-r_1_.._.._etc_passwd.md"
    assert written.read_text() == "text\n"


def test_review_list_shows_what_a_real_orchestrator_held_back(tmp_path: Path) -> None:
    target, state_root, other = tmp_path / "skill", tmp_path / "state", tmp_path / "other"
    target.mkdir()
    for iteration in (1, 2):
        _hold(state_root, target, iteration)
    write_pending(other, b"{not json")
    done = _review_list("--state-root", str(state_root), "--state-root", str(other), "--json")
    assert done.returncode == 1, done.stderr  # one target's queue is unreadable
    queues = {q["target"]: q for q in json.loads(done.stdout)["targets"]}
    ids = [e["candidate_id"] for e in queues["state"]["pending"]]
    assert ids == ["cand-01", "cand-02"]
    assert queues["state"]["pending"][0]["risk_level"] == "medium"
    assert "pending_promote.json" in queues["other"]["problem"]
    text = _review_list("--state-root", str(state_root))
    assert text.returncode == 0, text.stderr
    assert "2 candidates await review" in text.stdout
    assert "review-cand-01" not in text.stdout and "cand-02" in text.stdout
