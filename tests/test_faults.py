"""Orchestrator faults, end to end: each misbehaviour of the orchestrator has one exact outcome.

Every test runs the real `autoloopd` against a fake orchestrator (tests/fakes/) that fails in
one particular way, then checks what was logged, the state, the exit code, that DESIGN.md's
invariants hold and that no process of the run is left behind.
"""

from __future__ import annotations

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
from tests.helpers.fakes import orchestrator_cmd
from tests.helpers.logs import json_lines, read_jsonl, read_log
from tests.helpers.process import (
    pid_alive,
    proc_status_kb,
    read_pid,
    run_autoloopd,
    start_autoloopd,
)
from tests.helpers.wait import wait_for

TIMEOUT_MINUTES = 0.02  # 1.2 s
TIMEOUT_S = TIMEOUT_MINUTES * 60
TERM_GRACE_S = 1.0
MIB = 1024 * 1024
RSS_LIMIT_BYTES = 150 * 1000 * 1000


# --- helpers ---------------------------------------------------------------------------


def run_faulty(
    target: Path, state_root: Path, cmd: str, *extra: str, errors: int = 1
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run autoloopd once with orchestrator `cmd`; returns (completed process, seconds)."""
    args = [
        "--target",
        str(target),
        "--state-root",
        str(state_root),
        "--orchestrator-cmd",
        cmd,
        "--max-consecutive-errors",
        str(errors),
        "--retry-backoff-seconds",
        "0.05",
        "--iteration-timeout-minutes",
        str(TIMEOUT_MINUTES),
        "--term-grace-seconds",
        str(TERM_GRACE_S),
        *extra,
    ]
    t0 = time.monotonic()
    done = run_autoloopd(args, timeout=90)
    return done, time.monotonic() - t0


def assert_tripped(done: subprocess.CompletedProcess[str], state_root: Path) -> dict[str, Any]:
    """The circuit breaker tripped cleanly: exit 1, status error, no traceback."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert re.search(
        r"^Stopped: consecutive_errors exceeded \((\d+)/\1\): circuit breaker", done.stdout, re.M
    ), done.stdout
    state = read_state(state_root)
    assert state["status"] == "error"
    return state


def only_entry(state_root: Path) -> dict[str, Any]:
    entries = read_log(state_root)
    assert len(entries) == 1, entries
    return entries[0]


