"""The daemon in cluster mode: real `autoloopd` hosts on one real PostgreSQL database share
the targets and one budget; `--check` probes the database; a host never claims a target it
may not run. (The chaos tests, with kills and freezes, are in test_cluster_chaos.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from autoloop_daemon.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_TEMPFAIL
from tests.helpers.cluster_lab import ClusterLab, cluster_lab
from tests.helpers.control import raw_get
from tests.helpers.process import run_autoloopd
from tests.helpers.wait import wait_for


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    """A cluster lab on a fresh database with the schema."""
    yield from cluster_lab(tmp_path)


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


def test_a_calendar_window_needs_a_time_zone_in_cluster_mode(tmp_path: Path) -> None:
    """Hosts in different zones would disagree on when a day starts: one line naming
    budget.window_timezone, exit 78, before any connection is tried."""
    (tmp_path / "a").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n[budget]\nwindow = "daily"\nmax_cost_usd = 5\n'
        '[cluster]\ndsn = "postgresql://localhost/x"\n'
        '[[targets]]\nname = "a"\npath = "a"\ndry_run = true\n'
    )
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == EXIT_CONFIG
    assert "budget.window_timezone: required in cluster mode" in done.stderr
    assert not (tmp_path / "state").exists()


def test_a_budget_window_holds_for_the_cluster_and_the_next_one_resumes(
    lab: ClusterLab,
) -> None:
    """`window = "3s"` with $1 per window on two hosts: the spending of each window (runs
    are charged to the window they were reserved in) passes its cap by at most what runs
    cost beyond their reservations, targets wait for the next window (`waiting_budget`)
    instead of stopping, and more than one window is used before every target is done."""
    lab.write(
        [_dry(lab, n) for n in "abc"],
        defaults={**DEFAULTS, "max_iterations": 6, "simulated_seconds": 0.1},
        budget={"max_cost_usd": 1.0, "window": "3s", "lifetime_max_cost_usd": 100},
    )
    lab.init()
    hosts = [lab.start("h1"), lab.start("h2")]
    assert [h.wait(timeout=120) for h in hosts] == [EXIT_OK, EXIT_OK]
    assert sorted(lab.sql("SELECT target, count(*) FROM iterations GROUP BY 1")) == [
        (n, 6) for n in "abc"
    ]
    windows = lab.sql(
        """SELECT w.starts_at, w.cap_usd, w.spent_usd, w.reserved_usd,
                  coalesce(sum(greatest(0, r.charged_usd - r.amount_usd)), 0),
                  coalesce(sum(r.charged_usd), 0)
           FROM budget_windows w LEFT JOIN reservations r
             ON r.window_start = w.starts_at AND r.state <> 'open'
           GROUP BY 1, 2, 3, 4 ORDER BY 1"""
    )
    assert len(windows) >= 2
    for start, cap, spent, reserved, beyond, charged in windows:
        assert reserved == 0 and spent == charged, start
        assert spent <= cap + beyond, f"window {start}: {spent} > {cap} + {beyond}"
    waited = [e for h in hosts for e in h.events("waiting_budget")]
    assert waited, "no target waited for the next window"
    ((spent, logged),) = lab.sql(
        "SELECT spent_usd, (SELECT sum(cost_usd) FROM iterations) FROM budgets"
    )
    assert spent == logged


def test_the_readme_two_host_demo_runs(lab: ClusterLab, tmp_path: Path) -> None:
    """README's demo: examples/cluster.toml on two hosts (its simulator made faster through
    the environment): both exit 0, the pinned target ran on host-b only, every target did
    its iterations once, the money adds up."""
    config = Path(__file__).resolve().parents[1] / "examples" / "cluster.toml"
    init = run_autoloopd(["db", "init"], env={"AUTOLOOPD_CLUSTER__DSN": lab.dsn})
    assert init.returncode == EXIT_OK, init.stderr
    fast = {
        "AUTOLOOPD_CLUSTER__DSN": lab.dsn, "AUTOLOOPD_DEFAULTS__SIMULATED_SECONDS": "0.1",
        "AUTOLOOPD_DEFAULTS__COOLDOWN_MINUTES": "0", "AUTOLOOPD_DAEMON__LOG_FORMAT": "json",
        "AUTOLOOPD_CLUSTER__LEASE_SECONDS": "3", "AUTOLOOPD_CLUSTER__RENEW_SECONDS": "0.5",
    }  # fmt: skip
    hosts = []
    for host in ("host-a", "host-b"):
        lab.config = config
        hosts.append(lab.start(host, env=fast))
    assert [h.wait(timeout=90) for h in hosts] == [EXIT_OK, EXIT_OK]
    done = dict(lab.sql("SELECT target, count(*) FROM iterations GROUP BY target"))
    assert done == {"coding-standards": 8, "commit-messages": 8, "tech-article": 8,
                    "tech-article-short": 4}  # fmt: skip
    pinned = lab.sql("SELECT DISTINCT host FROM iterations WHERE target = 'tech-article-short'")
    assert pinned == [("host-b",)]
    ((spent, logged),) = lab.sql(
        "SELECT spent_usd, (SELECT sum(cost_usd) FROM iterations) FROM budgets"
    )
    assert spent == logged


def test_ctl_on_one_host_steers_a_target_another_host_runs(lab: ClusterLab) -> None:
    """`ctl pause` sent to h1 for a target pinned to h2: h2 pauses it (its status says so,
    and it starts no new iteration); `resume` on h1 lets it finish; `status` and `/metrics`
    on h1 name the host running it and every host's liveness."""
    lab.write(
        [_dry(lab, "mine", hosts=["h1"], max_iterations=2), _dry(lab, "theirs", hosts=["h2"])],
        defaults={**DEFAULTS, "max_iterations": 40, "simulated_seconds": 0.2},
    )
    lab.init()
    h1, h2 = lab.start("h1"), lab.start("h2")
    h2.wait_event("iteration_finished", target="theirs", timeout=30)
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1"))}
    paused = run_autoloopd(["ctl", "--config", str(lab.config), "pause", "theirs"], env=env)
    assert paused.returncode == EXIT_OK, paused.stderr
    assert "cluster-wide; held by h2" in paused.stdout
    wait_for(lambda: lab.sql("SELECT 1 FROM targets WHERE name = 'theirs' AND status = 'paused'"),
             timeout=20, what="h2 pausing the target")  # fmt: skip
    ((before,),) = lab.sql("SELECT count(*) FROM iterations WHERE target = 'theirs'")
    status = run_autoloopd(["status", "--config", str(lab.config), "--json"], env=env)
    report = json.loads(status.stdout)
    theirs = next(t for t in report["targets"] if t["target"] == "theirs")
    assert theirs["host"] == "h2" and theirs["paused"] is True
    assert {h["host"] for h in report["cluster"]["hosts"]} == {"h1", "h2"}
    code, metrics = raw_get(lab.state_dir("h1") / "autoloopd.sock", "/metrics")
    assert code == 200
    assert 'autoloopd_cluster_target_host{host="h2",target="theirs"} 1.0' in metrics
    assert 'autoloopd_cluster_host_live{host="h2"} 1.0' in metrics
    ((after,),) = lab.sql("SELECT count(*) FROM iterations WHERE target = 'theirs'")
    assert after == before  # nothing new started while paused
    resumed = run_autoloopd(["ctl", "--config", str(lab.config), "resume", "theirs"], env=env)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert h1.wait(timeout=90) == EXIT_OK and h2.wait(timeout=90) == EXIT_OK
    assert lab.sql("SELECT count(*) FROM iterations WHERE target = 'theirs'") == [(40,)]


