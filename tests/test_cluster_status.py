"""`autoloopd status` in cluster mode on a host whose daemon is not running: the cluster's
word over this host's files (no `ITER n/None`, no "interrupted by signal" for a target that
another host finished on its limits), and with the database away, the cluster's budget
said to be unknown instead of this host's local total passed off as it."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_OK
from tests.helpers.cluster_lab import ClusterLab, cluster_lab
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for

DEFAULTS = {
    "simulated_seconds": 0.4, "cooldown_minutes": 0, "plateau_window": 0,
    "oscillation_window": 0, "max_iterations": 3,
}  # fmt: skip


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    """A cluster lab on a fresh database with the schema."""
    yield from cluster_lab(tmp_path)


def test_status_of_a_stopped_host_shows_what_the_cluster_finished(lab: ClusterLab) -> None:
    """h1 runs t, is stopped by SIGTERM mid-iteration (its files: interrupted), h2 finishes
    t on its limit. `status` on h1 shows t stopped_max_iter at 3/3 with no stale reason; with
    the database unreachable it says the cluster's budget is unknown."""
    lab.write([{"name": "t", "path": str(lab.skill("t")), "dry_run": True}], defaults=DEFAULTS)
    lab.init()
    h1 = lab.start("h1")
    wait_for(lambda: lab.sql("SELECT 1 FROM iterations WHERE host = 'h1'"),
             timeout=30, what="h1 recording an iteration")  # fmt: skip
    assert h1.stop(signal.SIGTERM) == EXIT_OK
    h2 = lab.start("h2")
    assert h2.wait(timeout=60) == EXIT_OK  # finished everything, idle: exits
    assert lab.sql("SELECT finished_status FROM targets") == [("stopped_max_iter",)]
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1")),
           "AUTOLOOPD_CLUSTER__HOST_ID": "h1"}  # fmt: skip
    done = run_autoloopd(["status", "--config", str(lab.config), "--json"], env=env)
    assert done.returncode == 3, done.stderr
    (row,) = json.loads(done.stdout)["targets"]
    assert (row["status"], row["iterations_completed"]) == ("stopped_max_iter", 3)
    assert row["max_iterations"] == 3 and not row.get("reason")
    text = run_autoloopd(["status", "--config", str(lab.config)], env=env).stdout
    assert "3/3" in text and "None" not in text and "interrupted" not in text, text

    away = {**env, "AUTOLOOPD_CLUSTER__DSN": "postgresql://postgres@127.0.0.1:1/postgres"}
    down = run_autoloopd(["status", "--config", str(lab.config), "--json"], env=away)
    budget = json.loads(down.stdout)["budget"]
    assert budget["spent_usd"] is None and budget["cap_usd"] is None
    assert "unknown" in budget["unknown"]
    text = run_autoloopd(["status", "--config", str(lab.config)], env=away).stdout
    assert "budget: the cluster's budget is unknown" in text, text
    assert "did not answer" in text
