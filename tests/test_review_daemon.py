"""Human review through a real daemon (issue 23): `/api/reviews` lists what the orchestrator
held back, `autoloopd ctl review` decides it, and the verdict is durable and reaches the
target's `.feedback/` for the orchestrator's next run.

A real `autoloopd` runs the fake orchestrator's `hold` behaviour (the upstream
`pending_promote.json` shape); verdicts go over the real control socket.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_REFUSED, EXIT_USAGE
from autoloop_daemon.storage.files.review_files import pending_path, read_verdicts
from tests.helpers.control import api, ctl, raw_get
from tests.helpers.daemon import Daemon, Lab
from tests.helpers.fakes import fake
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def _start_holding(lab: Lab, *, restart: bool = False) -> Daemon:
    """A daemon whose target `skill` held back a candidate and now cools down for long; each
    review_requested alert is appended to `alerts.jsonl`."""
    table = lab.target("skill", "hold", mode="continuous", cooldown_minutes=600, max_iterations=5)
    sink = [sys.executable, fake("alert_sink.py"), str(lab.root / "alerts.jsonl")]
    lab.write([table], alerts=[{"events": ["review_requested"], "command": sink}])
    daemon = lab.start()
    daemon.wait_event("control_socket_listening")
    if restart:  # it cools down: run its next iteration now
        daemon.wait_event("daemon_ready")
        assert ctl(lab.config, "run-now", "skill").returncode == 0
    daemon.wait_event("iteration_finished", target="skill")
    return daemon


def _alerts(lab: Lab, count: int) -> list[dict[str, object]]:
    """The review alerts delivered so far, once there are `count` of them."""
    path = lab.root / "alerts.jsonl"

    def read() -> list[dict[str, object]] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines] if len(lines) >= count else None

    found: list[dict[str, object]] = wait_for(read, timeout=60, what=f"{count} alerts")
    return found


def test_a_held_back_candidate_is_listed_approved_and_fed_back(lab: Lab) -> None:
    daemon = _start_holding(lab)
    sock = lab.state_dir / "autoloopd.sock"
    try:
        code, payload = api(sock, "GET", "/api/reviews")
        assert code == 200, payload
        (queue,) = payload["targets"]
        (entry,) = queue["pending"]
        assert (queue["target"], entry["candidate_id"], entry["risk_level"]) == (
            "skill",
            "cand-01",
            "medium",
        )
        queue_file = pending_path(lab.state_root("skill")).read_bytes()
        (alert,) = _alerts(lab, 1)
        assert (alert["event"], alert["review_id"]) == ("review_requested", entry["id"])
        assert alert["message"] == "skill: candidate Tighten the prompt (cand-01) awaits review"
        gauge = 'autoloopd_reviews_pending{target="skill"} 1.0'
        wait_for(lambda: gauge in raw_get(sock, "/metrics")[1], what="the review gauge")
        status = run_autoloopd(["status", "--config", str(lab.config)])
        assert "reviews: 1 candidate awaiting review (skill: 1)" in status.stdout, status.stdout

        done = ctl(lab.config, "review", "skill", "approve", "--note", "clearer, keep it")
        assert done.returncode == 0, done.stderr
        assert f"approved {entry['id']} of skill" in done.stdout

        feedback = lab.skills / "skill" / ".feedback"
        (record,) = feedback.iterdir()
        assert record.read_text() == (
            "candidate cand-01 (Tighten the prompt (cand-01)) of run "
            f"{entry['run_id']} was approved by a reviewer: clearer, keep it\n"
        )
        (verdict,) = read_verdicts(lab.state_root("skill"))
        assert verdict["verdict"] == "approve" and verdict["id"] == entry["id"]
        assert verdict["by"].startswith(f"socket (uid {os.getuid()}")
        assert verdict["note"] == "clearer, keep it"
        assert pending_path(lab.state_root("skill")).read_bytes() == queue_file  # not rewritten
        assert api(sock, "GET", "/api/reviews")[1]["targets"][0]["pending"] == []
        status = run_autoloopd(["status", "--config", str(lab.config), "--json"])
        assert json.loads(status.stdout)["targets"][0]["pending_reviews"] == 0

        again = ctl(lab.config, "review", "skill", "reject")
        assert again.returncode == EXIT_REFUSED
        assert "no candidate is awaiting review" in again.stderr
        unknown = ctl(lab.config, "review", "nosuch", "approve")
        assert unknown.returncode == EXIT_USAGE, unknown.stderr
    finally:
        daemon.stop()


BAD_REQUESTS: list[tuple[dict[str, object], int, str]] = [
    ({"verdict": "maybe"}, 400, "verdict must be approve or reject, not 'maybe'"),
    ({"verdict": 1}, 400, "verdict must be approve or reject"),
    ({"verdict": "approve", "note": ["x"]}, 400, "must be strings"),
    ({"verdict": "approve", "note": "n" * 5000}, 400, "longer than 4000"),
    ({"verdict": "reject", "id": "cand-99"}, 409, "no pending candidate 'cand-99'"),
]


def test_bad_review_requests_are_refused_and_decide_nothing(lab: Lab) -> None:
    daemon = _start_holding(lab)
    sock = lab.state_dir / "autoloopd.sock"
    try:
        for body, status, error in BAD_REQUESTS:
            code, payload = api(sock, "POST", "/api/targets/skill/review", body)
            assert (code, payload["target"]) == (status, "skill"), (body, payload)
            assert error in payload["error"]
        code, payload = api(sock, "POST", "/api/targets/nosuch/review", {"verdict": "approve"})
        assert code == 404, payload
        assert read_verdicts(lab.state_root("skill")) == []
        assert not (lab.skills / "skill" / ".feedback").exists()
        assert json.loads(pending_path(lab.state_root("skill")).read_text())["pending"]
        _alerts(lab, 1)
    finally:
        daemon.stop()
    status = run_autoloopd(["status", "--config", str(lab.config), "--json"])  # from the files
    report = json.loads(status.stdout)
    assert (report["daemon"]["running"], report["reviews_pending"]) == (False, 1), report
    daemon = _start_holding(lab, restart=True)  # its second iteration holds back cand-02
    try:
        alerts = _alerts(lab, 2)
        assert [a["candidate_id"] for a in alerts] == ["cand-01", "cand-02"]  # no repeat
    finally:
        daemon.stop()
