"""Reviews in cluster mode: a verdict given on any host is recorded in the database and the
host running the target applies it; the holder publishes its targets' queues so every host
lists the whole cluster's (real `autoloopd` hosts on a real PostgreSQL, the fake
orchestrator's `hold` behaviour writing upstream-format held-back candidates)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.clock import now_utc
from autoloop_daemon.exit_codes import EXIT_OK
from autoloop_daemon.storage.files.review_files import read_verdicts
from autoloop_daemon.storage.postgres import leases, review_pending, review_verdicts
from autoloop_daemon.storage.postgres.db import Database
from autoloop_daemon.storage.postgres.leases import Lease
from tests.helpers.cluster import sql
from tests.helpers.cluster_lab import ClusterLab, cluster_lab
from tests.helpers.control import api
from tests.helpers.fakes import orchestrator_argv
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    """A cluster lab on a fresh database with the schema."""
    yield from cluster_lab(tmp_path)


def held_back_skill(lab: ClusterLab, hosts: list[str] | None = None) -> dict[str, Any]:
    """The target `skill`, whose orchestrator holds every candidate back for review, cooling
    10 hours after each run (pinned to `hosts` when given)."""
    skill: dict[str, Any] = {
        "name": "skill", "path": str(lab.skill("skill")),
        "orchestrator": orchestrator_argv("hold"), "mode": "continuous",
        "cooldown_minutes": 600, "max_iterations": 5,
    }  # fmt: skip
    if hosts is not None:
        skill["hosts"] = hosts
    return skill


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
    lab.write([held_back_skill(lab, hosts=["h2"])])
    lab.init()
    h1 = lab.start("h1")
    h2 = lab.start("h2")
    h1.wait_event("daemon_ready", timeout=30)  # its socket answers (asked below)
    h2.wait_event("iteration_finished", target="skill", timeout=60)
    h2_sock = lab.state_dir("h2") / "autoloopd.sock"
    code, payload = api(h2_sock, "GET", "/api/reviews")
    assert code == 200, payload
    ((entry,),) = [q["pending"] for q in payload["targets"]]
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1"))}
    h1_sock = lab.state_dir("h1") / "autoloopd.sock"
    wait_for(  # h1's rounds have seen h2 claim it (the fake's run can beat h1's first round)
        lambda: [t["host"] for t in api(h1_sock, "GET", "/api/status")[1]["targets"]] == ["h2"],
        timeout=30, what="h1 seeing h2 hold the target",
    )  # fmt: skip

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
    assert code != EXIT_OK and "no candidate is awaiting review" in said, said

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


def _queue(sock: Path, target: str) -> dict[str, Any]:
    code, payload = api(sock, "GET", "/api/reviews")
    assert code == 200, payload
    (queue,) = [q for q in payload["targets"] if q["target"] == target]
    return dict(queue)


def test_every_host_lists_the_whole_clusters_queue_and_decides_without_an_id(
    lab: ClusterLab,
) -> None:
    """h1 runs `skill` (pinned) and holds candidates back; h1 publishes its queue, so h2's
    /api/reviews lists them (host h1, held) with the fields h1 shows. With two pending,
    `ctl review skill approve` on h2 is refused naming both ids; one named by its candidate
    id is approved, and then the only one left is rejected without an id. Each leaves h2's
    listing at once, h1 applies both, and the entries leave h1's listing and the
    published queue. The `ctl run-now` sent to h1 ran exactly one iteration."""
    lab.write([held_back_skill(lab, hosts=["h1"])])
    lab.init()
    h1 = lab.start("h1")
    lab.start("h2").wait_event("daemon_ready", timeout=30)
    h1.wait_event("iteration_finished", target="skill", timeout=60)
    h1_sock = lab.state_dir("h1") / "autoloopd.sock"
    h2_sock = lab.state_dir("h2") / "autoloopd.sock"
    h1_env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1"))}
    ran = run_autoloopd(["ctl", "--config", str(lab.config), "run-now", "skill"], env=h1_env)
    assert ran.returncode == EXIT_OK, ran.stderr
    h1.wait_event("iteration_finished", target="skill", count=2, timeout=60)
    there = wait_for(
        lambda: (q := _queue(h2_sock, "skill"))["pending"][1:] and q["held"] and q,
        timeout=30, what="h2 listing both of h1's candidates",
    )  # fmt: skip
    assert (there["host"], there["held"], there["problem"]) == ("h1", True, None)
    assert there["published_at"] is not None
    here = _queue(h1_sock, "skill")
    assert (here["host"], here["held"]) == ("h1", True)
    for seen in (here, there):  # ages move on: the rest is what h1's files say
        for entry in seen["pending"]:
            assert entry.pop("age_s") is not None
    assert there["pending"] == here["pending"]
    first, second = (e["id"] for e in here["pending"])
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h2"))}
    status = run_autoloopd(["status", "--config", str(lab.config)], env=env)
    assert "reviews: 2 candidates awaiting review (skill: 2)" in status.stdout, status.stdout

    def review(*args: str) -> tuple[int, str]:
        done = run_autoloopd(["ctl", "--config", str(lab.config), "review", *args], env=env)
        return done.returncode, done.stdout + done.stderr

    code, said = review("skill", "approve")
    assert code != EXIT_OK and "2 candidates await review" in said, said
    assert first in said and second in said and "held by h1" in said
    candidate = here["pending"][0]["candidate_id"]
    code, said = review("skill", candidate, "approve", "--note", "good")
    assert code == EXIT_OK and f"approve of {first} recorded" in said, said
    assert [e["id"] for e in _queue(h2_sock, "skill")["pending"]] == [second]
    code, said = review("skill", "reject")
    assert code == EXIT_OK and f"reject of {second} recorded" in said, said
    assert _queue(h2_sock, "skill")["pending"] == []
    wait_for(
        lambda: lab.sql("SELECT candidate_id, verdict, applied_by, error FROM review_verdicts "
                        "WHERE applied_at IS NOT NULL ORDER BY decided_at")
        == [(first, "approve", "h1", None), (second, "reject", "h1", None)],
        timeout=30, what="h1 applying both verdicts",
    )  # fmt: skip
    verdicts = read_verdicts(lab.state_dir("h1") / "skill")
    assert [(v["id"], v["verdict"]) for v in verdicts] == [(first, "approve"), (second, "reject")]
    assert _queue(h1_sock, "skill")["pending"] == []
    wait_for(
        lambda: lab.sql("SELECT count(*) FROM review_pending") == [(0,)],
        timeout=30, what="h1 publishing its emptied queue",
    )  # fmt: skip
    assert _queue(h2_sock, "skill")["pending"] == []
    # run-now on the holder ran once: the command and the round that read its flag meanwhile
    # both applied it, and only the one that cleared the flag ran it
    assert len(h1.events("iteration_finished", target="skill")) == 2


def test_a_new_holder_republishes_the_queue_when_it_claims_the_target(lab: ClusterLab) -> None:
    """h1 runs `skill` and publishes its held-back candidate; when h1 stops (its lease given
    back) h2 claims the target and replaces the published queue with its own at once, under
    its new token, so no host lists h1's entry as pending on a target h1 no longer holds."""
    lab.write([held_back_skill(lab)])
    lab.init()
    h1 = lab.start("h1")
    h1.wait_event("iteration_finished", target="skill", timeout=60)
    published = (
        "SELECT q.host, q.fencing_token, count(p.review_id) FROM review_queues q "
        "LEFT JOIN review_pending p USING (target) GROUP BY q.host, q.fencing_token"
    )
    ((host, token, _),) = wait_for(
        lambda: (rows := lab.sql(published)) and rows[0][2] == 1 and rows,
        timeout=30, what="h1 publishing its candidate",
    )  # fmt: skip
    (h1_entry,) = _queue(lab.state_dir("h1") / "autoloopd.sock", "skill")["pending"]
    assert host == "h1"
    h2 = lab.start("h2")
    h2.wait_event("daemon_ready", timeout=30)
    h1.stop(timeout=30)
    h2.wait_event("cluster_lease_claimed", target="skill", timeout=30)
    ((host, new_token, _),) = wait_for(
        lambda: (rows := lab.sql(published)) and rows[0][0] == "h2" and rows,
        timeout=30, what="h2 republishing on its claim",
    )  # fmt: skip
    assert new_token > token
    assert lab.sql("SELECT fencing_token FROM targets") == [(new_token,)]
    queue = _queue(lab.state_dir("h2") / "autoloopd.sock", "skill")
    assert (queue["host"], queue["held"]) == ("h2", True)
    assert h1_entry["id"] not in [e["id"] for e in queue["pending"]]


