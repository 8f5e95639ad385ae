"""End-to-end tests of daemon mode: the real `autoloopd --config FILE` as a subprocess.

Every test writes a config into tmp_path (state_dir and target directories there too), runs
fake orchestrators (tests/fakes/fake_orchestrator.py) with this interpreter, waits on the
daemon's JSON log events (never on bare sleeps), sends real signals, and afterwards checks
DESIGN.md's invariants in every state root and that no orchestrator process is left.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.audit import read_state
from tests.helpers.daemon import Daemon, Lab
from tests.helpers.logs import logged_cost, max_overlap, parse_ts, read_log
from tests.helpers.notify import Notification, NotifyListener
from tests.helpers.process import run_autoloopd, status_json
from tests.helpers.wait import wait_for

REPO = Path(__file__).resolve().parent.parent

# A daemon-wide [defaults] that keeps the fakes' runs short and retries quick.
FAST = {
    "backoff_base_seconds": 0.1,
    "backoff_max_seconds": 0.2,
    "term_grace_seconds": 2.0,
    "iteration_timeout_minutes": 1.0,
}
# The same for continuous targets that cool down for 10 minutes after each iteration.
COOLING = {**FAST, "mode": "continuous", "cooldown_minutes": 10}


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A test's directories (conftest.py kills any autoloopd the test left running)."""
    return Lab(tmp_path)


def statuses(lab: Lab, *names: str) -> dict[str, str]:
    """Each target's `status` from its state file."""
    return {name: read_state(lab.state_root(name))["status"] for name in names}


def start_cooling(lab: Lab, names: Sequence[str]) -> Daemon:
    """A daemon whose `keep` targets `names` (COOLING) have each run one iteration and are
    all in their cooldown."""
    lab.write([lab.target(name, "keep") for name in names], defaults=COOLING)
    daemon = lab.start()
    daemon.wait_event("iteration_finished", count=len(names))
    wait_for(lambda: set(statuses(lab, *names).values()) == {"cooldown"}, what="all in cooldown")
    return daemon


# --------------------------------------------------------------------------- 1. many targets


def test_targets_run_concurrently_within_the_slot_limit_and_stop_on_their_own(lab: Lab) -> None:
    """Four targets of different speeds and modes run at once, never more than
    max_concurrent_iterations orchestrators together, and each stops on its own condition;
    exit 0."""
    targets = {
        "slow": ("slow", "--sleep", "0.3", "--scores", "0.5,0.6,0.7"),
        "plateau": ("keep", "--scores", "0.5,0.6"),
        "costly": ("reject", "--cost", "0.15", "--scores", "0.1,0.2,0.3,0.4"),
        "swing": ("sequence", "--decisions", "keep,reject", "--scores", "0.1,0.2,0.3,0.4,0.5"),
    }
    keys: dict[str, dict[str, Any]] = {
        "slow": {"mode": "single-run", "max_iterations": 3},
        "plateau": {"mode": "continuous", "cooldown_minutes": 0.005, "plateau_window": 2},
        "costly": {"mode": "single-run", "max_cost_usd": 0.3},
        "swing": {"mode": "continuous", "cooldown_minutes": 0.005, "oscillation_window": 4},
    }
    lab.write(
        [lab.target(name, *argv, **keys[name]) for name, argv in targets.items()],
        daemon={"max_concurrent_iterations": 2},
        defaults={**FAST, "max_iterations": 10, "plateau_window": 10},
    )
    daemon = lab.start()
    assert daemon.wait(timeout=30) == 0, daemon.text()[-3000:]
    lab.check_state_roots()

    expected = {
        "slow": ("stopped_max_iter", 3),
        "plateau": ("stopped_plateau", 4),
        "costly": ("stopped_cost", 2),
        "swing": ("stopped_oscillation", 4),
    }
    found = {
        name: (read_state(lab.state_root(name))["status"], len(read_log(lab.state_root(name))))
        for name in targets
    }
    assert found == expected
    stopped = {e["target"]: e["status"] for e in daemon.events("target_stopped")}
    assert stopped == {name: status for name, (status, _) in expected.items()}

    kinds = ("iteration_started", "iteration_finished")
    runs = [e for e in daemon.events() if e.get("event") in kinds]
    assert len(runs) == 2 * sum(n for _, n in expected.values())
    assert max_overlap(runs) == 2, "iterations of different targets overlap, at most 2 at once"
    # Every other target started while `slow` was still at work: they ran concurrently.
    slow_end = max(i for i, e in enumerate(runs) if e["target"] == "slow")
    for name in ("plateau", "costly", "swing"):
        first = min(i for i, e in enumerate(runs) if e["target"] == name)
        assert first < slow_end, f"{name} only started after slow had finished"


