"""A reviewer's verdict changes the loop's arithmetic (issue 23), through a real daemon.

The fake orchestrator's `hold` behaviour keeps at iteration 1 (score 0.5) and holds back a
candidate at iteration 2 (score 0.8, its edit in the target, an upstream-shaped
`pending_promote.json` entry); `review_pause` holds the target until a verdict comes over the
real control socket. Approving counts it as a keep (best version copied to `best/`);
rejecting counts it as a reject (best score back to 0.5) and, with
`restore_best_on_reject`, puts the target's files back to `best/`, once, across restarts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.clock import now_iso, now_utc
from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import SharedBudget
from autoloop_daemon.engine.events import EventBus
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.storage.files import recovery as recovery_module
from autoloop_daemon.storage.files import store as store_module
from autoloop_daemon.storage.files.review_files import read_queue, read_verdicts, record_verdict
from autoloop_daemon.storage.files.store import FileTargetStore
from tests.helpers.audit import read_state
from tests.helpers.control import ctl
from tests.helpers.daemon import Daemon, Lab
from tests.helpers.fakes import fake, orchestrator_cmd
from tests.helpers.logs import read_log
from tests.helpers.process import run_autoloopd
from tests.helpers.review_queue import upstream_entry, write_pending
from tests.helpers.wait import wait_for

HOLD = ("--decisions", "keep,pending_promote,keep", "--scores", "0.5,0.8,0.6", "--hold-edits")


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def _start(lab: Lab, alerts: list[dict[str, Any]] | None = None, **keys: Any) -> Daemon:
    """A daemon whose target `skill` kept once, then held back a candidate and now waits for
    its review (`review_pause`)."""
    table = lab.target(
        "skill", "hold", *HOLD, mode="continuous", cooldown_minutes=0, max_iterations=3,
        review_pause=True, **keys,
    )  # fmt: skip
    lab.write([table], alerts=alerts or [])
    daemon = lab.start()
    daemon.wait_event("review_hold", target="skill", timeout=60)
    return daemon


def _state(lab: Lab) -> dict[str, Any]:
    return read_state(lab.state_root("skill"))


def _held(lab: Lab) -> dict[str, Any]:
    """The state once the target waits for the review, with the held candidate logged."""

    def ready() -> dict[str, Any] | None:
        state = _state(lab)
        return state if state["status"] == "waiting_review" else None

    state: dict[str, Any] = wait_for(ready, timeout=60, what="status waiting_review")
    assert [e["decision"] for e in read_log(lab.state_root("skill"))] == ["keep", "pending_promote"]
    return state


def _report(lab: Lab, form: str) -> str:
    """`autoloopd report --config ... --format FORM`, as text."""
    out = lab.root / f"report.{form}"
    args = ["report", "--config", str(lab.config), "--output", str(out), "--format", form]
    done = run_autoloopd(args)
    assert done.returncode == 0, done.stderr
    return out.read_text()


def _finished(lab: Lab, daemon: Daemon) -> dict[str, Any]:
    daemon.wait_event("target_stopped", target="skill", timeout=60)
    daemon.stop()
    return _state(lab)


def test_an_approved_candidate_counts_as_a_keep_and_becomes_the_best_version(lab: Lab) -> None:
    daemon = _start(lab)
    try:
        state = _held(lab)
        assert (state["best_weighted_score"], state["best_copy_iteration"]) == (0.8, 1)
        assert state["last_decision"] == "pending_promote"
        # It holds: no third iteration starts while the candidate awaits review.
        assert len(read_log(lab.state_root("skill"))) == 2
        pending = _report(lab, "md")
        assert (
            "### Reviews" in pending and "- pending: generic-skill-skill-0002:cand-02 (" in pending
        )
        assert "risk medium, waiting 0.0 h" in pending
        done = ctl(lab.config, "review", "skill", "approve", "--note", "good")
        assert done.returncode == 0, done.stderr
        daemon.wait_event("review_applied", target="skill", verdict="approve")
        state = _finished(lab, daemon)
    finally:
        if daemon.running():
            daemon.stop()
    history = {h["iteration"]: h for h in state["score_history"]}
    assert history[2]["decision"] == "keep"  # counts as a keep from then on
    assert (state["best_weighted_score"], state["best_iteration"]) == (0.8, 2)
    assert state["best_copy_iteration"] == 2
    best = lab.state_root("skill") / "best" / "fake-kept.txt"
    assert best.read_text() == "iteration 1\niteration 2\n"
    assert state["status"] == "stopped_max_iter" and state["iterations_completed"] == 3
    # The log keeps what the orchestrator said.
    assert read_log(lab.state_root("skill"))[1]["decision"] == "pending_promote"
    md, html = _report(lab, "md"), _report(lab, "html")
    line = next(x for x in md.splitlines() if x.startswith("- approved: "))
    assert "cand-02 (Tighten the prompt (cand-02)) (iteration 2) by socket (uid" in line
    assert line.endswith(": good") and "pending:" not in md
    assert '<li class="review review-approved">approved: generic-skill-skill-0002:cand-02' in html


def test_a_rejected_candidate_counts_as_a_reject_and_restores_the_best_version(
    lab: Lab,
) -> None:
    daemon = _start(lab, restore_best_on_reject=True)
    target = lab.skills / "skill"
    try:
        _held(lab)
        assert (target / "fake-kept.txt").read_text() == "iteration 1\niteration 2\n"
        done = ctl(lab.config, "review", "skill", "reject", "--note", "too long")
        assert done.returncode == 0, done.stderr
        (restored,) = daemon.wait_event("best_version_restored", target="skill")
        assert restored["paths_changed"] == 1
        state = _finished(lab, daemon)
    finally:
        if daemon.running():
            daemon.stop()
    history = {h["iteration"]: h for h in state["score_history"]}
    assert history[2]["decision"] == "reject"
    assert history[2]["weighted_score"] == 0.5  # improved nothing: at most the best before
    assert (state["best_weighted_score"], state["best_iteration"]) == (0.6, 3)
    # Iteration 3 started from the best version: the rejected edit is gone.
    assert (target / "fake-kept.txt").read_text() == "iteration 1\niteration 3\n"
    assert (target / ".feedback").is_dir()  # the reviewer's record was left alone
    assert len(state["reviews_applied"]) == 1

    # A restart counts the verdict again (the arithmetic) but does not restore again.
    (target / "operator-note.txt").write_text("mine\n")
    again = lab.start()
    again.wait_event("target_not_continuing", target="skill", timeout=60)
    again.stop()
    assert (target / "operator-note.txt").read_text() == "mine\n"
    assert again.count("best_version_restored") == 0
    state = _state(lab)
    assert {h["iteration"]: h["decision"] for h in state["score_history"]}[2] == "reject"
    assert state["best_weighted_score"] == 0.6


def test_a_reload_sets_review_expire_hours_and_the_held_candidate_is_declined(lab: Lab) -> None:
    sink = [sys.executable, fake("alert_sink.py"), str(lab.root / "alerts.jsonl")]
    rules = [{"events": ["review_expired"], "command": sink}]
    daemon = _start(lab, alerts=rules)  # alert rules need a restart; the review keys do not
    try:
        _held(lab)
        time.sleep(1.2)  # the entry must be older than the 1.08 s (0.0003 h) set below
        table = lab.target(
            "skill", "hold", *HOLD, mode="continuous", cooldown_minutes=0, max_iterations=3,
            review_pause=True, review_expire_hours=0.0003,
        )  # fmt: skip
        lab.write([table], alerts=rules)
        assert ctl(lab.config, "reload").returncode == 0
        (expired,) = daemon.wait_event("review_expired", target="skill", timeout=60)
        daemon.wait_event("review_applied", target="skill", verdict="expire", timeout=60)
        state = _finished(lab, daemon)
    finally:
        if daemon.running():
            daemon.stop()
    (verdict,) = read_verdicts(lab.state_root("skill"))
    assert (verdict["verdict"], verdict["by"]) == (
        "expire",
        "autoloopd (review_expire_hours = 0.0003)",
    )
    assert verdict["id"] == expired["review_id"]
    (record,) = (lab.skills / "skill" / ".feedback").iterdir()
    assert "was declined: nobody reviewed it in time." in record.read_text()
    alerts = lab.root / "alerts.jsonl"
    wait_for(lambda: alerts.exists() and alerts.read_text().endswith("\n"), what="the alert")
    (alert,) = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert alert["event"] == "review_expired" and alert["review_id"] == verdict["id"]
    assert "not reviewed within 0.0003 h" in alert["message"]
    history = {h["iteration"]: h["decision"] for h in state["score_history"]}
    assert history == {1: "keep", 2: "reject", 3: "keep"}
    assert state["best_weighted_score"] == 0.6


def test_the_one_target_form_counts_a_verdict_and_restores_with_restore_best(
    tmp_path: Path,
) -> None:
    """`autoloopd --target ... --restore-best`: a verdict given meanwhile (here written to the
    review log the way the daemon writes it) is counted and acted on at the next start."""
    target, root = tmp_path / "skill", tmp_path / "state"
    target.mkdir()
    cmd = orchestrator_cmd("hold", *HOLD)
    base = ["--target", str(target), "--state-root", str(root), "--mode", "continuous",
            "--cooldown-minutes", "0", "--orchestrator-cmd", cmd]  # fmt: skip
    first = run_autoloopd([*base, "--max-iterations", "2"], timeout=60)
    assert first.returncode == 0, first.stderr
    (entry,) = read_queue(root, now_utc()).entries
    record_verdict(root, entry, {"verdict": "reject", "by": "test", "at": now_iso(), "note": None})
    assert (target / "fake-kept.txt").read_text() == "iteration 1\niteration 2\n"

    args = [*base, "--max-iterations", "3", "--restore-best", "--log-format", "json"]
    second = run_autoloopd([*args, "--log-level", "info"], timeout=60)
    assert second.returncode == 0, second.stderr
    assert '"event": "best_version_restored"' in second.stderr
    assert (target / "fake-kept.txt").read_text() == "iteration 1\niteration 3\n"
    state = read_state(root)
    assert [h["decision"] for h in state["score_history"]] == ["keep", "reject", "keep"]
    assert state["best_weighted_score"] == 0.6


def test_a_review_log_that_is_a_fifo_is_reported_and_the_target_runs_on(lab: Lab) -> None:
    root = lab.state_root("skill")
    root.mkdir(parents=True)
    os.mkfifo(root / "autoloop_reviews.jsonl")  # nobody writes it: a read would block
    table = lab.target("skill", "keep", mode="continuous", cooldown_minutes=0, max_iterations=2)
    lab.write([table])
    daemon = lab.start()
    try:
        (warning,) = daemon.wait_event("review_log_unreadable", target="skill", timeout=60)
        assert "FIFO" in warning["error"] or "regular file" in warning["error"]
        state = _finished(lab, daemon)
    finally:
        if daemon.running():
            daemon.stop()
    assert (state["status"], state["iterations_completed"]) == ("stopped_max_iter", 2)
    assert daemon.count("review_log_unreadable") == 1  # said once, not at every turn


@pytest.mark.anyio
async def test_the_review_log_read_at_open_serves_once_unless_a_verdict_came_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up load reads the review log with the state (no worker hand-off per target
    afterwards); a verdict this process writes before the runner asks makes it read again."""
    reads: list[Path] = []

    def counted(root: Path) -> list[dict[str, Any]]:
        reads.append(root)
        return read_verdicts(root)

    monkeypatch.setattr(store_module, "read_verdicts", counted)
    root = tmp_path / "state"
    spec = TargetSpec(name="t", path=tmp_path, state_root=root, dry_run=True)
    write_pending(root, json.dumps({"pending": [upstream_entry("c1")]}))
    (entry,) = read_queue(root, now_utc()).entries

    store = FileTargetStore(spec)
    await store.open()
    assert await store.read_verdicts() == [] and reads == []  # what the load read
    assert await store.read_verdicts() == [] and reads == [root]  # once only
    await store.close()

    store = FileTargetStore(spec)
    await store.open()
    verdict = {"verdict": "approve", "by": "test", "at": now_iso(), "note": None}
    record_verdict(root, entry, verdict)  # as `ctl review` while the target was loading
    (seen,) = await store.read_verdicts()
    assert (seen["id"], seen["verdict"]) == (entry.review_id, "approve")
    assert reads == [root, root]  # read again: a verdict was written since the load
    await store.close()