def test_a_reload_adds_and_removes_targets_in_the_cluster(lab: ClusterLab) -> None:
    """`ctl reload` with a target added and one removed: the new one is registered and
    claimed, the removed one stops (`stopped_removed`) and is not claimed again."""
    slow = {**DEFAULTS, "max_iterations": 400, "simulated_seconds": 0.1}
    lab.write([_dry(lab, "stays"), _dry(lab, "goes")], defaults=slow)
    lab.init()
    host = lab.start("h1")
    host.wait_event("iteration_finished", target="goes", timeout=30)
    lab.write([_dry(lab, "stays"), _dry(lab, "new", max_iterations=3)], defaults=slow)
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1"))}
    reloaded = run_autoloopd(["ctl", "--config", str(lab.config), "reload"], env=env)
    assert reloaded.returncode == EXIT_OK, reloaded.stderr
    host.wait_event("target_stopped", target="goes", status="stopped_removed", timeout=30)
    wait_for(lambda: lab.sql("SELECT 1 FROM iterations WHERE target = 'new' AND iteration = 3"),
             timeout=30, what="the added target's three iterations")  # fmt: skip
    ((goes,),) = lab.sql("SELECT count(*) FROM iterations WHERE target = 'goes'")
    stopped = run_autoloopd(["ctl", "--config", str(lab.config), "stop", "stays"], env=env)
    assert stopped.returncode == EXIT_OK, stopped.stderr
    assert host.wait(timeout=60) == EXIT_OK  # `new` finished, `stays` stopped by the operator
    assert lab.sql("SELECT count(*) FROM iterations WHERE target = 'goes'") == [(goes,)]
    assert lab.sql("SELECT lease_holder FROM targets WHERE name = 'goes'") == [(None,)]