# --------------------------------------------------------------------------- 2. one crashes


def test_a_crashing_target_ends_in_error_while_the_others_finish_and_exit_is_1(lab: Lab) -> None:
    """An orchestrator that always crashes trips its target's circuit breaker (`error`, with
    the stderr tail saved); the other targets are unaffected; the daemon exits 1."""
    lab.write(
        [
            lab.target("crasher", "crash", max_consecutive_errors=2),
            lab.target("good-1", "keep", "--scores", "0.5,0.6"),
            lab.target("good-2", "slow", "--sleep", "0.2", "--scores", "0.5,0.6"),
        ],
        defaults={**FAST, "mode": "single-run", "max_iterations": 2},
    )
    daemon = lab.start()
    assert daemon.wait(timeout=30) == 1, daemon.text()[-3000:]
    lab.check_state_roots()

    crashed = read_state(lab.state_root("crasher"))
    assert crashed["status"] == "error"
    assert crashed["consecutive_errors"] == 2
    assert crashed["iterations_completed"] == 0
    assert "Pipeline error: boom" in crashed["last_failure_trace"]
    assert [e["status"] for e in read_log(lab.state_root("crasher"))] == ["failed", "failed"]
    assert statuses(lab, "good-1", "good-2") == {
        "good-1": "stopped_max_iter",
        "good-2": "stopped_max_iter",
    }
    (stopped,) = daemon.events("daemon_stopped")
    assert stopped["errors"] == ["crasher"]


# --------------------------------------------------------------------------- 3. shared budget


def test_shared_budget_caps_twenty_targets_and_a_restart_spends_nothing_more(lab: Lab) -> None:
    """20 targets at $0.10 an iteration under a $3.00 shared cap spend at most one estimate
    more than the cap and all end `stopped_budget`; a restart recovers the spending from the
    logs and runs no further iteration."""
    names = [f"t{i:02d}" for i in range(20)]
    lab.write(
        [lab.target(name, "keep", "--cost", "0.1") for name in names],
        daemon={"max_concurrent_iterations": 4},
        budget={"max_cost_usd": 3.0},
        defaults={
            **FAST,
            "mode": "single-run",
            "max_iterations": 50,
            "plateau_window": 60,
            "estimated_cost_usd": 0.1,
        },
    )
    daemon = lab.start()
    assert daemon.wait(timeout=40) == 0, daemon.text()[-3000:]
    lab.check_state_roots()

    total = math.fsum(logged_cost(lab.state_root(n)) for n in names)
    logged = math.fsum(e["cost_usd"] for e in daemon.events("iteration_finished"))
    assert math.isclose(total, logged, abs_tol=1e-6)
    assert 3.0 - 0.1 - 1e-6 <= total <= 3.0 + 0.1 + 1e-6, total
    assert set(statuses(lab, *names).values()) == {"stopped_budget"}
    started = len(daemon.events("iteration_started"))

    again = lab.start()
    assert again.wait(timeout=30) == 0, again.text()[-3000:]
    lab.check_state_roots()
    (ready,) = again.events("daemon_ready")
    assert math.isclose(ready["spent_usd"], total, abs_tol=1e-6), "spending recovered from logs"
    assert again.events("iteration_started") == []
    assert math.isclose(
        math.fsum(logged_cost(lab.state_root(n)) for n in names), total, abs_tol=1e-9
    )
    assert sum(len(read_log(lab.state_root(n))) for n in names) == started
    assert {e["target"]: e["status"] for e in again.events("target_stopped")} == dict.fromkeys(
        names, "stopped_budget"
    )


