"""The cap is a promise (issue 10, money), end to end through the real binary.

Where the daemon can see money accrue (wall-time pricing, progress lines, a per-iteration
limit) no cap is passed by more than what the runs cost during their termination grace;
spending is never forgotten when targets are renamed or removed.
"""

from __future__ import annotations

import math
from pathlib import Path

from tests.helpers.audit import check_clean, read_state
from tests.helpers.config import write_config
from tests.helpers.daemon import make_target
from tests.helpers.fakes import orchestrator_argv, orchestrator_cmd
from tests.helpers.logs import json_lines, read_log
from tests.helpers.process import run_autoloopd

TERM_GRACE_S = 0.5


def one_target(target: Path, state_root: Path, cmd: str, *extra: str) -> list[str]:
    """The one-target form with a short termination grace and fast retries."""
    return [
        "--target", str(target), "--state-root", str(state_root), "--orchestrator-cmd", cmd,
        "--term-grace-seconds", str(TERM_GRACE_S), "--retry-backoff-seconds", "0",
        "--plateau-window", "100", "--oscillation-window", "0",
        *extra,
    ]  # fmt: skip


def logged_total(state_root: Path) -> float:
    """The sum of every logged cost."""
    return math.fsum(e["cost_usd"] for e in read_log(state_root))


