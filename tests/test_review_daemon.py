"""Human review through a real daemon (issue 23): `/api/reviews` lists what the orchestrator
held back, `autoloopd ctl review` decides it, and the verdict is durable and reaches the
target's `.feedback/` for the orchestrator's next run.

A real `autoloopd` runs the fake orchestrator's `hold` behaviour (the upstream
`pending_promote.json` shape); verdicts go over the real control socket.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_REFUSED, EXIT_USAGE
from autoloop_daemon.storage.files.review_files import pending_path, read_verdicts
from tests.helpers.control import api, ctl
from tests.helpers.daemon import Daemon, Lab


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A fresh lab under tmp_path."""
    return Lab(tmp_path)


def _start_holding(lab: Lab) -> Daemon:
    """A daemon whose target `skill` held back one candidate and now cools down for long."""
    table = lab.target("skill", "hold", mode="continuous", cooldown_minutes=600, max_iterations=5)
    lab.write([table])
    daemon = lab.start()
    daemon.wait_event("control_socket_listening")
    daemon.wait_event("iteration_finished", target="skill")
    return daemon


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
    finally:
        daemon.stop()