# --------------------------------------------------------------------------- 4. SIGTERM


def test_sigterm_lets_running_iterations_finish_within_the_grace_period(lab: Lab) -> None:
    """SIGTERM while two 1.5-second iterations run: both finish and are recorded as
    completed (grace 10 s), nothing new starts, every target is checkpointed, exit 0."""
    lab.write(
        [lab.target(name, "slow", "--sleep", "1.5") for name in ("a", "b")],
        daemon={"shutdown_grace_seconds": 10},
        defaults={**FAST, "mode": "continuous", "cooldown_minutes": 0.001},
    )
    daemon = lab.start()
    daemon.wait_event("iteration_started", count=2)
    daemon.send(signal.SIGTERM)
    (requested,) = daemon.wait_event("shutdown_requested")
    assert sorted(requested["running"]) == ["a", "b"]
    assert daemon.wait(timeout=15) == 0, daemon.text()[-3000:]
    lab.check_state_roots()

    for name in ("a", "b"):
        entries = read_log(lab.state_root(name))
        assert [(e["status"], e["decision"]) for e in entries] == [("completed", "keep")]
        state = read_state(lab.state_root(name))
        assert state["status"] == "stopped_signal"
        assert state["iterations_completed"] == 1
        assert state["in_flight"] is None
    assert len(daemon.events("iteration_started")) == 2


def test_sigterm_stops_hanging_iterations_after_the_grace_period(lab: Lab) -> None:
    """SIGTERM while orchestrators hang (grace 1 s): their process groups are stopped, the
    runs are recorded as interrupted, exit 0 within a few seconds, no process left."""
    lab.write(
        [lab.target(name, "hang") for name in ("a", "b")],
        daemon={"shutdown_grace_seconds": 1},
        defaults={**FAST, "mode": "continuous"},
    )
    daemon = lab.start()
    daemon.wait_event("iteration_started", count=2)
    sent = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.text()[-3000:]
    assert time.monotonic() - sent < 5.0
    lab.check_state_roots()

    for name in ("a", "b"):
        entries = read_log(lab.state_root(name))
        assert [e["status"] for e in entries] == ["interrupted"]
        state = read_state(lab.state_root(name))
        assert state["status"] == "stopped_signal"
        assert state["iterations_completed"] == 0
        assert state["in_flight"] is None


def test_a_second_sigint_skips_the_grace_period(lab: Lab) -> None:
    """The first SIGINT starts a 30 s grace period; a second one stops the hanging runs at
    once (recorded as interrupted), exit 0."""
    lab.write(
        [lab.target("a", "hang")],
        daemon={"shutdown_grace_seconds": 30},
        defaults={**FAST, "mode": "continuous"},
    )
    daemon = lab.start()
    daemon.wait_event("iteration_started")
    daemon.send(signal.SIGINT)
    daemon.wait_event("shutdown_requested")
    assert daemon.running()
    sent = time.monotonic()
    daemon.send(signal.SIGINT)
    assert daemon.wait(timeout=15) == 0, daemon.text()[-3000:]
    assert time.monotonic() - sent < 5.0
    assert daemon.events("shutdown_forced")
    lab.check_state_roots()
    assert [e["status"] for e in read_log(lab.state_root("a"))] == ["interrupted"]
    assert read_state(lab.state_root("a"))["status"] == "stopped_signal"