def test_extend_on_any_host_moves_with_the_target(lab: ClusterLab) -> None:
    """A target pinned to h2 finished its 2 iterations; `ctl extend --iterations +2` sent
    to h1 clears its finished status on the cluster's row and h2 claims it again and runs
    exactly 2 more (the daemons stay up: `exit_when_idle = false`)."""
    lab.write(
        [_dry(lab, "t", hosts=["h2"], max_iterations=2)],
        defaults=DEFAULTS,
        daemon={"exit_when_idle": False},
    )
    lab.init()
    h1, h2 = lab.start("h1"), lab.start("h2")
    wait_for(lambda: lab.sql("SELECT 1 FROM targets WHERE finished_status IS NOT NULL"),
             timeout=30, what="t finished")  # fmt: skip
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1"))}
    extended = run_autoloopd(
        ["ctl", "--config", str(lab.config), "extend", "t", "--iterations", "+2"], env=env
    )
    assert extended.returncode == EXIT_OK, extended.stderr
    assert "cluster-wide" in extended.stdout
    wait_for(lambda: lab.sql("SELECT 1 FROM targets WHERE finished_status = 'stopped_max_iter'"
                             " AND iterations_completed = 4"),
             timeout=30, what="t running its two more iterations on h2")  # fmt: skip
    assert lab.sql("SELECT count(*), min(host), max(host) FROM iterations") == [(4, "h2", "h2")]
    assert h1.stop() == EXIT_OK and h2.stop() == EXIT_OK


def test_status_without_a_daemon_here_shows_the_cluster(lab: ClusterLab) -> None:
    """On a host whose daemon is not running, `status` says so (exit 3) and still shows
    every target as the cluster's database has it: the host running it, its totals, the
    cluster's budget and every host's liveness."""
    lab.write([_dry(lab, "t", max_iterations=200, simulated_seconds=0.1)], defaults=DEFAULTS)
    lab.init()
    h2 = lab.start("h2")
    wait_for(lambda: lab.sql("SELECT 1 FROM targets WHERE status IS NOT NULL"),
             timeout=30, what="h2 reporting the target")  # fmt: skip
    env = {"AUTOLOOPD_DAEMON__STATE_DIR": str(lab.state_dir("h1")),
           "AUTOLOOPD_CLUSTER__HOST_ID": "h1"}  # fmt: skip
    done = run_autoloopd(["status", "--config", str(lab.config), "--json"], env=env)
    assert done.returncode == 3, done.stderr  # no daemon on this host
    report = json.loads(done.stdout)
    (row,) = report["targets"]
    assert row["host"] == "h2" and row["iterations_completed"] >= 0
    assert report["budget"]["cap_usd"] == 100.0  # the default [budget] cap
    assert [h["host"] for h in report["cluster"]["hosts"]] == ["h2"]
    assert report["cluster"]["hosts"][0]["live"] is True
    assert "the cluster's database" in report["daemon"]["note"]
    text = run_autoloopd(["status", "--config", str(lab.config), "--all"], env=env)
    assert "@h2" in text.stdout and "cluster: this host h1" in text.stdout
    assert h2.stop() == EXIT_OK