def test_wall_time_priced_run_is_stopped_at_the_targets_cap(tmp_path: Path) -> None:
    """An orchestrator that reports no cost and runs for 30 s at $6/min ($0.10/s) against a
    $0.10 cap: stopped after ~1 s, recorded as interrupted and charged what it cost, the
    target stops `stopped_cost`, and the total passes the cap by at most the grace's cost."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("slow", "--sleep", "30", "--no-cost")
    done = run_autoloopd(
        one_target(target, state_root, cmd, "--cost-per-minute", "6", "--max-cost", "0.1"),
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entries = read_log(state_root)
    assert [e["status"] for e in entries] == ["interrupted"]
    assert "max_cost_usd" in entries[0]["error"]
    assert entries[0]["cost_source"] == "estimated"
    total = logged_total(state_root)
    grace_cost = 0.10 * (TERM_GRACE_S + 0.5)  # the grace, plus scheduling slack
    assert 0.1 <= total <= 0.1 + grace_cost, total
    assert read_state(state_root)["status"] == "stopped_cost"
    check_clean(state_root)


def test_per_iteration_limit_stops_a_run_live_and_fails_it(tmp_path: Path) -> None:
    """--max-iteration-cost 0.05 at $0.10/s: each run is stopped at ~0.5 s and fails (so the
    circuit breaker trips after 2, instead of retrying for ever)."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("slow", "--sleep", "30", "--no-cost")
    done = run_autoloopd(
        one_target(target, state_root, cmd, "--cost-per-minute", "6", "--max-cost", "50",
                   "--max-iteration-cost", "0.05", "--max-consecutive-errors", "2"),
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    entries = read_log(state_root)
    assert [e["status"] for e in entries] == ["failed", "failed"]
    assert all("max_iteration_cost_usd" in e["error"] for e in entries)
    assert all(0.05 <= e["cost_usd"] <= 0.05 + 0.10 * (TERM_GRACE_S + 0.5) for e in entries)
    assert read_state(state_root)["status"] == "error"


def test_progress_lines_give_the_live_cost(tmp_path: Path) -> None:
    """An orchestrator printing {"cost_usd": so far} every 0.1 s (+$0.05 each) and reporting
    its cost: with --max-iteration-cost 0.3 it is stopped when its own figure reaches it and
    charged what it said it had spent."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("progress-cost", "--progress-step", "0.05", "--progress-lines", "200")
    done = run_autoloopd(
        one_target(target, state_root, cmd, "--max-iteration-cost", "0.3",
                   "--max-consecutive-errors", "1", "--cost-per-minute", "0"),
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    [entry] = read_log(state_root)
    assert entry["status"] == "failed"
    assert entry["cost_source"] == "reported"
    # Stopped at the first line >= 0.30; lines printed during the grace may add a few steps.
    assert 0.3 <= entry["cost_usd"] <= 0.3 + 0.05 * (TERM_GRACE_S / 0.1 + 2), entry


def test_shared_cap_stops_every_running_wall_time_iteration(tmp_path: Path) -> None:
    """Four targets, four at once (each reserves $0.05), each run 30 s at $6/min with no
    reported cost, a $0.20 shared cap: the four runs are stopped together at ~0.5 s, every
    target ends
    stopped_budget and the fleet's total passes the cap by at most the grace's cost."""
    names = ["a", "b", "c", "d"]
    for name in names:
        (tmp_path / name).mkdir()
    config = tmp_path / "config.toml"
    write_config(
        config,
        daemon={"state_dir": str(tmp_path / "state"), "max_concurrent_iterations": 4},
        budget={"max_cost_usd": 0.2, "cost_per_minute_usd": 6.0},
        defaults={
            "mode": "single-run",
            "orchestrator": orchestrator_argv("slow", "--sleep", "30", "--no-cost"),
            "term_grace_seconds": TERM_GRACE_S,
            "estimated_cost_usd": 0.05,  # four reservations fit in the cap
        },
        targets=[{"name": n, "path": n} for n in names],
    )
    done = run_autoloopd(["--config", str(config)], timeout=60)
    assert done.returncode == 0, done.stdout[-3000:]
    roots = [tmp_path / "state" / n for n in names]
    total = math.fsum(logged_total(root) for root in roots)
    assert 0.2 <= total <= 0.2 + 4 * 0.10 * (TERM_GRACE_S + 0.5), total
    for root in roots:
        assert read_state(root)["status"] == "stopped_budget"
        assert [e["status"] for e in read_log(root)] == ["interrupted"]


def test_spending_of_renamed_and_removed_targets_stays_charged(tmp_path: Path) -> None:
    """A fleet spends $0.60 of a $1.00 cap; restarted with the same skills under new names
    on the same state_dir, the budget starts from $0.60 (not 0) and stops at the cap."""
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
    config = tmp_path / "config.toml"
    state_dir = tmp_path / "state"

    def run(names: dict[str, str], iterations: int) -> list[dict[str, object]]:
        write_config(
            config,
            daemon={"state_dir": str(state_dir)},
            budget={"max_cost_usd": 1.0},
            defaults={"mode": "single-run", "max_iterations": iterations,
                      "orchestrator": orchestrator_argv("keep", "--cost", "0.1"),
                      "plateau_window": 100, "oscillation_window": 0},
            targets=[{"name": n, "path": p} for n, p in names.items()],
        )  # fmt: skip
        done = run_autoloopd(["--config", str(config), "--log-format", "json"], timeout=60)
        assert done.returncode == 0, done.stdout[-3000:]
        return json_lines(done.stdout)

    run({"old-x": "x", "old-y": "y"}, 3)
    spent_first = logged_total(state_dir / "old-x") + logged_total(state_dir / "old-y")
    assert math.isclose(spent_first, 0.6)
    events = run({"new-x": "x", "new-y": "y"}, 10)
    ready = next(e for e in events if e["event"] == "daemon_ready")
    assert math.isclose(ready["spent_usd"], 0.6), ready
    spent_second = logged_total(state_dir / "new-x") + logged_total(state_dir / "new-y")
    assert spent_first + spent_second <= 1.0 + 1e-9
    assert {read_state(state_dir / n)["status"] for n in ("new-x", "new-y")} == {"stopped_budget"}
    # Moving the old state roots away does not free their money: the registry remembers.
    (state_dir / "old-x").rename(tmp_path / "elsewhere")
    events = run({"new-x": "x", "new-y": "y"}, 20)
    ready = next(e for e in events if e["event"] == "daemon_ready")
    assert ready["spent_usd"] >= spent_first + spent_second - 1e-9