def run_once(
    target: Path, state_root: Path, cmd: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One iteration with orchestrator `cmd` that autoloopd finishes with exit 0; returns
    (completed process, the one log entry)."""
    done, _ = run_faulty(target, state_root, cmd, "--max-iterations", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    return done, only_entry(state_root)


def vm_hwm_bytes(pid: int) -> int | None:
    """The peak resident set size (VmHWM) of `pid`, or None once it is gone."""
    kb = proc_status_kb(pid).get("VmHWM")
    return None if kb is None else kb * 1024


# --- the orchestrator fails ----------------------------------------------------------------


def test_non_zero_exit_is_a_failed_run_with_its_exit_code_and_stderr_tail(
    tmp_path: Path,
) -> None:
    """Exit 7 -> a failed entry with exit_code 7; the breaker (1) trips: status error, exit 1,
    the trace has the exit code and the tail of stderr."""
    target, state_root = make_target(tmp_path)
    done, _ = run_faulty(target, state_root, orchestrator_cmd("crash", "--exit-code", "7"))
    state = assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed" and entry["exit_code"] == 7
    assert entry["error"] == "orchestrator exited with code 7: Pipeline error: boom"
    assert "exited with code 7" in state["last_failure_trace"]
    assert "Pipeline error: boom" in state["last_failure_trace"]
    assert state["iterations_completed"] == 0 and state["consecutive_errors"] == 1
    check_clean(state_root)


def test_orchestrator_killed_by_a_signal_is_reported_as_sigkill(tmp_path: Path) -> None:
    """An orchestrator that dies of SIGKILL -> failed, exit_code -9, error names SIGKILL."""
    target, state_root = make_target(tmp_path)
    done, _ = run_faulty(target, state_root, orchestrator_cmd("signal", "--signal", "KILL"))
    state = assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed" and entry["exit_code"] == -9
    assert "SIGKILL" in entry["error"]
    assert "SIGKILL" in state["last_failure_trace"]
    check_clean(state_root)


def test_hang_past_the_timeout_is_stopped_and_failed_as_timed_out(tmp_path: Path) -> None:
    """A hanging orchestrator is stopped after the 1.2 s timeout (it obeys SIGTERM, so no
    grace is needed): failed 'timed out', its process gone, duration within timeout+grace."""
    target, state_root = make_target(tmp_path)
    pid_file = tmp_path / "orch.pid"
    done, _ = run_faulty(target, state_root, orchestrator_cmd("hang", "--pid-file", str(pid_file)))
    state = assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed"
    assert "timed out" in entry["error"] and "timed out" in state["last_failure_trace"]
    assert not pid_alive(read_pid(pid_file))
    assert TIMEOUT_S <= entry["duration_seconds"] < TIMEOUT_S + TERM_GRACE_S + 1.0
    check_clean(state_root)


def test_orchestrator_trapping_sigterm_is_sigkilled_after_the_term_grace(tmp_path: Path) -> None:
    """An orchestrator that ignores SIGTERM is SIGKILLed after --term-grace-seconds: failed
    'timed out' after about timeout + grace, its SIGTERM complaint in the trace, pid gone."""
    target, state_root = make_target(tmp_path)
    pid_file = tmp_path / "orch.pid"
    done, _ = run_faulty(
        target, state_root, orchestrator_cmd("trap-term", "--pid-file", str(pid_file))
    )
    state = assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed" and "timed out" in entry["error"]
    assert "ignoring SIGTERM" in state["last_failure_trace"]
    assert not pid_alive(read_pid(pid_file))
    expected = TIMEOUT_S + TERM_GRACE_S
    assert expected <= entry["duration_seconds"] < expected + 1.5, entry["duration_seconds"]
    check_clean(state_root)


def test_grandchild_holding_stdout_open_does_not_hold_up_the_iteration(tmp_path: Path) -> None:
    """The orchestrator prints a result and exits while a grandchild (same process group)
    keeps its stdout open for an hour: the iteration completes (keep) promptly and the
    grandchild is stopped with the group."""
    target, state_root = make_target(tmp_path)
    grandchild_file = tmp_path / "grandchild.pid"
    done, elapsed = run_faulty(
        target,
        state_root,
        orchestrator_cmd("grandchild", "--grandchild-pid-file", str(grandchild_file)),
        "--max-iterations",
        "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entry = only_entry(state_root)
    assert entry["status"] == "completed" and entry["decision"] == "keep"
    assert entry["duration_seconds"] < 3.0
    assert elapsed < 10
    assert not pid_alive(read_pid(grandchild_file))
    check_clean(state_root)


def test_grandchild_that_left_the_group_does_not_hang_the_daemon(tmp_path: Path) -> None:
    """A grandchild that called setsid() escapes the group (systemd's cgroup catches it in
    production): the iteration still completes promptly instead of waiting on its pipe."""
    target, state_root = make_target(tmp_path)
    grandchild_file = tmp_path / "grandchild.pid"
    done, _ = run_faulty(
        target,
        state_root,
        orchestrator_cmd(
            "grandchild",
            "--grandchild-setsid",
            "--sleep",
            "60",
            "--grandchild-pid-file",
            str(grandchild_file),
        ),
        "--max-iterations",
        "1",
    )
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        entry = only_entry(state_root)
        assert entry["status"] == "completed" and entry["decision"] == "keep"
        assert entry["duration_seconds"] < 8.0
    finally:
        grandchild = read_pid(grandchild_file)
        if pid_alive(grandchild):  # it escaped on purpose: the test cleans it up
            os.kill(grandchild, signal.SIGKILL)
            wait_for(lambda: not pid_alive(grandchild), timeout=5, what="the grandchild to die")
    check_clean(state_root)


# --- the orchestrator prints no or a bad result -----------------------------------------------


@pytest.mark.parametrize(
    "behaviour",
    ["silent", "garbage"],
)
def test_no_result_is_a_failed_run_printed_no_result(tmp_path: Path, behaviour: str) -> None:
    """Nothing on stdout, or random bytes -> failed 'orchestrator printed no result'."""
    target, state_root = make_target(tmp_path)
    done, _ = run_faulty(target, state_root, orchestrator_cmd(behaviour, "--bytes", "20000"))
    state = assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed" and entry["exit_code"] == 0
    assert entry["error"] == "orchestrator printed no result"
    assert "printed no result" in state["last_failure_trace"]
    check_clean(state_root)


def test_truncated_json_result_line_is_no_result(tmp_path: Path) -> None:
    """A result line that is not valid JSON (cut short) is not a result: the run fails with
    'orchestrator printed no result' (DESIGN.md: only a JSON object line counts)."""
    target, state_root = make_target(tmp_path)
    script = tmp_path / "truncated.py"
    script.write_text(
        'print(\'working...\')\nprint(\'{"decision": "keep", "cost_usd": 0.1, "scores": {\')\n'
    )
    done, _ = run_faulty(target, state_root, shlex.join([sys.executable, str(script)]))
    assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed"
    assert entry["error"] == "orchestrator printed no result"
    check_clean(state_root)


@pytest.mark.parametrize(
    ("bad_field", "named"),
    [
        ("weighted_score", "weighted_score"),  # "high"
        ("cost_usd", "cost_usd"),  # -1.0
        ("nan", "weighted_score"),  # NaN
        ("score", "scores.accuracy"),  # 1.5
        ("scores", "scores"),  # a list
    ],
)
def test_invalid_result_field_fails_the_run_naming_the_field(
    tmp_path: Path, bad_field: str, named: str
) -> None:
    """A JSON result with one invalid field -> failed 'invalid result: <field>: ...'."""
    target, state_root = make_target(tmp_path)
    done, _ = run_faulty(target, state_root, orchestrator_cmd("bad-json", "--bad-field", bad_field))
    state = assert_tripped(done, state_root)
    entry = only_entry(state_root)
    assert entry["status"] == "failed"
    assert "invalid result" in entry["error"]
    assert f"invalid result: {named}:" in entry["error"], entry["error"]
    assert entry["cost_usd"] >= 0  # the reported (bad) cost is never charged
    assert f"invalid result: {named}:" in state["last_failure_trace"]
    check_clean(state_root)


@pytest.mark.parametrize(
    ("bad_field", "decision"),
    [("attempts", "keep"), ("decision", "maybe")],  # attempts "two"; an unknown word
)
def test_unused_attempts_or_an_unknown_decision_still_completes_the_iteration(
    tmp_path: Path, bad_field: str, decision: str
) -> None:
    """`attempts` is unused: a bad value never fails a good run. A decision word autoloopd
    does not know (a newer orchestrator's) is a completed iteration, recorded verbatim."""
    target, state_root = make_target(tmp_path)
    done, _ = run_faulty(
        target, state_root, orchestrator_cmd("bad-json", "--bad-field", bad_field),
        "--max-iterations", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Decision: {decision}  " in done.stdout
    entry = only_entry(state_root)
    assert (entry["status"], entry["decision"]) == ("completed", decision)
    assert read_state(state_root)["iterations_completed"] == 1
    check_clean(state_root)


# --- output volume and encoding -------------------------------------------------------------


def test_100_mb_of_output_is_streamed_to_the_run_log_with_bounded_memory(
    tmp_path: Path,
) -> None:
    """100 MiB of stdout, then a result: the run completes, runs/iteration-1.log holds the
    ~100 MiB, and autoloopd's peak RSS (VmHWM) stays under 150 MB."""
    target, state_root = make_target(tmp_path)
    out = tmp_path / "out.txt"
    proc = start_autoloopd(
        [
            "--target",
            str(target),
            "--state-root",
            str(state_root),
            "--orchestrator-cmd",
            orchestrator_cmd("megabytes", "--mb", "100"),
            "--max-iterations",
            "1",
            "--max-consecutive-errors",
            "1",
        ],
        out,
    )
    peak = 0
    deadline = time.monotonic() + 90
    while proc.poll() is None:
        hwm = vm_hwm_bytes(proc.pid)
        if hwm is not None:
            peak = max(peak, hwm)
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("autoloopd did not finish 100 MiB within 90 s")
        time.sleep(0.02)
    print(f"\nautoloopd peak RSS (VmHWM) with 100 MiB of output: {peak / MIB:.1f} MiB")
    assert proc.returncode == 0, out.read_text()[-2000:]
    entry = only_entry(state_root)
    assert entry["status"] == "completed" and entry["decision"] == "keep"
    size = (state_root / "runs" / "iteration-1.log").stat().st_size
    assert 100 * MIB <= size < 101 * MIB, size
    assert 0 < peak < RSS_LIMIT_BYTES, peak
    check_clean(state_root)


def test_invalid_utf8_before_the_result_still_completes(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 on stdout and stderr, then a result -> completed (keep); the
    run log keeps the raw bytes."""
    target, state_root = make_target(tmp_path)
    _, entry = run_once(target, state_root, orchestrator_cmd("invalid-utf8"))
    assert entry["status"] == "completed" and entry["decision"] == "keep"
    assert b"\xff\xfe invalid utf-8" in (state_root / "runs" / "iteration-1.log").read_bytes()
    check_clean(state_root)


# --- scores from learner files ---------------------------------------------------------------


def test_learner_file_written_by_the_run_gives_the_scores(tmp_path: Path) -> None:
    """A result without scores plus a fresh learner/iteration-1.json -> its final_scores."""
    target, state_root = make_target(tmp_path)
    _, entry = run_once(target, state_root, orchestrator_cmd("learner", "--scores", "0.66"))
    assert entry["scores"] == {"accuracy": 0.66, "coverage": 0.66}
    assert entry["weighted_score"] == pytest.approx(0.66)
    check_clean(state_root)


def test_learner_file_that_is_not_json_completes_without_scores_and_warns(
    tmp_path: Path,
) -> None:
    """A learner file that is not JSON: the run still completes (keep) with no scores
    (weighted_score null) and a `learner_file_unreadable` warning is logged."""
    target, state_root = make_target(tmp_path)
    done, entry = run_once(target, state_root, orchestrator_cmd("bad-learner"))
    assert entry["status"] == "completed" and entry["decision"] == "keep"
    assert entry["weighted_score"] is None and entry["scores"] == {}
    warnings = [e for e in json_lines(done.stderr) if e.get("event") == "learner_file_unreadable"]
    assert warnings and warnings[0]["level"] == "warning", done.stderr
    assert warnings[0]["path"].endswith("learner/iteration-1.json")
    check_clean(state_root)


# --- the target itself goes wrong -------------------------------------------------------------


def test_orchestrator_deleting_its_target_counts_then_trips_the_breaker(tmp_path: Path) -> None:
    """The run that deletes the target directory counts (keep); the next one fails with
    'target directory is missing' and the breaker trips: status error, exit 1, no crash."""
    target, state_root = make_target(tmp_path)
    done, _ = run_faulty(
        target, state_root, orchestrator_cmd("delete-target", "--scores", "0.5,0.6")
    )
    state = assert_tripped(done, state_root)
    assert not target.exists()
    entries = read_log(state_root)
    assert [(e["status"], e["decision"]) for e in entries] == [
        ("completed", "keep"),
        ("failed", None),
    ]
    assert "target directory is missing" in entries[1]["error"]
    assert "target directory is missing" in state["last_failure_trace"]
    assert state["iterations_completed"] == 1
    check_clean(state_root)


def test_placeholder_values_are_never_run_by_a_shell(tmp_path: Path) -> None:
    """A target and state root whose names hold shell syntax, quotes, braces and unicode
    reach the orchestrator as single argv elements, unchanged; nothing is executed."""
    name = "x; touch PWNED $(touch PWNED2) `touch PWNED3` \"dq\" 'sq' {iteration} ünï✓"
    target = tmp_path / name
    target.mkdir()
    state_root = tmp_path / "state && touch PWNED4 | {target}"
    record = tmp_path / "record.jsonl"
    cmd = orchestrator_cmd("keep", "--scores", "0.5,0.6", "--record", str(record))
    done, _ = run_faulty(target, state_root, cmd, "--max-iterations", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = read_jsonl(record)
    assert [r["iteration"] for r in runs] == [1, 2]
    for run in runs:
        assert run["target"] == str(target.resolve())
        assert run["state_root"] == str(state_root.resolve())
        argv = run["argv"]
        assert argv[argv.index("--target") + 1] == str(target.resolve())
    handoff = state_root.resolve() / "handoffs" / "iteration-1.md"
    assert runs[1]["source"] == [str(handoff)]
    assert not list(tmp_path.rglob("PWNED*"))  # target, state root and all
    for place in (Path.cwd(), Path.home(), Path("/tmp")):  # where a shell would have run
        assert not list(place.glob("PWNED*")), place
    check_clean(state_root)