def test_sigterm_while_targets_are_being_prepared_stops_them_all(lab: Lab) -> None:
    """A SIGTERM that arrives while the daemon is still preparing its targets (after the
    signal handler is installed, before `daemon_ready`) stops every target, including those
    prepared after the signal: exit 0, nothing left running."""
    names = [f"t{i:02d}" for i in range(30)]
    lab.write([lab.target(name, "keep") for name in names], defaults=COOLING)
    daemon = lab.start()
    # `targets_loading` (READY=1) is logged once every root is locked, as the targets'
    # preparation begins: all 30 of them at once (PREPARE_AT_ONCE), the handler installed.
    daemon.wait_event("targets_loading")
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0, daemon.text()[-3000:]
    lab.check_state_roots()
    stopped = {e["target"]: e["status"] for e in daemon.events("target_stopped")}
    assert stopped == dict.fromkeys(names, "stopped_signal")
    for name in names:
        assert read_state(lab.state_root(name))["status"] == "stopped_signal"
        assert [e["status"] for e in read_log(lab.state_root(name))] in ([], ["completed"])


# --------------------------------------------------------------------------- 5. cooldown


def test_sigterm_during_cooldown_exits_at_once_and_a_restart_honours_next_run_at(
    lab: Lab,
) -> None:
    """SIGTERM while every target cools down (10 min): exit 0 within ~2 s, each state keeps
    its next_run_at; a restart waits for it instead of starting an iteration."""
    names = ("a", "b", "c")
    daemon = start_cooling(lab, names)
    planned = {n: read_state(lab.state_root(n))["next_run_at"] for n in names}
    sent = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0, daemon.text()[-3000:]
    assert time.monotonic() - sent < 2.0
    lab.check_state_roots()

    now = datetime.now(UTC)
    for name in names:
        state = read_state(lab.state_root(name))
        assert state["status"] in ("cooldown", "stopped_signal")
        assert state["next_run_at"] == planned[name]
        assert parse_ts(state["next_run_at"]) > now + timedelta(minutes=9)

    again = lab.start()
    again.wait_event("daemon_ready")
    ready_at = time.monotonic()
    # The daemon's view, not the files: a state the SIGTERM left as `stopped_signal` (it may,
    # under load) is a cooldown the restart resumes without rewriting it (test_quiet_stop).
    wait_for(
        lambda: [r["status"] for r in status_json(lab.config)] == ["cooldown"] * len(names),
        what="all in cooldown again",
    )
    wait_for(lambda: time.monotonic() - ready_at > 2.0, timeout=5, what="2 s to pass")
    assert again.events("iteration_started") == []
    assert again.stop() == 0
    lab.check_state_roots()
    for name in names:
        assert len(read_log(lab.state_root(name))) == 1
        assert read_state(lab.state_root(name))["next_run_at"] == planned[name]


# --------------------------------------------------------------------------- 6. SIGHUP