@pytest.mark.anyio
@pytest.mark.no_blocking
async def test_the_loop_reads_the_review_log_at_start_and_after_a_notice_not_every_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every verdict is written by the daemon, which tells the runner (`wake`; `mark` for an
    expiry): the review log is read when the runner starts and after such a notice, never
    before every turn (issue 24: it was a worker hand-off per turn)."""
    reads: list[Path] = []

    def counted(root: Path) -> list[dict[str, Any]]:
        reads.append(root)
        return read_verdicts(root)

    # At start it is read with the state and the log, in the load's one blocking call.
    monkeypatch.setattr(recovery_module, "read_verdicts", counted)
    monkeypatch.setattr(store_module, "read_verdicts", counted)
    (tmp_path / "skill").mkdir()
    spec = TargetSpec(
        name="reviewed", path=tmp_path / "skill", state_root=tmp_path / "state",
        mode="continuous", cooldown_minutes=0, max_iterations=3, plateau_window=100,
        oscillation_window=0, dry_run=True, simulated_seconds=0.0,
    )  # fmt: skip
    runner = TargetRunner(
        spec, store=FileTargetStore(spec), budget=SharedBudget(100.0),
        slots=RankedSlots(1, fair_turns=True), events=EventBus(),
    )  # fmt: skip
    await runner.prepare()
    assert len(reads) == 1
    await runner.reviews.apply()
    assert len(reads) == 1  # nothing written since: nothing to read
    runner.reviews.mark()
    await runner.reviews.apply()
    assert len(reads) == 2
    assert await runner.run() == "stopped_max_iter"
    assert runner.state.iterations_completed == 3
    assert len(reads) == 2  # three turns, no read
