"""End-to-end tests of the one-target command line (the seed-compatible flags).

Every test runs the real `autoloopd` (`python -m autoloop_daemon`) as a subprocess against
the fake orchestrators in tests/fakes/, waits on conditions (files, /proc, exit) with
`wait_for` (tests/helpers), and ends by checking DESIGN.md's invariants and that no process of any
run is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.audit import check_clean, read_state
from tests.helpers.daemon import make_target
from tests.helpers.fakes import fake, fake_cmd, orchestrator_cmd
from tests.helpers.logs import json_lines, parse_ts, read_jsonl, read_log
from tests.helpers.process import (
    AUTOLOOPD,
    child_env,
    marked_processes,
    pid_alive,
    read_pid,
    run_autoloopd,
    start_autoloopd,
    stop,
)
from tests.helpers.wait import wait_for

SEED_STATE_FIELDS = (
    "schema_version",
    "target",
    "started_at",
    "iterations_completed",
    "max_iterations",
    "total_cost_usd",
    "max_cost_usd",
    "current_scores",
    "score_history",
    "plateau_counter",
    "plateau_window",
    "status",
    "last_failure_trace",
    "consecutive_errors",
    "max_consecutive_errors",
    "cooldown_minutes",
    "next_run_at",
)
SEED_HISTORY_FIELDS = ("iteration", "weighted_score", "decision", "scores", "timestamp")
LOG_FIELDS = (
    "iteration",
    "started_at",
    "finished_at",
    "decision",
    "weighted_score",
    "cost_usd",
    "duration_seconds",
    "candidate_id",
    "artifact_path",
)
HANDOFF_SECTIONS = ("## Decided", "## Rejected", "## Scores", "## Remaining")
DECISION_LINE = re.compile(
    r"^Decision: (keep|reject|revert|pending)  Weighted score: (\d\.\d{4}|n/a)  "
    r"Cumulative cost: \$\d+\.\d{4}$"
)
# Fields that legitimately differ between two otherwise identical runs.
VOLATILE_LOG_FIELDS = ("started_at", "finished_at", "duration_seconds")


# --- helpers ---------------------------------------------------------------------------


def cli(target: Path, state_root: Path, *extra: str) -> list[str]:
    """The one-target arguments plus `extra`."""
    return ["--target", str(target), "--state-root", str(state_root), *extra]


def run_with(
    target: Path, state_root: Path, cmd: str, *extra: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run autoloopd to completion with orchestrator command `cmd` plus `extra`."""
    return run_autoloopd(
        cli(target, state_root, "--orchestrator-cmd", cmd, *extra), timeout=timeout
    )


def start_with(
    target: Path, state_root: Path, cmd: str, *extra: str, out: Path
) -> subprocess.Popen[bytes]:
    """`run_with` in the background, its output going to `out`."""
    return start_autoloopd(cli(target, state_root, "--orchestrator-cmd", cmd, *extra), out)