@pytest.mark.anyio
async def test_a_publish_is_refused_unless_made_under_the_live_lease(db: Database) -> None:
    """The holder's publish replaces the target's queue; a publish under a lease that moved
    (older token), of another host or after expiry writes nothing; a verdict not refused
    hides its entry from the listing."""
    await leases.register(db, ["t"])
    (old,) = await leases.claim(db, "h1", ["t"], 60.0)
    entry = {"id": "run-1:cand-1", "candidate_id": "cand-1", "created_at": None}
    assert await review_pending.publish(db, old, [entry], None)
    await sql(db, "UPDATE targets SET lease_expires_at = now() - interval '1 s'")
    assert not await review_pending.publish(db, old, [], None)  # expired
    (new,) = await leases.claim(db, "h2", ["t"], 60.0)
    assert new.token > old.token
    assert not await review_pending.publish(db, old, [], "stale")  # the old holder: fenced
    other_host = Lease("t", "h1", new.token, now_utc() + timedelta(seconds=60))
    assert not await review_pending.publish(db, other_host, [], None)  # not the holder
    (queue,) = (await review_pending.read(db)).values()
    assert (queue.host, queue.token, queue.problem, queue.entries) == ("h1", old.token, None,
                                                                        [entry])  # fmt: skip
    two = [entry, {**entry, "id": "run-2:cand-1"}]
    assert await review_pending.publish(db, new, two, None)
    await review_verdicts.record(db, "t", "run-1:cand-1", "approve", None, "me")
    queue = (await review_pending.read(db, ["t"]))["t"]
    assert (queue.host, [e["id"] for e in queue.entries]) == ("h2", ["run-2:cand-1"])
    await review_verdicts.mark_applied(db, "t", "run-1:cand-1", "h2", "no pending candidate")
    queue = (await review_pending.read(db, ["t"]))["t"]
    assert [e["id"] for e in queue.entries] == ["run-1:cand-1", "run-2:cand-1"]
