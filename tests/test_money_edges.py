"""Money at the edges (issue 20), through the real binary: a small budget runs or says why
it cannot, and the stop reason names what really stopped a target."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from autoloop_daemon.models import TargetSpec
from autoloop_daemon.policy.recording import INTERRUPTED_ERROR, build_entry
from autoloop_daemon.vocab import TargetStatus
from tests.helpers.audit import read_state
from tests.helpers.config import write_config
from tests.helpers.daemon import Daemon
from tests.helpers.fakes import orchestrator_argv
from tests.helpers.logs import json_lines, read_log
from tests.helpers.process import run_autoloopd, start_autoloopd, status_json, stop
from tests.helpers.wait import wait_for

TERM_GRACE_S = 0.5


def fleet(tmp_path: Path, budget: dict[str, Any], **defaults: Any) -> Path:
    """Two single-run targets `a` and `b` under `budget`; returns the config's path."""
    for name in "ab":
        (tmp_path / name).mkdir(exist_ok=True)
    return write_config(
        tmp_path / "config.toml",
        daemon={"state_dir": str(tmp_path / "state")},
        budget=budget,
        defaults={"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 3, **defaults},
        targets=[{"name": n, "path": n} for n in "ab"],
    )


def stopped(stdout: str) -> dict[str, str]:
    """Each target's stop reason from the JSON log."""
    return {
        e["target"]: e["reason"] for e in json_lines(stdout) if e.get("event") == "target_stopped"
    }


def test_check_and_start_say_why_no_run_fits_a_small_cap(tmp_path: Path) -> None:
    """Dry-run targets (their cost comes at the end, so nothing meters it live) under a $0.40
    cap with no estimate: the first reservation would be 10 min x $0.10 = $1.00. `--check`
    fails naming the estimate, its source and the keys to change; started anyway, each target
    stops with that sentence, not "budget exhausted ($0.00 spent)"."""
    config = fleet(tmp_path, {"max_cost_usd": 0.4}, dry_run=True)
    check = run_autoloopd(["--config", str(config), "--check"])
    assert check.returncode == 78, check.stdout + check.stderr
    for name in "ab":
        assert f"({name}): the next run's estimate $1.00" in check.stderr
    assert "10 min at cost_per_minute_usd" in check.stderr
    assert "estimated_cost_usd or max_iteration_cost_usd to at most $0.40" in check.stderr
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == 0, done.stderr[-2000:]
    reasons = stopped(done.stdout)
    assert set(reasons) == {"a", "b"}
    for reason in reasons.values():
        assert reason.startswith("the next run's estimate $1.00"), reason
        assert "exhausted" not in reason


def test_a_small_cap_runs_once_the_estimate_fits(tmp_path: Path) -> None:
    """The same fleet with `estimated_cost_usd = 0.1` passes `--check` and spends its $0.40
    (each dry run costs $0.05-0.25, reported at its end)."""
    config = fleet(tmp_path, {"max_cost_usd": 0.4}, dry_run=True, estimated_cost_usd=0.1)
    check = run_autoloopd(["--config", str(config), "--check"])
    assert check.returncode == 0, check.stderr
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == 0, done.stderr[-2000:]
    entries = [e for n in "ab" for e in read_log(tmp_path / "state" / n)]
    assert entries, "nothing ran"
    assert math.fsum(e["cost_usd"] for e in entries) > 0


def test_a_window_cap_below_one_reservation_is_refused_by_name(tmp_path: Path) -> None:
    """A $0.40 window (lifetime $100) and a $0.50 estimate: no window can ever hold a run;
    `--check` and the stop reason both say so."""
    budget = {"max_cost_usd": 0.4, "window": "1h", "lifetime_max_cost_usd": 100.0}
    config = fleet(tmp_path, budget, dry_run=True, estimated_cost_usd=0.5)
    check = run_autoloopd(["--config", str(config), "--check"])
    assert check.returncode == 78, check.stdout + check.stderr
    assert "exceeds the budget window's $0.40 cap" in check.stderr
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == 0, done.stderr[-2000:]
    for reason in stopped(done.stdout).values():
        assert "no run can fit in any window" in reason, reason


def test_a_wall_time_priced_first_run_starts_with_what_is_left(tmp_path: Path) -> None:
    """Wall time at $6/min makes the implicit first reservation $60 against a $0.40 cap; the
    runs are metered live, so they start with what is left and are stopped at the cap."""
    argv = orchestrator_argv("slow", "--sleep", "30", "--no-cost")
    config = fleet(
        tmp_path,
        {"max_cost_usd": 0.4, "cost_per_minute_usd": 6.0},
        orchestrator=argv,
        term_grace_seconds=TERM_GRACE_S,
    )
    assert run_autoloopd(["--config", str(config), "--check"]).returncode == 0
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == 0, done.stderr[-2000:]
    roots = [tmp_path / "state" / n for n in "ab"]
    total = math.fsum(e["cost_usd"] for r in roots for e in read_log(r))
    assert 0.4 <= total <= 0.4 + 2 * 0.10 * (TERM_GRACE_S + 0.5), total
    assert {read_state(r)["status"] for r in roots} == {"stopped_budget"}


def test_a_window_cap_reached_by_the_live_meter_waits_for_the_next_window(
    tmp_path: Path,
) -> None:
    """Wall time at $6/min ($0.10/s), $0.20 per 4 s window, $0.50 lifetime: the live meter
    cuts the run at the window's cap, the target waits for the next window (not
    `stopped_budget` for good) and runs again there, until the lifetime cap stops it. Each
    window's spend stays within its cap plus one grace's cost."""
    argv = orchestrator_argv("slow", "--sleep", "30", "--no-cost")
    budget = {"max_cost_usd": 0.2, "window": "4s", "lifetime_max_cost_usd": 0.5,
              "cost_per_minute_usd": 6.0}  # fmt: skip
    config = fleet(tmp_path, budget, orchestrator=argv, term_grace_seconds=0.3)
    done = run_autoloopd(["--config", str(config)], timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = [e for n in "ab" for e in read_log(tmp_path / "state" / n)]
    window_cuts = [e for e in entries if "budget window's cap" in (e["error"] or "")]
    assert len(window_cuts) >= 2, entries
    events = json_lines(done.stdout)
    assert any(e.get("event") == "waiting_budget" for e in events)
    total = math.fsum(e["cost_usd"] for e in entries)
    assert 0.5 <= total <= 0.5 + 2 * 0.10 * (0.3 + 0.5), total
    assert {read_state(tmp_path / "state" / n)["status"] for n in "ab"} == {"stopped_budget"}


def test_status_shows_when_a_target_waiting_for_a_window_will_really_run(
    tmp_path: Path,
) -> None:
    """Dry runs ($0.05-0.25, at most $0.25 each) with a 1.2 s cooldown under a $0.25
    hourly window: once the window is full every target waits (`waiting_budget`), and
    `status` gives the window's end as its next run, not the cooldown's end, already past."""
    budget = {"max_cost_usd": 0.25, "window": "1h"}
    config = fleet(tmp_path, budget, dry_run=True, max_iteration_cost_usd=0.25,
                   cooldown_minutes=0.02, simulated_seconds=0.01)  # fmt: skip
    daemon = Daemon(config, tmp_path / "out.log")
    try:
        daemon.wait_event("waiting_budget", count=2, timeout=60)

        def waiting() -> list[dict[str, Any]] | None:
            rows = status_json(config)
            return rows if all(r["status"] == "waiting_budget" for r in rows) else None

        rows = wait_for(waiting, timeout=30, what="both targets waiting_budget")
        now = datetime.now(UTC)
        for row in rows:
            next_run = datetime.fromisoformat(row["next_run_at"].replace("Z", "+00:00"))
            assert next_run > now, row
            assert next_run.minute == 0 and next_run.second == 0, row  # the hour's end
    finally:
        assert daemon.stop() == 0


def test_the_run_that_crosses_the_cap_is_booked_and_counts_as_an_iteration(
    tmp_path: Path,
) -> None:
    """One target priced by wall time ($6/min) against a $0.10 target cap: its first run is
    stopped at the cap, booked with what it cost, and counts as the one iteration it was
    (the original script recorded 1 iteration and its cost, not 0)."""
    (tmp_path / "skill").mkdir()
    state_root = tmp_path / "state"
    cmd = " ".join(orchestrator_argv("slow", "--sleep", "30", "--no-cost"))
    done = run_autoloopd(
        ["--target", str(tmp_path / "skill"), "--state-root", str(state_root),
         "--orchestrator-cmd", cmd, "--term-grace-seconds", str(TERM_GRACE_S),
         "--cost-per-minute", "6", "--max-cost", "0.1", "--max-iterations", "5"],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [entry] = read_log(state_root)
    assert entry["status"] == "interrupted"
    assert 0.1 <= entry["cost_usd"] <= 0.1 + 0.10 * (TERM_GRACE_S + 0.5)
    state = read_state(state_root)
    assert state["status"] == "stopped_cost"
    assert state["iterations_completed"] == 1
    assert state["total_cost_usd"] == entry["cost_usd"]


def test_hard_guarantee_needs_a_worst_case_per_run(tmp_path: Path) -> None:
    """`guarantee = "hard"` without `max_iteration_cost_usd` is refused naming the key; so
    is a limit that the termination grace alone would use up."""
    config = fleet(tmp_path, {"max_cost_usd": 1.0, "guarantee": "hard"}, dry_run=True)
    done = run_autoloopd(["--config", str(config), "--check"])
    assert done.returncode == 78
    assert 'max_iteration_cost_usd: required with [budget] guarantee = "hard"' in done.stderr
    argv = orchestrator_argv("keep")
    budget = {"max_cost_usd": 1.0, "guarantee": "hard", "cost_per_minute_usd": 6.0}
    config = fleet(tmp_path, budget, orchestrator=argv, max_iteration_cost_usd=0.1,
                   term_grace_seconds=1.0)  # fmt: skip
    done = run_autoloopd(["--config", str(config), "--check"])
    assert done.returncode == 78
    assert "does not cover stopping a run" in done.stderr


def hard_fleet(tmp_path: Path, guarantee: str) -> float:
    """Four targets, four at once, runs that ignore SIGTERM (the whole 1 s grace is used)
    priced at $6/min, $0.30 per run at most, a $1.00 cap: what the fleet spent."""
    names = ["a", "b", "c", "d"]
    for name in names:
        (tmp_path / name).mkdir()
    config = write_config(
        tmp_path / "config.toml",
        daemon={"state_dir": str(tmp_path / "state"), "max_concurrent_iterations": 4},
        budget={"max_cost_usd": 1.0, "cost_per_minute_usd": 6.0, "guarantee": guarantee},
        defaults={"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 50,
                  "orchestrator": orchestrator_argv("trap-term", "--no-cost"),
                  "term_grace_seconds": 1.0, "max_iteration_cost_usd": 0.3,
                  "max_consecutive_errors": 50,
                  "backoff_base_seconds": 0, "backoff_max_seconds": 0},
        targets=[{"name": n, "path": n} for n in names],
    )  # fmt: skip
    done = run_autoloopd(["--config", str(config)], timeout=120)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return math.fsum(e["cost_usd"] for n in names for e in read_log(tmp_path / "state" / n))


def test_hard_guarantee_keeps_wall_time_spend_within_the_cap(tmp_path: Path) -> None:
    """Under `guarantee = "hard"` each run reserves its $0.30 worst case and is stopped early
    enough that its 1 s grace still fits: the fleet never passes its $1.00 cap."""
    total = hard_fleet(tmp_path, "hard")
    assert 0.5 <= total <= 1.0 + 1e-9, total


def test_hard_guarantee_books_and_flags_a_run_reporting_more_than_its_limit(
    tmp_path: Path,
) -> None:
    """Under `guarantee = "hard"` a run that reports $0.50 against a $0.20 limit is booked at
    $0.50 (money is never miscounted), recorded failed and its overage flagged."""
    argv = orchestrator_argv("keep", "--cost", "0.5")
    budget = {"max_cost_usd": 10.0, "guarantee": "hard", "cost_per_minute_usd": 0.0}
    config = fleet(tmp_path, budget, orchestrator=argv, max_iteration_cost_usd=0.2,
                   max_consecutive_errors=1)  # fmt: skip
    done = run_autoloopd(["--config", str(config)])
    assert done.returncode == 1, done.stderr[-2000:]  # the circuit breaker: status error
    for name in "ab":
        [entry] = read_log(tmp_path / "state" / name)
        assert entry["status"] == "failed" and entry["cost_usd"] == 0.5, entry
        assert entry["error"].startswith("overage: reported $0.5000"), entry
        assert read_state(tmp_path / "state" / name)["total_cost_usd"] == 0.5


def test_no_run_starts_after_its_deadline_once_the_slot_wait_ends(tmp_path: Path) -> None:
    """One concurrency slot, two targets whose deadline is 8 s away, each run lasting 12 s:
    one target runs (it started in time); the other waits for the slot past the deadline and
    must not start then. It stops `stopped_deadline` with no run (a queued run started
    0.64 s after its deadline before)."""
    deadline = datetime.now(UTC) + timedelta(seconds=8)
    argv = orchestrator_argv("slow", "--sleep", "12", "--cost", "0.05")
    for name in "ab":
        (tmp_path / name).mkdir()
    config = write_config(
        tmp_path / "config.toml",
        daemon={"state_dir": str(tmp_path / "state"), "max_concurrent_iterations": 1},
        budget={"max_cost_usd": 100.0},
        defaults={"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 5,
                  "orchestrator": argv, "estimated_cost_usd": 0.1,
                  "deadline": deadline.isoformat()},
        targets=[{"name": n, "path": n} for n in "ab"],
    )  # fmt: skip
    done = run_autoloopd(["--config", str(config)], timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = [e for n in "ab" for e in read_log(tmp_path / "state" / n)]
    assert len(entries) == 1, entries  # the second target never started
    started = datetime.fromisoformat(entries[0]["started_at"].replace("Z", "+00:00"))
    assert started < deadline, entries
    assert {read_state(tmp_path / "state" / n)["status"] for n in "ab"} == {"stopped_deadline"}


def test_fcfs_gives_every_target_its_turn_under_a_tight_budget(tmp_path: Path) -> None:
    """Six targets, two slots, $0.10 runs under a $0.40 window of 2 s and a $1.80 lifetime
    cap (18 runs): with `allocation = "fcfs"` a target queued for a slot holds no
    reservation and goes before one that just finished, so every target runs 3 times, give
    or take one (before: a few ran 9-13 times while others got one run)."""
    names = [f"t{i}" for i in range(6)]
    for name in names:
        (tmp_path / name).mkdir()
    argv = orchestrator_argv("slow", "--sleep", "0.1", "--cost", "0.1")
    config = write_config(
        tmp_path / "config.toml",
        daemon={"state_dir": str(tmp_path / "state"), "max_concurrent_iterations": 2},
        budget={"max_cost_usd": 0.4, "window": "2s", "lifetime_max_cost_usd": 1.8,
                "allocation": "fcfs"},
        defaults={"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 100,
                  "orchestrator": argv, "estimated_cost_usd": 0.1, "plateau_window": 0,
                  "oscillation_window": 0},
        targets=[{"name": n, "path": n} for n in names],
    )  # fmt: skip
    done = run_autoloopd(["--config", str(config)], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = {n: len(read_log(tmp_path / "state" / n)) for n in names}
    assert sum(counts.values()) == 18, counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_reported_costs_keep_each_window_and_the_lifetime_within_their_caps(
    tmp_path: Path,
) -> None:
    """Four targets on two slots, each run reporting $0.10 at its end (as estimated), a
    $0.30 window of 2 s and a $0.90 lifetime cap: both caps hold together at reservation,
    so no window's runs (grouped by `started_at`, as the ledger books them) cost more than
    $0.30, and the total is at most $0.90 (issue 20 saw $3.43 in one $1 window). Before fair
    turns a run reserved in one window waited for its slot and started, so was booked, in
    the next: $0.40 in a $0.30 window here."""
    names = [f"t{i}" for i in range(4)]
    for name in names:
        (tmp_path / name).mkdir()
    argv = orchestrator_argv("slow", "--sleep", "0.5", "--cost", "0.1")
    config = write_config(
        tmp_path / "config.toml",
        daemon={"state_dir": str(tmp_path / "state"), "max_concurrent_iterations": 2},
        budget={"max_cost_usd": 0.3, "window": "2s", "lifetime_max_cost_usd": 0.9},
        defaults={"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 100,
                  "orchestrator": argv, "estimated_cost_usd": 0.1, "plateau_window": 0,
                  "oscillation_window": 0},
        targets=[{"name": n, "path": n} for n in names],
    )  # fmt: skip
    done = run_autoloopd(["--config", str(config)], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = [e for n in names for e in read_log(tmp_path / "state" / n)]
    per_window: dict[int, float] = {}
    for e in entries:
        started = datetime.fromisoformat(e["started_at"].replace("Z", "+00:00")).timestamp()
        key = math.floor(started / 2)
        per_window[key] = per_window.get(key, 0.0) + e["cost_usd"]
    assert len(per_window) >= 3, per_window  # the lifetime cap spans several windows
    assert max(per_window.values()) <= 0.3 + 1e-9, per_window
    assert 0.9 - 1e-9 <= math.fsum(e["cost_usd"] for e in entries) <= 0.9 + 1e-9


def test_status_says_a_hard_cap_shrinks_concurrency(tmp_path: Path) -> None:
    """`guarantee = "hard"`, four slots, $0.40 worst case per run, $1.00 cap: only two runs
    fit at once, and `status` (text and JSON) says so while they run."""
    names = ["a", "b", "c", "d"]
    for name in names:
        (tmp_path / name).mkdir()
    config = write_config(
        tmp_path / "config.toml",
        daemon={"state_dir": str(tmp_path / "state"), "max_concurrent_iterations": 4,
                "shutdown_grace_seconds": 1.0},
        budget={"max_cost_usd": 1.0, "guarantee": "hard"},
        defaults={"mode": "continuous", "cooldown_minutes": 0, "max_iterations": 50,
                  "orchestrator": orchestrator_argv("slow", "--sleep", "30", "--cost", "0.1"),
                  "max_iteration_cost_usd": 0.4, "term_grace_seconds": 0.5},
        targets=[{"name": n, "path": n} for n in names],
    )  # fmt: skip
    daemon = Daemon(config, tmp_path / "out.log")
    try:
        daemon.wait_event("iteration_started", count=2, timeout=60)
        done = run_autoloopd(["status", "--config", str(config)], timeout=60)
        assert done.returncode == 0, done.stderr
        assert "hard cap: each run reserves its worst case $0.40" in done.stdout, done.stdout
        assert "at most 2 can run at once" in done.stdout, done.stdout
        raw = run_autoloopd(["status", "--config", str(config), "--json"], timeout=60)
        assert '"hard_runs_at_once": 2' in raw.stdout, raw.stdout[-2000:]
    finally:
        assert daemon.stop() == 0


def test_a_run_stopped_after_it_printed_its_result_is_booked_at_the_cost_it_stated(
    tmp_path: Path,
) -> None:
    """An orchestrator that printed its result ($0.06) but had not exited when the run was
    stopped is booked at the $0.06 it stated, not at its wall time ($60/min here, dollars
    by the time it is stopped), the way a lost lease's run that had finished is booked."""
    (tmp_path / "skill").mkdir()
    state_root = tmp_path / "state"
    cmd = " ".join(orchestrator_argv("linger", "--cost", "0.06"))
    proc = start_autoloopd(
        ["--target", str(tmp_path / "skill"), "--state-root", str(state_root),
         "--orchestrator-cmd", cmd, "--term-grace-seconds", str(TERM_GRACE_S),
         "--cost-per-minute", "60", "--max-iterations", "3", "--shutdown-grace-seconds", "0.5"],
        tmp_path / "out.log",
    )  # fmt: skip
    run_log = state_root / "runs" / "iteration-1.log"
    wait_for(
        lambda: run_log.is_file() and '"decision"' in run_log.read_text(errors="replace"),
        timeout=30, what="the result line in the run log",
    )  # fmt: skip
    stop(proc)
    [entry] = read_log(state_root)
    assert entry["status"] == "interrupted", entry
    assert entry["cost_usd"] == 0.06 and entry["cost_source"] == "reported", entry
    assert read_state(state_root)["total_cost_usd"] == 0.06


def test_a_run_stopped_by_a_lost_lease_says_so_and_keeps_its_stated_cost() -> None:
    """The entry of a run stopped because its host lost the lease names that stop (not
    "stopped by autoloopd shutdown") and, if it had printed its result, books that cost."""
    spec = TargetSpec("t", Path("/none"), Path("/none/state"), cost_per_minute_usd=60.0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    entry = build_entry(
        spec, 1, start, start + timedelta(seconds=60), 60.0, None,
        final_cost_usd=0.06, stopped_by=TargetStatus.LEASE_LOST,
    )  # fmt: skip
    assert entry.cost_usd == 0.06 and entry.cost_source == "reported"
    assert entry.error is not None and "lost the target's lease" in entry.error
    unstated = build_entry(spec, 1, start, start + timedelta(seconds=60), 60.0, None)
    assert unstated.cost_usd == 60.0 and unstated.error == INTERRUPTED_ERROR
