"""Reviews in cluster mode: a verdict given on any host is recorded in the database and the
host running the target applies it (real `autoloopd` hosts on a real PostgreSQL, the fake
orchestrator's `hold` behaviour writing upstream-format held-back candidates)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_OK
from autoloop_daemon.storage.files.review_files import read_verdicts
from tests.helpers.cluster_lab import ClusterLab, cluster_lab
from tests.helpers.control import api
from tests.helpers.fakes import orchestrator_argv
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    """A cluster lab on a fresh database with the schema."""
    yield from cluster_lab(tmp_path)


def test_a_verdict_given_on_one_host_is_applied_by_the_host_running_the_target(
    lab: ClusterLab,
) -> None:
    """h2 runs `skill` (pinned) and holds a candidate back; `ctl review` sent to h1 records
    the approval in the database and h2 applies it within a round: its review log has the
    verdict with who, when and note, the feedback record is written, the queue is empty and
    its loop counts the candidate as a keep.
    A second verdict on the same candidate is refused naming the first; a verdict on an
    unknown candidate is recorded and then refused by h2 with the reason, not lost. A
    verdict given on h2 itself is decided there and recorded in the database as applied."""
    skill = {
        "name": "skill", "path": str(lab.skill("skill")), "hosts": ["h2"],
        "orchestrator": orchestrator_argv("hold"), "mode": "continuous",
        "cooldown_minutes": 600, "max_iterations": 5,
    }  # fmt: skip
    lab.write([skill])
    lab.init()
    lab.start("h1")
    h2 = lab.start("h2")
    h2.wait_event("iteration_finished", target="skill", timeout=60)
    h2_sock = lab.state_dir("h2") / "autoloopd.sock"
    code, payload = api(h2_sock, "GET", "/api/reviews")
    assert code == 200, payload
    ((entry,),) = [q["pending"] for q in payload["targets"]]
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1"))}

    def review(*args: str) -> tuple[int, str]:
        done = run_autoloopd(["ctl", "--config", str(lab.config), "review", *args], env=env)
        return done.returncode, done.stdout + done.stderr

    code, said = review("skill", entry["id"], "approve", "--note", "clearer, keep it")
    assert code == EXIT_OK, said
    assert "recorded; the host running it (h2) applies it within one round" in said
    wait_for(
        lambda: lab.sql("SELECT applied_by, error FROM review_verdicts WHERE applied_at IS NOT "
                        "NULL AND candidate_id = %s", (entry["id"],)) == [("h2", None)],
        timeout=30, what="h2 applying the verdict",
    )  # fmt: skip
    (verdict,) = read_verdicts(lab.state_dir("h2") / "skill")
    assert (verdict["verdict"], verdict["id"], verdict["note"]) == (
        "approve", entry["id"], "clearer, keep it",
    )  # fmt: skip
    assert verdict["by"].startswith(f"socket (uid {os.getuid()}")
    ((decided_at,),) = lab.sql("SELECT decided_at FROM review_verdicts")
    assert verdict["at"].startswith(decided_at.strftime("%Y-%m-%dT%H:%M:%S"))
    (record,) = (lab.skill("skill") / ".feedback").iterdir()
    assert "was approved by a reviewer: clearer, keep it" in record.read_text()
    assert api(h2_sock, "GET", "/api/reviews")[1]["targets"][0]["pending"] == []
    (counted,) = h2.wait_event("review_applied", target="skill", timeout=30)
    assert (counted["review_id"], counted["counts_as"]) == (entry["id"], "keep")

    code, said = review("skill", entry["id"], "reject")
    assert code != EXIT_OK and "already has a verdict: approve by socket" in said, said
    assert "(applied by h2)" in said
    code, said = review("skill", "cand-99", "reject")
    assert code == EXIT_OK, said
    refused = wait_for(
        lambda: lab.sql("SELECT applied_by, error FROM review_verdicts WHERE applied_at IS NOT "
                        "NULL AND candidate_id = 'cand-99'"),
        timeout=30, what="h2 refusing the unknown candidate",
    )  # fmt: skip
    assert refused[0][0] == "h2" and "cand-99" in refused[0][1]
    code, said = review("skill", "approve")
    assert code != EXIT_OK and "name the candidate's id" in said, said

    h2_env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h2"))}
    ran = run_autoloopd(["ctl", "--config", str(lab.config), "run-now", "skill"], env=h2_env)
    assert ran.returncode == EXIT_OK, ran.stderr
    h2.wait_event("iteration_finished", target="skill", count=2, timeout=60)
    here = run_autoloopd(
        ["ctl", "--config", str(lab.config), "review", "skill", "reject"], env=h2_env
    )  # decided on the host running it: in its files at once, and in the database as applied
    assert here.returncode == EXIT_OK and "rejected" in here.stdout, here.stderr
    rows = lab.sql("SELECT verdict, applied_by FROM review_verdicts WHERE candidate_id NOT IN "
                   "(%s, 'cand-99')", (entry["id"],))  # fmt: skip
    assert rows == [("reject", "h2")]