def run_scored(
    target: Path, state_root: Path, scorer: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """One iteration of an orchestrator that reports no scores, scored by `scorer`."""
    return run_with(
        target,
        state_root,
        orchestrator_cmd("keep", "--no-scores"),
        "--scorer-cmd",
        scorer,
        "--max-iterations",
        "1",
        *extra,
    )


def start_hanging(
    tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, Path, int, Path]:
    """autoloopd (flags `extra`) on a new target whose orchestrator hangs, once that
    orchestrator runs: (autoloopd, target, state root, orchestrator pid, autoloopd's output)."""
    target, state_root = make_target(tmp_path)
    ready, pid_file, out = tmp_path / "ready", tmp_path / "orch.pid", tmp_path / "out.txt"
    cmd = orchestrator_cmd("hang", "--ready-file", str(ready), "--pid-file", str(pid_file))
    proc = start_with(target, state_root, cmd, *extra, out=out)
    wait_for(ready.exists, what="the orchestrator to start")
    return proc, target, state_root, read_pid(pid_file), out


def lines(text: str) -> list[str]:
    return text.splitlines()


def stable_log(state_root: Path) -> list[dict[str, Any]]:
    """The log without timestamps/durations and with the state root path made relative."""
    root = str(state_root.resolve())
    stable = []
    for entry in read_log(state_root):
        kept = {k: v for k, v in entry.items() if k not in VOLATILE_LOG_FIELDS}
        stable.append(json.loads(json.dumps(kept).replace(root, "<state_root>")))
    return stable


def logged_runs(state_root: Path) -> int:
    """How many lines the iteration log has now (0 while it is missing or being written)."""
    try:
        return len(read_log(state_root))
    except (OSError, ValueError, AssertionError):
        return 0


def state_now(state_root: Path) -> dict[str, Any]:
    """The state file now, or {} while it does not exist yet."""
    try:
        return read_state(state_root)
    except (OSError, ValueError):
        return {}


# --- the command itself ----------------------------------------------------------------


def test_help_exits_0_and_lists_the_seed_flags() -> None:
    """`python -m autoloop_daemon --help` prints usage with the seed's flags and exits 0."""
    done = run_autoloopd(["--help"], timeout=30)
    assert done.returncode == 0, done.stderr
    for flag in (
        "--target",
        "--state-root",
        "--max-iterations",
        "--max-cost",
        "--plateau-window",
        "--cooldown-minutes",
        "--mode",
        "--max-consecutive-errors",
        "--dry-run",
        "--retry-backoff-seconds",
        "--term-grace-seconds",
    ):
        assert flag in done.stdout


def test_dry_run_defaults_print_seed_lines_and_write_every_file(tmp_path: Path) -> None:
    """A default `--dry-run` prints the seed's lines, stops on a plateau, exits 0 and writes
    the state (schema 1.0, every seed field), the log, handoffs, run logs and learner files."""
    target, state_root = make_target(tmp_path)
    done = run_autoloopd(cli(target, state_root, "--dry-run"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = lines(done.stdout)
    assert out[0] == (
        f"Autoloop starting: target={target.resolve()}, mode=single-run, max_iter=5, "
        "max_cost=$50.00"
    )
    assert out[1] == "--- Iteration 1/5 ---"
    assert DECISION_LINE.match(out[2]), out[2]
    assert out[2].startswith("Decision: keep  Weighted score: 0.")
    assert "Stopped: plateau detected (no improvement in last 3 iterations)" in out
    state = read_state(state_root)
    best = max(h["weighted_score"] for h in state["score_history"])
    best_iteration = next(
        h["iteration"] for h in state["score_history"] if h["weighted_score"] == best
    )
    assert out[-6:] == [
        "=== Autoloop Summary ===",
        f"  Iterations: {state['iterations_completed']}/5",
        f"  Total cost: ${state['total_cost_usd']:.4f}",  # the simulator reports its cost
        "  Status: stopped_plateau",
        f"  Best score: {best:.4f} (iteration {best_iteration})",
        f"  State saved: {state_root.resolve() / 'autoloop_state.json'}",
    ]
    decision_lines = [line for line in out if line.startswith("Decision:")]
    assert all(DECISION_LINE.match(line) for line in decision_lines)

    for field in SEED_STATE_FIELDS:
        assert field in state, field
    assert state["schema_version"] == "1.0"
    assert state["status"] == "stopped_plateau"
    assert state["target"] == str(target.resolve())
    assert state["max_iterations"] == 5 and state["plateau_window"] == 3
    assert state["max_cost_usd"] == 50.0
    n = state["iterations_completed"]
    assert 4 <= n <= 5 and len(decision_lines) == n
    assert len(state["score_history"]) == n
    for item in state["score_history"]:
        for field in SEED_HISTORY_FIELDS:
            assert field in item, field

    entries = read_log(state_root)
    assert [e["iteration"] for e in entries] == list(range(1, n + 1))
    for entry in entries:
        for field in LOG_FIELDS:
            assert field in entry, field
        assert entry["status"] == "completed"
        assert 0 < entry["weighted_score"] < 1 and entry["cost_usd"] > 0
    for i in range(1, n + 1):
        handoff = (state_root / "handoffs" / f"iteration-{i}.md").read_text()
        positions = [handoff.index(section) for section in HANDOFF_SECTIONS]
        assert positions == sorted(positions), handoff
        assert (state_root / "runs" / f"iteration-{i}.log").stat().st_size > 0
        learner = json.loads((state_root / "learner" / f"iteration-{i}.json").read_text())
        assert learner["final_scores"]
    check_clean(state_root)


def test_dry_run_is_deterministic_for_a_seed_and_differs_between_seeds(tmp_path: Path) -> None:
    """Two fresh dry runs with the same --seed log the same iterations (timestamps and
    durations aside); a different seed gives a different log."""
    logs = []
    for run, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        base = tmp_path / run
        base.mkdir()
        target, state_root = make_target(base)
        done = run_autoloopd(
            cli(target, state_root, "--dry-run", "--seed", seed, "--simulated-seconds", "0.01")
        )
        assert done.returncode == 0, done.stderr
        check_clean(state_root)
        logs.append(stable_log(state_root))
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]


def test_continuous_mode_warns_about_the_default_cost_cap_only_without_max_cost(
    tmp_path: Path,
) -> None:
    """Continuous mode with the default cap prints the $50 warning; --max-cost silences it."""
    target, state_root = make_target(tmp_path)
    common = ("--dry-run", "--mode", "continuous", "--max-iterations", "1")
    done = run_autoloopd(cli(target, state_root, *common, "--simulated-seconds", "0.01"))
    assert done.returncode == 0, done.stderr
    warning = "Default $50 cap applies. For overnight runs, explicitly set --max-cost."
    assert lines(done.stdout)[0] == warning
    check_clean(state_root)

    other = tmp_path / "other"
    other.mkdir()
    target2, state_root2 = make_target(other)
    done = run_autoloopd(cli(target2, state_root2, *common, "--max-cost", "5"))
    assert done.returncode == 0, done.stderr
    assert warning not in done.stdout
    check_clean(state_root2)


# --- resuming ----------------------------------------------------------------------------


def test_resume_stops_at_max_iterations_refuses_a_rerun_and_continues_with_a_higher_limit(
    tmp_path: Path,
) -> None:
    """max 2 -> stopped_max_iter; the same command again -> "Not continuing", exit 0, no new
    log line; max 4 -> two more iterations, numbered 3 and 4."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.6,0.7,0.8")
    done = run_with(target, state_root, cmd, "--max-iterations", "2")
    assert done.returncode == 0, done.stderr
    assert "Stopped: max_iterations reached (2/2)" in done.stdout
    assert read_state(state_root)["status"] == "stopped_max_iter"
    assert len(read_log(state_root)) == 2
    log_bytes = (state_root / "iteration_log.jsonl").read_bytes()

    again = run_with(target, state_root, cmd, "--max-iterations", "2")
    assert again.returncode == 0, again.stderr
    assert "Not continuing" in again.stdout
    assert "--- Iteration" not in again.stdout
    assert (state_root / "iteration_log.jsonl").read_bytes() == log_bytes

    more = run_with(target, state_root, cmd, "--max-iterations", "4")
    assert more.returncode == 0, more.stderr
    assert "--- Iteration 3/4 ---" in more.stdout and "--- Iteration 4/4 ---" in more.stdout
    entries = read_log(state_root)
    assert [e["iteration"] for e in entries] == [1, 2, 3, 4]
    assert [e["weighted_score"] for e in entries] == [0.5, 0.6, 0.7, 0.8]
    state = read_state(state_root)
    assert state["status"] == "stopped_max_iter" and state["iterations_completed"] == 4
    check_clean(state_root)


# --- reading results, scores and cost ------------------------------------------------------


def test_json_result_gives_decision_scores_and_cost(tmp_path: Path) -> None:
    """A JSON result line's decision, candidate, artifact, scores and cost_usd are logged."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--scores", "0.61", "--cost", "0.25")
    done = run_with(target, state_root, cmd, "--max-iterations", "1")
    assert done.returncode == 0, done.stderr
    assert "Decision: keep  Weighted score: 0.6100  Cumulative cost: $0.2500" in done.stdout
    (entry,) = read_log(state_root)
    assert entry["status"] == "completed" and entry["decision"] == "keep"
    assert entry["cost_usd"] == 0.25
    assert entry["weighted_score"] == pytest.approx(0.61)
    assert entry["scores"] == {"accuracy": 0.61, "coverage": 0.61}
    assert entry["candidate_id"] == "cand-01"
    assert entry["artifact_path"] == f"{state_root.resolve()}/receipts/gate-0001.json"
    state = read_state(state_root)
    assert state["total_cost_usd"] == 0.25
    assert state["current_scores"] == {"accuracy": 0.61, "coverage": 0.61}
    check_clean(state_root)


def test_text_summary_result_costs_wall_time_at_the_rate_and_has_no_score(
    tmp_path: Path,
) -> None:
    """With only the text summary, cost = wall time x --cost-per-minute (> 0, consistent with
    duration_seconds) and weighted_score is null."""
    target, state_root = make_target(tmp_path)
    # $0.02 per second, so that the figures are not rounded away (a far higher rate would make
    # the first iteration's budget reservation, 10 minutes at the rate, exceed the $50 cap).
    rate_per_minute = 1.2
    # The orchestrator takes at least 0.5 s, so that its wall time dominates the iteration's.
    wrapper = tmp_path / "slow_summary.py"
    wrapper.write_text(
        "import os, sys, time\n"
        "time.sleep(0.5)\n"
        f"fake = {fake('fake_orchestrator.py')!r}\n"
        "argv = [sys.executable, fake, '--behaviour', 'summary', *sys.argv[1:]]\n"
        "os.execv(sys.executable, argv)\n"
    )
    cmd = shlex.join([sys.executable, str(wrapper), "--target", "{target}"])
    done = run_with(
        target, state_root, cmd, "--max-iterations", "1", "--cost-per-minute", str(rate_per_minute)
    )
    assert done.returncode == 0, done.stderr
    assert "Decision: keep  Weighted score: n/a" in done.stdout
    (entry,) = read_log(state_root)
    assert entry["status"] == "completed" and entry["decision"] == "keep"
    assert entry["candidate_id"] == "cand-01-skill"
    assert entry["weighted_score"] is None and entry["scores"] == {}
    duration = entry["duration_seconds"]
    assert duration >= 0.5
    assert entry["cost_usd"] >= 0.5 / 60 * rate_per_minute > 0
    # The charged wall time is the orchestrator's run, nearly all of the iteration's duration.
    assert entry["cost_usd"] <= duration / 60 * rate_per_minute + 1e-5
    assert entry["cost_usd"] >= 0.8 * duration / 60 * rate_per_minute
    check_clean(state_root)


def test_scorer_command_scores_a_result_without_scores_and_saves_learner_file(
    tmp_path: Path,
) -> None:
    """--scorer-cmd's final_scores become the iteration's scores (equal weights: the mean)
    and its output is saved as learner/iteration-1.json."""
    target, state_root = make_target(tmp_path)
    scorer = fake_cmd("fake_scorer.py", "--skill-path", "{target}", "--scores", "a=0.8,b=0.6")
    done = run_scored(target, state_root, scorer)
    assert done.returncode == 0, done.stderr
    (entry,) = read_log(state_root)
    assert entry["scores"] == {"a": 0.8, "b": 0.6}
    assert entry["weighted_score"] == pytest.approx(0.7)
    learner = json.loads((state_root / "learner" / "iteration-1.json").read_text())
    assert learner["final_scores"] == {"a": 0.8, "b": 0.6}
    check_clean(state_root)


def test_weights_change_the_weighted_score(tmp_path: Path) -> None:
    """--weights a=2,b=1 makes the weighted score (2 x 0.8 + 0.6) / 3."""
    target, state_root = make_target(tmp_path)
    scorer = fake_cmd("fake_scorer.py", "--scores", "a=0.8,b=0.6")
    done = run_scored(target, state_root, scorer, "--weights", "a=2,b=1")
    assert done.returncode == 0, done.stderr
    (entry,) = read_log(state_root)
    expected = (2 * 0.8 + 1 * 0.6) / 3
    assert entry["weighted_score"] == pytest.approx(expected, abs=1e-6)
    assert f"Weighted score: {expected:.4f}" in done.stdout
    assert read_state(state_root)["score_history"][0]["weighted_score"] == pytest.approx(
        expected, abs=1e-6
    )
    check_clean(state_root)


# --- handoffs ------------------------------------------------------------------------------


def test_handoff_of_the_previous_iteration_is_passed_with_source(tmp_path: Path) -> None:
    """Iteration 1 gets no --source; iteration 2 gets --source <state_root>/handoffs/
    iteration-1.md; --handoff-arg '' passes nothing."""
    target, state_root = make_target(tmp_path)
    record = tmp_path / "record.jsonl"
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.6", "--record", str(record))
    done = run_with(target, state_root, cmd, "--max-iterations", "2")
    assert done.returncode == 0, done.stderr
    runs = read_jsonl(record)
    assert [r["iteration"] for r in runs] == [1, 2]
    assert runs[0]["source"] == []
    handoff = state_root.resolve() / "handoffs" / "iteration-1.md"
    assert runs[1]["source"] == [str(handoff)]
    assert runs[1]["argv"][-2:] == ["--source", str(handoff)]
    check_clean(state_root)

    off = tmp_path / "off"
    off.mkdir()
    target2, state_root2 = make_target(off)
    record2 = tmp_path / "record2.jsonl"
    cmd2 = orchestrator_cmd("keep", "--scores", "0.5,0.6", "--record", str(record2))
    done = run_with(target2, state_root2, cmd2, "--max-iterations", "2", "--handoff-arg", "")
    assert done.returncode == 0, done.stderr
    runs2 = read_jsonl(record2)
    assert [r["iteration"] for r in runs2] == [1, 2]
    assert all(r["source"] == [] and "--source" not in r["argv"] for r in runs2)
    check_clean(state_root2)


def test_a_descriptor_the_daemon_inherited_does_not_reach_the_orchestrator(
    tmp_path: Path,
) -> None:
    """A stray descriptor left open (not close-on-exec) by whatever started autoloopd is not
    passed on to the orchestrator: posix_spawn cannot close it in the child the way
    subprocess's close_fds did, so the daemon marks it close-on-exec before its first run."""
    target, state_root = make_target(tmp_path)
    record = tmp_path / "record.jsonl"
    cmd = orchestrator_cmd("keep", "--record", str(record))
    args = cli(target, state_root, "--orchestrator-cmd", cmd, "--max-iterations", "1")
    stray = 57  # high enough that no descriptor of the orchestrator's own gets its number
    read_end, write_end = os.pipe()
    try:
        os.dup2(write_end, stray, inheritable=True)
        done = subprocess.run(
            [*AUTOLOOPD, *args],
            capture_output=True, text=True, timeout=60, env=child_env(),
            stdin=subprocess.DEVNULL, pass_fds=(stray,), check=False,
        )  # fmt: skip
    finally:
        for fd in (read_end, write_end, stray):
            os.close(fd)
    assert done.returncode == 0, done.stderr
    (run,) = read_jsonl(record)
    assert stray not in run["fds"], run["fds"]
    assert {0, 1, 2} <= set(run["fds"])  # what it is given: /dev/null and the two pipes


# --- stop conditions -----------------------------------------------------------------------


def test_alternating_keep_reject_with_rising_scores_stops_on_oscillation(tmp_path: Path) -> None:
    """keep, reject, keep, reject (scores still rising) -> stopped_oscillation after 4."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd(
        "sequence", "--decisions", "keep,reject", "--scores", "0.5,0.6,0.7,0.8,0.9"
    )
    done = run_with(target, state_root, cmd, "--max-iterations", "10")
    assert done.returncode == 0, done.stderr
    assert "Stopped: oscillation detected" in done.stdout
    state = read_state(state_root)
    assert state["status"] == "stopped_oscillation"
    entries = read_log(state_root)
    assert [e["decision"] for e in entries] == ["keep", "reject", "keep", "reject"]
    check_clean(state_root)


def test_min_improvement_turns_small_gains_into_a_plateau(tmp_path: Path) -> None:
    """Gains of 0.02 per iteration: with --min-improvement 0.05 (window 2) the loop stops on
    a plateau after 4 iterations; without it, it runs to --max-iterations."""
    scores = "0.5,0.6,0.62,0.64,0.66,0.68"
    results = {}
    for name, extra in (("strict", ("--min-improvement", "0.05")), ("plain", ())):
        base = tmp_path / name
        base.mkdir()
        target, state_root = make_target(base)
        done = run_with(
            target,
            state_root,
            orchestrator_cmd("keep", "--scores", scores),
            "--plateau-window",
            "2",
            "--max-iterations",
            "6",
            *extra,
        )
        assert done.returncode == 0, done.stderr
        results[name] = (read_state(state_root), done.stdout)
        check_clean(state_root)
    strict_state, strict_out = results["strict"]
    assert strict_state["status"] == "stopped_plateau"
    assert strict_state["iterations_completed"] == 4
    assert "Stopped: plateau detected (no improvement in last 2 iterations)" in strict_out
    plain_state, _ = results["plain"]
    assert plain_state["status"] == "stopped_max_iter"
    assert plain_state["iterations_completed"] == 6


# --- the circuit breaker -------------------------------------------------------------------


def test_circuit_breaker_trips_after_consecutive_crashes(tmp_path: Path) -> None:
    """Two crashes in a row with --max-consecutive-errors 2 -> exit 1, status error, the
    trace holds the exit code and 'Pipeline error: boom', failed runs' costs count, nothing
    completed."""
    target, state_root = make_target(tmp_path)
    done = run_with(
        target,
        state_root,
        orchestrator_cmd("crash"),
        "--max-consecutive-errors",
        "2",
        "--retry-backoff-seconds",
        "0.1",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Stopped: consecutive_errors exceeded (2/2)" in done.stdout
    state = read_state(state_root)
    assert state["status"] == "error"
    assert state["iterations_completed"] == 0
    assert state["consecutive_errors"] == 2
    trace = state["last_failure_trace"]
    assert "exited with code 3" in trace and "Pipeline error: boom" in trace
    entries = read_log(state_root)
    assert [(e["status"], e["exit_code"]) for e in entries] == [("failed", 3), ("failed", 3)]
    assert all(e["cost_usd"] > 0 for e in entries)
    assert state["total_cost_usd"] == pytest.approx(sum(e["cost_usd"] for e in entries))
    assert "Traceback" not in done.stderr
    check_clean(state_root)


def test_a_success_resets_the_consecutive_error_count(tmp_path: Path) -> None:
    """crash, keep, crash, keep, ... never trips --max-consecutive-errors 2: each keep resets
    the count, the loop ends at max iterations with exit 0."""
    target, state_root = make_target(tmp_path)
    wrapper = tmp_path / "alternate.py"
    wrapper.write_text(
        "import os, sys\n"
        "iteration = int(sys.argv[1])\n"
        "behaviour = 'crash' if iteration % 2 else 'keep'\n"
        f"fake = {fake('fake_orchestrator.py')!r}\n"
        "os.execv(sys.executable, [sys.executable, fake, '--behaviour', behaviour,"
        " '--iteration', str(iteration), *sys.argv[2:]])\n"
    )
    cmd = shlex.join([sys.executable, str(wrapper), "{iteration}"])
    done = run_with(
        target,
        state_root,
        cmd,
        "--max-consecutive-errors",
        "2",
        "--max-iterations",
        "3",
        "--retry-backoff-seconds",
        "0.05",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entries = read_log(state_root)
    assert [e["status"] for e in entries] == ["failed", "completed"] * 3
    state = read_state(state_root)
    assert state["status"] == "stopped_max_iter"
    assert state["iterations_completed"] == 3 and state["consecutive_errors"] == 0
    assert "(retry 1)" in done.stdout
    check_clean(state_root)


# --- scheduled mode --------------------------------------------------------------------------


def test_scheduled_mode_runs_exactly_one_iteration_per_invocation(tmp_path: Path) -> None:
    """--mode scheduled on the command line: one iteration, exit 0; the next call runs one
    more (cron starts each)."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.6,0.7")
    first = run_with(target, state_root, cmd, "--mode", "scheduled")
    assert first.returncode == 0, first.stderr
    assert "--- Iteration 1/5 ---" in first.stdout and "--- Iteration 2/5" not in first.stdout
    assert len(read_log(state_root)) == 1
    check_clean(state_root)
    second = run_with(target, state_root, cmd, "--mode", "scheduled")
    assert second.returncode == 0, second.stderr
    assert "--- Iteration 2/5 ---" in second.stdout and "--- Iteration 3/5" not in second.stdout
    assert [e["iteration"] for e in read_log(state_root)] == [1, 2]
    assert read_state(state_root)["iterations_completed"] == 2
    check_clean(state_root)


# --- the lock and the state file --------------------------------------------------------------


def test_second_autoloopd_on_a_locked_state_root_fails_at_once_naming_the_holder(
    tmp_path: Path,
) -> None:
    """While one autoloopd runs a (hanging) iteration, a second one on the same state root
    exits 75 at once and names the first one's pid."""
    first, target, state_root, _, _ = start_hanging(
        tmp_path, "--shutdown-grace-seconds", "0.5", "--term-grace-seconds", "1"
    )
    try:
        t0 = time.monotonic()
        second = run_with(target, state_root, orchestrator_cmd("keep"), timeout=20)
        elapsed = time.monotonic() - t0
        assert second.returncode == 75, second.stdout + second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert elapsed < 5
        assert first.poll() is None
    finally:
        assert stop(first) == 0
    entries = read_log(state_root)
    assert [e["status"] for e in entries] == ["interrupted"]
    check_clean(state_root)


def test_corrupt_state_file_exits_65_names_the_file_and_leaves_it_untouched(
    tmp_path: Path,
) -> None:
    """A state file that is not JSON -> exit 65, the message names the file, bytes unchanged."""
    target, state_root = make_target(tmp_path)
    state_root.mkdir()
    state_file = state_root / "autoloop_state.json"
    garbage = b'{"schema_version": "1.0", "iterations_completed": 3, '
    state_file.write_bytes(garbage)
    done = run_with(target, state_root, orchestrator_cmd("keep"))
    assert done.returncode == 65, done.stdout + done.stderr
    assert str(state_file.resolve()) in done.stderr
    assert "Traceback" not in done.stderr
    assert state_file.read_bytes() == garbage
    assert not (state_root / "iteration_log.jsonl").exists() or read_log(state_root) == []
    assert marked_processes(str(state_root.resolve())) == []


def test_unknown_fields_in_the_state_file_survive_a_run(tmp_path: Path) -> None:
    """Fields autoloopd does not know are kept through a load, run and save."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.6,0.7")
    done = run_with(target, state_root, cmd, "--max-iterations", "1")
    assert done.returncode == 0, done.stderr
    state = read_state(state_root)
    state["operator_note"] = {"owner": "qa", "tags": ["a", "b"]}
    state["x_custom_counter"] = 42
    (state_root / "autoloop_state.json").write_text(json.dumps(state))
    done = run_with(target, state_root, cmd, "--max-iterations", "2")
    assert done.returncode == 0, done.stderr
    after = read_state(state_root)
    assert after["iterations_completed"] == 2
    assert after["operator_note"] == {"owner": "qa", "tags": ["a", "b"]}
    assert after["x_custom_counter"] == 42
    check_clean(state_root)


# --- signals ----------------------------------------------------------------------------------


def test_sigint_lets_a_running_iteration_finish_within_the_grace_period(tmp_path: Path) -> None:
    """SIGINT while a 1 s orchestrator runs (grace 10 s): the iteration is recorded as
    completed, no new one starts, exit 0 long before the grace period ends."""
    target, state_root = make_target(tmp_path)
    ready = tmp_path / "ready"
    proc = start_with(
        target,
        state_root,
        orchestrator_cmd("slow", "--sleep", "1", "--ready-file", str(ready)),
        "--shutdown-grace-seconds",
        "10",
        out=tmp_path / "out.txt",
    )
    wait_for(ready.exists, what="the orchestrator to start")
    t0 = time.monotonic()
    assert stop(proc, signal.SIGINT, timeout=20) == 0
    assert time.monotonic() - t0 < 6
    entries = read_log(state_root)
    assert [(e["status"], e["decision"]) for e in entries] == [("completed", "keep")]
    state = read_state(state_root)
    assert state["iterations_completed"] == 1
    assert state["status"] == "stopped_signal"
    out = (tmp_path / "out.txt").read_text()
    assert "Decision: keep" in out and "--- Iteration 2/5" not in out
    check_clean(state_root)


def test_sigterm_with_a_hanging_orchestrator_records_it_interrupted_after_the_grace(
    tmp_path: Path,
) -> None:
    """SIGTERM, orchestrator hangs, grace 1 s: the run is stopped and logged 'interrupted'
    (its cost counted), exit 0 within a few seconds, its process is gone."""
    proc, _, state_root, orch_pid, _ = start_hanging(tmp_path, "--shutdown-grace-seconds", "1")
    t0 = time.monotonic()
    assert stop(proc, signal.SIGTERM, timeout=20) == 0
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 5, elapsed
    assert not pid_alive(orch_pid)
    (entry,) = read_log(state_root)
    assert entry["status"] == "interrupted" and entry["decision"] is None
    assert entry["cost_usd"] > 0
    state = read_state(state_root)
    assert state["iterations_completed"] == 0 and state["in_flight"] is None
    check_clean(state_root)


def test_second_sigint_skips_the_grace_period(tmp_path: Path) -> None:
    """A second SIGINT stops a hanging orchestrator at once instead of after the 30 s grace."""
    proc, _, state_root, orch_pid, out = start_hanging(
        tmp_path, "--shutdown-grace-seconds", "30", "--log-level", "info", "--log-format", "json"
    )
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    wait_for(
        lambda: any(e.get("event") == "shutdown_requested" for e in json_lines(out.read_text())),
        what="the first SIGINT to be handled",
    )
    assert stop(proc, signal.SIGINT, timeout=20) == 0
    assert time.monotonic() - t0 < 8
    assert not pid_alive(orch_pid)
    assert [e["status"] for e in read_log(state_root)] == ["interrupted"]
    events = [e.get("event") for e in json_lines(out.read_text())]
    assert "shutdown_forced" in events
    check_clean(state_root)


def test_sigterm_during_cooldown_exits_at_once_and_saves_next_run_at(tmp_path: Path) -> None:
    """Continuous mode, 10 min cooldown: SIGTERM during the cooldown exits 0 in < 3 s and
    the state keeps next_run_at (finished_at + 10 min)."""
    target, state_root = make_target(tmp_path)
    proc = start_with(
        target,
        state_root,
        orchestrator_cmd("keep"),
        "--mode",
        "continuous",
        "--cooldown-minutes",
        "10",
        "--max-cost",
        "5",
        out=tmp_path / "out.txt",
    )

    def cooling() -> bool:
        state = state_now(state_root)
        return state.get("status") == "cooldown" and state.get("iterations_completed") == 1

    wait_for(cooling, what="the first cooldown")
    t0 = time.monotonic()
    assert stop(proc, signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - t0 < 3
    state = read_state(state_root)
    (entry,) = read_log(state_root)
    assert state["next_run_at"] is not None
    gap = parse_ts(state["next_run_at"]) - parse_ts(entry["finished_at"])
    assert gap.total_seconds() == pytest.approx(600, abs=2)
    check_clean(state_root)


def test_restart_honours_next_run_at_from_an_interrupted_cooldown(tmp_path: Path) -> None:
    """A restart after SIGTERM during a 3 s cooldown waits until next_run_at before the
    next iteration instead of running at once."""
    target, state_root = make_target(tmp_path)
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.6,0.7")
    flags = (
        "--mode",
        "continuous",
        "--cooldown-minutes",
        "0.05",
        "--max-cost",
        "5",
        "--max-iterations",
        "2",
    )
    proc = start_with(target, state_root, cmd, *flags, out=tmp_path / "out1.txt")
    wait_for(lambda: logged_runs(state_root) == 1, what="the first iteration")
    assert stop(proc, signal.SIGTERM) == 0
    next_run_at = parse_ts(read_state(state_root)["next_run_at"])
    assert len(read_log(state_root)) == 1

    done = run_with(target, state_root, cmd, *flags)
    assert done.returncode == 0, done.stderr
    entries = read_log(state_root)
    assert [e["status"] for e in entries] == ["completed", "completed"]
    started_second = parse_ts(entries[1]["started_at"])
    assert started_second >= next_run_at
    check_clean(state_root)


def test_sigkill_mid_iteration_is_recovered_once_on_restart(tmp_path: Path) -> None:
    """autoloopd SIGKILLed while its orchestrator hangs: the death watch kills the
    orchestrator within its bound (runs/deathwatch.py) and marks the run log with that
    moment; the restart logs the run once as 'interrupted', charged up to that moment (not
    up to the run log's last output: CI once saw $0.00), then goes on with iteration 2;
    invariants hold and numbers have no gaps."""
    proc, target, state_root, orphan, _ = start_hanging(tmp_path, "--term-grace-seconds", "2")
    wait_for(
        lambda: (state_now(state_root).get("in_flight") or {}).get("iteration") == 1,
        what="the in-flight checkpoint",
    )
    quiet_from = time.monotonic()  # the run goes on without a word for half a second
    wait_for(lambda: time.monotonic() - quiet_from > 0.5, timeout=5, what="half a second")
    killed_at = time.time()
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: not pid_alive(orphan), timeout=5.0, what="the death watch's kill")

    done = run_with(
        target,
        state_root,
        orchestrator_cmd("keep"),
        "--max-iterations",
        "1",
        "--term-grace-seconds",
        "2",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not pid_alive(orphan)
    entries = read_log(state_root)
    assert [e["iteration"] for e in entries] == [1, 2]
    assert [e["status"] for e in entries] == ["interrupted", "completed"]
    assert entries[0]["cost_usd"] > 0 and entries[0]["decision"] is None
    assert "recovered at start" in entries[0]["error"]
    # the file system's clock is coarse (a tick behind the wall clock at most)
    assert parse_ts(entries[0]["finished_at"]).timestamp() >= killed_at - 0.05, entries[0]
    state = read_state(state_root)
    assert state["iterations_completed"] == 1 and state["in_flight"] is None
    assert state["total_cost_usd"] == pytest.approx(sum(e["cost_usd"] for e in entries))
    check_clean(state_root)
