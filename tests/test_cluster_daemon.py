"""The daemon in cluster mode: real `autoloopd` hosts on one real PostgreSQL database share
the targets and one budget; `--check` probes the database; a host never claims a target it
may not run. (The chaos tests, with kills and freezes, are in test_cluster_chaos.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_TEMPFAIL
from tests.helpers.cluster import fresh_database
from tests.helpers.cluster_lab import ClusterLab
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    """A cluster lab on a fresh database with the schema."""
    for dsn in fresh_database():
        cluster = ClusterLab(tmp_path, dsn)
        yield cluster
        cluster.stop_all()


def _dry(lab: ClusterLab, name: str, **keys: object) -> dict[str, object]:
    return {"name": name, "path": str(lab.skill(name)), "dry_run": True, **keys}


DEFAULTS = {
    "simulated_seconds": 0.25, "cooldown_minutes": 0, "plateau_window": 0,
    "oscillation_window": 0, "max_iterations": 8,
}  # fmt: skip


def test_two_hosts_share_the_targets_and_one_exact_budget(lab: ClusterLab) -> None:
    """Two hosts, six targets: every target completes its iterations exactly once between
    them, both hosts run some (the later one gets its fair share handed over), the budget's
    spending is the sum of the recorded costs exactly, nothing stays reserved, and both
    hosts exit 0 once every target is finished everywhere."""
    lab.write([_dry(lab, n) for n in "abcdef"], defaults=DEFAULTS, budget={"max_cost_usd": 100})
    lab.init()
    first = lab.start("h1")
    first.wait_event("daemon_ready", timeout=30)
    second = lab.start("h2")
    assert first.wait(timeout=90) == EXIT_OK
    assert second.wait(timeout=90) == EXIT_OK
    rows = lab.sql("SELECT target, count(*), max(iteration) FROM iterations GROUP BY target")
    assert sorted(rows) == [(n, 8, 8) for n in "abcdef"]
    hosts = {h for (h,) in lab.sql("SELECT DISTINCT host FROM iterations")}
    assert hosts == {"h1", "h2"}
    ((spent, reserved, logged),) = lab.sql(
        "SELECT spent_usd, reserved_usd, (SELECT sum(cost_usd) FROM iterations) FROM budgets"
    )
    assert spent == logged and reserved == Decimal(0)
    assert lab.sql("SELECT count(*) FROM reservations WHERE state = 'open'") == [(0,)]
    finished = lab.sql("SELECT DISTINCT finished_status FROM targets")
    assert finished == [("stopped_max_iter",)]


def test_the_cap_holds_for_the_cluster_and_stops_every_host(lab: ClusterLab) -> None:
    """A $3 cap shared by two hosts: nothing starts unless it fits under the cap with
    everything reserved, so spending passes the cap by at most what runs cost beyond their
    reservations (simulated runs report their cost at the end: no live meter cuts them);
    every target ends `stopped_budget`."""
    lab.write(
        [_dry(lab, n) for n in "abcd"],
        defaults={**DEFAULTS, "max_iterations": 50},
        budget={"max_cost_usd": 3},
    )
    lab.init()
    hosts = [lab.start("h1"), lab.start("h2")]
    assert [h.wait(timeout=120) for h in hosts] == [EXIT_OK, EXIT_OK]
    ((spent, cap, logged, beyond),) = lab.sql(
        """SELECT spent_usd, cap_usd, (SELECT sum(cost_usd) FROM iterations),
                  (SELECT sum(greatest(0, charged_usd - amount_usd)) FROM reservations)
           FROM budgets"""
    )
    assert spent == logged and cap == Decimal(3)
    assert spent <= cap + beyond, f"spent {spent} > cap {cap} + {beyond} beyond reservations"
    assert {s for (s,) in lab.sql("SELECT finished_status FROM targets")} == {"stopped_budget"}


def test_a_pinned_target_and_a_missing_directory_are_never_claimed(lab: ClusterLab) -> None:
    """`hosts = ["h2"]` runs only on h2; a target whose directory h1 cannot see (here: it
    does not exist until h2 starts) is not claimed by h1, and h1 waits (stays up) while it
    is not finished."""
    pinned = _dry(lab, "pinned", hosts=["h2"])
    unseen = {"name": "unseen", "path": str(lab.skills / "unseen"), "dry_run": True}
    lab.write([_dry(lab, "free"), pinned, unseen], defaults={**DEFAULTS, "max_iterations": 3})
    lab.init()
    first = lab.start("h1")
    wait_for(lambda: lab.sql("SELECT 1 FROM iterations WHERE target = 'free' AND iteration = 3"),
             timeout=60, what="h1 finishing the free target")  # fmt: skip
    assert first.running()  # two targets are still unfinished: it waits for them
    assert lab.sql("SELECT count(*) FROM iterations WHERE target <> 'free'") == [(0,)]
    lab.skill("unseen")
    second = lab.start("h2")
    assert first.wait(timeout=60) == EXIT_OK and second.wait(timeout=60) == EXIT_OK
    by_host = lab.sql("SELECT target, array_agg(DISTINCT host) FROM iterations GROUP BY 1")
    assert dict(by_host)["pinned"] == ["h2"]
    assert sorted(dict(by_host)) == ["free", "pinned", "unseen"]


def test_check_probes_the_database(lab: ClusterLab, tmp_path: Path) -> None:
    """`--check` says the schema is missing (78, naming cluster.dsn), then passes after
    `db init`; an unreachable database fails the daemon at once with exit 75, one line."""
    lab.write([_dry(lab, "a")])
    missing = run_autoloopd(["--config", str(lab.config), "--check"])
    assert missing.returncode == EXIT_CONFIG
    assert "cluster.dsn: the database has no autoloopd schema" in missing.stderr
    lab.init()
    assert run_autoloopd(["--config", str(lab.config), "--check"]).returncode == EXIT_OK
    lab.dsn = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    lab.write([_dry(lab, "a")])
    down = run_autoloopd(["--config", str(lab.config)])
    assert down.returncode == EXIT_TEMPFAIL
    assert down.stderr.count("\n") == 1 and "cannot connect to the cluster database" in down.stderr


def test_budget_windows_are_refused_in_cluster_mode(tmp_path: Path) -> None:
    """One line naming budget.window, exit 78, before any connection is tried."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n[budget]\nwindow = "daily"\nmax_cost_usd = 5\n'
        '[cluster]\ndsn = "postgresql://localhost/x"\n'
        '[[targets]]\nname = "a"\npath = "a"\ndry_run = true\n'
    )
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == EXIT_CONFIG
    assert "budget.window: budget windows are not supported in cluster mode" in done.stderr
    assert not (tmp_path / "state").exists()