def test_sighup_adds_removes_and_changes_targets_and_survives_a_broken_config(lab: Lab) -> None:
    """SIGHUP with B removed, C added and A's max_iterations changed: `config_reloaded`
    says so, B stops as `stopped_removed`, C runs, A keeps going. A broken config on the
    next SIGHUP is reported (`reload_failed`) and the daemon keeps running the old one."""
    a, b, c = (lab.target(n, "keep", "--scores", "0.5,0.6,0.7") for n in ("a", "b", "c"))
    lab.write([a, b], defaults=COOLING)
    daemon = lab.start()
    daemon.wait_event("iteration_finished", count=2)

    lab.write([{**a, "max_iterations": 7}, c], defaults=COOLING)
    daemon.send(signal.SIGHUP)
    (reloaded,) = daemon.wait_event("config_reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (["c"], ["b"], ["a"])
    daemon.wait_event("target_stopped", target="b")
    daemon.wait_event("iteration_finished", target="c")
    assert read_state(lab.state_root("b"))["status"] == "stopped_removed"
    started = [e["target"] for e in daemon.events("iteration_started")]
    assert sorted(started[:2]) == ["a", "b"] and started[2:] == ["c"], started

    lab.config.write_text("[daemon]\nlog_format = 'json'\n[[targets]]\nname = 'a'\n")
    daemon.send(signal.SIGHUP)
    (failed,) = daemon.wait_event("reload_failed")
    assert str(lab.config) in failed["error"] and "targets[0].path" in failed["error"]
    assert daemon.running()
    wait_for(
        lambda: statuses(lab, "a", "c") == {"a": "cooldown", "c": "cooldown"},
        what="a and c cooling down",
    )
    assert daemon.stop() == 0, daemon.text()[-3000:]
    lab.check_state_roots()
    # c was cooling down: a SIGTERM leaves its stored wait as it was (issue 24); a's new
    # limits are written when they are applied, at its next wake-up or at the stop
    assert statuses(lab, "b", "c") == {"b": "stopped_removed", "c": "cooldown"}
    assert statuses(lab, "a")["a"] in ("cooldown", "stopped_signal")
    assert read_state(lab.state_root("a"))["max_iterations"] == 7
    assert [len(read_log(lab.state_root(n))) for n in ("a", "b", "c")] == [1, 1, 1]


def test_sighup_starts_stopped_targets_again_without_charging_their_history_twice(
    lab: Lab,
) -> None:
    """Reloads bring stopped targets back: one removed and later added back, one whose
    max_iterations was raised, one stopped by the shared budget when the cap is raised. The
    budget counts their earlier spending once. A change reverted by a second reload before
    it took effect is reverted."""
    keep = ("keep", "--cost", "0.1")
    keeper = lab.target("keeper", *keep, mode="continuous", cooldown_minutes=10)
    spender = lab.target("spender", *keep, mode="single-run")
    one = lab.target("one", *keep, mode="single-run", max_iterations=1)
    gone = lab.target("gone", *keep, mode="continuous", cooldown_minutes=10)
    defaults = {**FAST, "estimated_cost_usd": 0.1, "plateau_window": 60, "max_iterations": 50}
    lab.write([keeper, spender, one, gone], budget={"max_cost_usd": 0.6}, defaults=defaults)
    daemon = lab.start()
    daemon.wait_event("target_stopped", target="spender")
    daemon.wait_event("target_stopped", target="one")
    daemon.wait_event("iteration_finished", target="gone")
    daemon.wait_event("iteration_finished", target="keeper")
    assert statuses(lab, "spender", "one") == {
        "spender": "stopped_budget",
        "one": "stopped_max_iter",
    }
    spent = math.fsum(logged_cost(lab.state_root(n)) for n in ("keeper", "spender", "one", "gone"))
    assert math.isclose(spent, 0.6)

    # Reload 1: `gone` removed, keeper's max_iterations changed.
    lab.write(
        [{**keeper, "max_iterations": 7}, spender, one],
        budget={"max_cost_usd": 0.6},
        defaults=defaults,
    )
    daemon.send(signal.SIGHUP)
    (first,) = daemon.wait_event("config_reloaded")
    assert (first["added"], first["removed"], first["changed"]) == ([], ["gone"], ["keeper"])
    daemon.wait_event("target_stopped", target="gone")

    # Reload 2: `gone` back, keeper's change reverted, one's limit and the cap raised.
    lab.write(
        [keeper, spender, {**one, "max_iterations": 2}, gone],
        budget={"max_cost_usd": 1.0},
        defaults=defaults,
    )
    daemon.send(signal.SIGHUP)
    _, second = daemon.wait_event("config_reloaded", count=2)
    assert second["added"] == ["gone", "one", "spender"]
    assert second["changed"] == ["keeper"]
    daemon.wait_event("target_stopped", target="spender", count=2)
    daemon.wait_event("target_stopped", target="one", count=2)
    wait_for(lambda: statuses(lab, "gone")["gone"] == "cooldown", what="gone cooling down")
    assert daemon.stop() == 0, daemon.text()[-3000:]
    lab.check_state_roots()

    logs = {n: read_log(lab.state_root(n)) for n in ("keeper", "spender", "one", "gone")}
    total = math.fsum(e["cost_usd"] for entries in logs.values() for e in entries)
    (stopped,) = daemon.events("daemon_stopped")
    assert math.isclose(stopped["spent_usd"], total), "history charged once"
    assert math.isclose(total, 1.0), "the raised cap is used up, not more"
    assert (len(logs["keeper"]), len(logs["one"]), len(logs["gone"])) == (1, 2, 1)
    assert read_state(lab.state_root("spender"))["status"] == "stopped_budget"
    assert read_state(lab.state_root("keeper"))["max_iterations"] == 50


# --------------------------------------------------------------------------- 7. config errors


def test_a_bad_config_exits_78_with_one_line_naming_file_and_key(lab: Lab) -> None:
    """An unknown key (`daemon.levle`) is refused before anything starts: exit 78 and one
    line on stderr naming the file and the key path, no traceback, no state written."""
    lab.write([lab.target("a", "keep")], daemon={"levle": "info"})
    result = run_autoloopd(["--config", str(lab.config)], timeout=30)
    assert result.returncode == 78, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(lab.config) in lines[0] and "daemon.levle" in lines[0], lines[0]
    assert "unknown key" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not lab.state_dir.exists()


def test_check_prints_a_summary_with_every_target(lab: Lab) -> None:
    """`--check` validates, prints a summary naming every target and exits 0 without running
    anything; the shipped example config checks from the repository root."""
    names = ["alpha", "beta", "gamma"]
    lab.write([lab.target(n, "keep") for n in names], defaults={"mode": "single-run"})
    result = run_autoloopd(["--config", str(lab.config), "--check"], timeout=30)
    assert result.returncode == 0, result
    for name in names:
        assert f"- {name}:" in result.stdout
    assert str(lab.config) in result.stdout
    assert not lab.state_dir.exists(), "--check runs nothing"

    example = run_autoloopd(["--config", "config.example.toml", "--check"], timeout=30, cwd=REPO)
    assert example.returncode == 0, example
    for name in ("coding-standards", "tech-article", "commit-messages"):
        assert f"- {name}:" in example.stdout


# --------------------------------------------------------------------------- 8. sd_notify


def _first(messages: list[Notification], prefix: str, start: int = 0) -> int | None:
    """Index of the first message at or after `start` with a line starting with `prefix`."""
    for i in range(start, len(messages)):
        if any(line.startswith(prefix) for line in messages[i].lines):
            return i
    return None


def test_sd_notify_ready_status_reload_watchdog_and_stopping(lab: Lab) -> None:
    """With $NOTIFY_SOCKET set the daemon sends READY=1 (with STATUS=), STATUS= updates,
    RELOADING=1 + MONOTONIC_USEC= then READY=1 around SIGHUP, WATCHDOG=1 every half
    WATCHDOG_USEC, STOPPING=1 on SIGTERM; the orchestrator never sees those variables."""
    with NotifyListener(lab.root) as listener:
        lab.write([lab.target("probe", "probe")], defaults=COOLING)
        daemon = lab.start(env={**listener.env, "WATCHDOG_USEC": "500000"})
        first_ready = listener.wait_ready().lines
        assert any(f.startswith("STATUS=") and " spent" in f for f in first_ready), first_ready
        daemon.wait_event("iteration_finished")
        seen = len(listener.messages())  # timed on arrival by the listener's thread
        listener.wait_for(
            lambda m: sum(n.lines == ["WATCHDOG=1"] for n in m[seen:]) >= 5, what="5 x WATCHDOG=1"
        )
        pings = [n.at for n in listener.messages()[seen:] if n.lines == ["WATCHDOG=1"]]
        gaps = sorted(b - a for a, b in itertools.pairwise(pings[1:]))
        assert 0.1 < gaps[len(gaps) // 2] < 0.5, f"every half WATCHDOG_USEC (0.25 s): {gaps}"
        listener.wait_for(
            lambda m: any("STATUS=0 running, 1 cooling down" in f for n in m for f in n.lines),
            timeout=10,
            what="a STATUS= line saying the target cools down",
        )

        before_reload = len(listener.messages())
        daemon.send(signal.SIGHUP)
        daemon.wait_event("config_reloaded")

        def reload_pair(m: list[Notification]) -> tuple[int, int] | None:
            reloading = _first(m, "RELOADING=1", before_reload)
            if reloading is None:
                return None
            again = _first(m, "READY=1", reloading + 1)
            return None if again is None else (reloading, again)

        reloading, _ = listener.wait_for(reload_pair, what="RELOADING=1 then READY=1")
        fields = listener.lines()[reloading]
        usec = [f for f in fields if f.startswith("MONOTONIC_USEC=")]
        assert len(usec) == 1 and int(usec[0].split("=", 1)[1]) > 0, fields

        before_stop = len(listener.messages())
        assert _first(listener.messages(), "STOPPING=1") is None
        assert daemon.stop() == 0, daemon.text()[-3000:]
        listener.wait_for(
            lambda m: _first(m, "STOPPING=1", before_stop) is not None, what="STOPPING=1"
        )
        lab.check_state_roots()
        for message in listener.messages():
            message.data.decode("utf-8")  # every datagram is UTF-8 ...
            assert message.lines and all("=" in f for f in message.lines), message  # ... KEY=

        runs = lab.state_root("probe") / "runs" / "iteration-1.log"
        probe = next(
            json.loads(line)["probe"]
            for line in runs.read_text().splitlines()
            if line.startswith("{") and '"probe"' in line
        )
        assert probe["env"]["NOTIFY_SOCKET"] is None
        assert probe["env"]["WATCHDOG_USEC"] is None
        assert probe["env"]["WATCHDOG_PID"] is None
        assert probe["env"]["AUTOLOOPD_RUN"] == f"{lab.state_root('probe')}#1"
        assert probe["pgid"] == probe["pid"] != daemon.pid, "its own process group"
        assert probe["stdin"] == "/dev/null"


# --------------------------------------------------------------------------- 9. scheduled


def _minute_after(moment: datetime) -> datetime:
    """The first whole minute strictly after `moment` (the next tick of `* * * * *`)."""
    return moment.replace(second=0, microsecond=0) + timedelta(minutes=1)


def test_scheduled_target_waits_for_its_tick_and_runs_missed_ticks_once_at_start(
    lab: Lab,
) -> None:
    """A scheduled target (`* * * * *`) waits for the next tick; with next_run_at in the
    past (ticks missed while down) it runs exactly one iteration at start, then waits for
    the next tick (status `waiting`, next_run_at in the future) until SIGTERM: exit 0."""
    lab.write([lab.target("cron", "keep", mode="scheduled", schedule="* * * * *")], defaults=FAST)
    root = lab.state_root("cron")

    before = datetime.now(UTC)
    first = lab.start()
    first.wait_event("daemon_ready")
    state = wait_for(
        lambda: (s := read_state(root))["status"] == "waiting" and s, what="status waiting"
    )
    tick = parse_ts(state["next_run_at"])
    assert (tick.second, tick.microsecond) == (0, 0), state["next_run_at"]
    assert before < tick <= _minute_after(datetime.now(UTC)), state["next_run_at"]
    assert first.stop() == 0, first.text()[-3000:]
    lab.check_state_roots()
    # No iteration before the tick (one at or after it would be the tick's own).
    assert all(parse_ts(e["timestamp"]) >= tick for e in first.events("iteration_started"))
    if not first.events("iteration_started"):
        assert read_state(root)["next_run_at"] == state["next_run_at"], "next_run_at kept"

    # Down for a while: several ticks missed.
    state = read_state(root)
    state["next_run_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    (root / "autoloop_state.json").write_text(json.dumps(state))
    iterations_before = len(read_log(root))

    second = lab.start()
    (ready,) = second.wait_event("daemon_ready")
    boundary = _minute_after(parse_ts(ready["timestamp"]))
    second.wait_event("iteration_finished")
    state = wait_for(
        lambda: (
            (s := read_state(root))["status"] == "waiting"
            and parse_ts(s["next_run_at"]) > datetime.now(UTC)
            and s
        ),
        what="waiting for a future tick",
    )
    assert parse_ts(state["next_run_at"]).second == 0
    assert second.running()
    assert second.stop() == 0, second.text()[-3000:]
    lab.check_state_roots()
    started = [parse_ts(e["timestamp"]) for e in second.events("iteration_started")]
    # Exactly one run for all the missed ticks; any later one is a real tick's.
    assert len([t for t in started if t < boundary]) == 1, started
    assert len(read_log(root)) - iterations_before == len(started)
    assert read_state(root)["status"] in ("waiting", "stopped_signal")


# --------------------------------------------------------------------------- 10/11. status, lock


def test_status_reads_every_target_while_the_daemon_runs_without_taking_a_lock(
    lab: Lab,
) -> None:
    """`autoloopd status --config F` counts the targets quietly cooling down under an empty
    table, `--all` lists every target with its status, `--json` has the fields,
    `--state-root DIR` shows one target; none of them disturbs the running daemon (no lock
    taken)."""
    names = ("first", "second")
    daemon = start_cooling(lab, names)

    quiet = run_autoloopd(["status", "--config", str(lab.config)], timeout=30)
    assert quiet.returncode == 0, quiet
    left_out, _, summary = quiet.stdout.partition("\n\n")
    assert left_out.startswith("2 targets between turns with nothing to tell, not listed"), quiet
    assert "(cooldown 2)" in left_out and "--all" in left_out
    assert summary.startswith(f"daemon: running, pid {daemon.pid}"), summary

    table = run_autoloopd(["status", "--config", str(lab.config), "--all"], timeout=30)
    assert table.returncode == 0, table
    table_lines, _, summary = table.stdout.partition("\n\n")  # the table, then the daemon
    lines = table_lines.splitlines()
    assert lines[0].split()[:2] == ["TARGET", "STATUS"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert summary.startswith(f"daemon: running, pid {daemon.pid}"), summary
    assert rows == {"first": "cooldown", "second": "cooldown"}

    as_json = run_autoloopd(["status", "--config", str(lab.config), "--json"], timeout=30)
    assert as_json.returncode == 0, as_json
    data = json.loads(as_json.stdout)
    by_name = {row["target"]: row for row in data["targets"]}
    assert set(by_name) == set(names)
    for name in names:
        row = by_name[name]
        assert row["status"] == "cooldown"
        assert row["iterations_completed"] == 1
        assert row["state_root"] == str(lab.state_root(name))
        assert math.isclose(row["total_cost_usd"], 0.15)
        assert parse_ts(row["next_run_at"]) > datetime.now(UTC)
        for key in ("max_iterations", "last_decision", "best_weighted_score", "max_cost_usd"):
            assert key in row

    one = run_autoloopd(
        ["status", "--state-root", str(lab.state_root("second")), "--json"], timeout=30
    )
    assert one.returncode == 0, one
    assert [r["target"] for r in json.loads(one.stdout)["targets"]] == ["second"]

    assert daemon.running()
    for path in (lab.state_dir, *(lab.state_root(n) for n in names)):
        assert (path / ".autoloopd.lock").read_text().strip() == str(daemon.pid)
    assert daemon.stop() == 0, daemon.text()[-3000:]
    lab.check_state_roots()


def test_a_second_daemon_on_the_same_config_refuses_at_once_naming_the_holder(lab: Lab) -> None:
    """While one autoloopd runs a config, a second one exits 75 at once, naming the pid that
    holds the state; the first keeps running."""
    lab.write([lab.target("a", "keep")], defaults=COOLING)
    daemon = lab.start()
    daemon.wait_event("daemon_ready")
    began = time.monotonic()
    second = run_autoloopd(["--config", str(lab.config)], timeout=30)
    assert time.monotonic() - began < 10
    assert second.returncode == 75, second
    assert f"pid {daemon.pid}" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert daemon.running()
    daemon.wait_event("iteration_finished")
    assert daemon.stop() == 0, daemon.text()[-3000:]
    lab.check_state_roots()
    assert len(read_log(lab.state_root("a"))) == 1
