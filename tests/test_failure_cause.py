"""The real cause of a failure is shown: the last meaningful stderr line of a failed run (not
"orchestrator exited with code 3") reaches the WHY column of `status`, `--json`, the alert,
the journal event and the dashboard's rows, bounded and cleaned."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoloop_daemon.runs.failure_cause import MAX_CHARS, cause, cause_lines, with_cause
from tests.fakes.fake_orchestrator import RATE_LIMIT_TRACEBACK
from tests.helpers.control import target_status
from tests.helpers.daemon import Lab
from tests.helpers.fakes import fake
from tests.helpers.logs import json_lines, read_jsonl
from tests.helpers.process import run_autoloopd

RATE_LIMIT = "openai.RateLimitError: Error code: 429 - Rate limit reached for gpt-4o in org-x"
WHAT = f"orchestrator exited with code 3: {RATE_LIMIT}"


def test_the_cause_is_the_last_line_that_is_not_traceback_furniture() -> None:
    """Frames, code, carets, chain links, blanks and terminal escapes are skipped; lines are
    bounded; a stderr of nothing meaningful has no cause."""
    assert cause(RATE_LIMIT_TRACEBACK) == RATE_LIMIT
    assert cause_lines(RATE_LIMIT_TRACEBACK) == [
        "httpx.HTTPStatusError: Client error '429 Too Many Requests'",
        RATE_LIMIT,
    ]
    assert cause("Traceback (most recent call last):\n  File 'x'\n    ^^^^\n\n \t\n") is None
    assert with_cause("exited with code 3", "") == "exited with code 3"
    long = cause("x" * 100_000 + "\n")
    assert long is not None and len(long) == MAX_CHARS and long.endswith("…")
    assert cause("Error: a\x00b\x07c \x1b[1;31mred\x1b[0m\n") == "Error: abc red"
    assert cause("fatal: no\r\n") == "fatal: no"
    huge = "Error: the end\n" + "\n" * 1_000_000  # blank megabytes after it: not scanned whole
    assert cause(huge) is None


def test_a_run_that_dies_of_a_rate_limit_says_so_everywhere(tmp_path: Path) -> None:
    """A fake that prints a traceback ending in a RateLimitError-like line and exits 3, its
    breaker at 1: the journal's iteration_finished, the circuit_breaker alert, `status`'s WHY
    column (from the files) and --json's reason and last_error all carry the cause."""
    lab = Lab(tmp_path)
    out = tmp_path / "alerts.jsonl"
    sink = [sys.executable, fake("alert_sink.py"), str(out)]
    lab.write(
        [lab.target("limited", "rate-limit", max_consecutive_errors=1)],
        defaults={"mode": "single-run"},
        alerts=[{"events": ["circuit_breaker"], "command": sink}],
    )
    done = run_autoloopd(["--config", str(lab.config)], timeout=90)
    assert done.returncode == 1, done.stdout + done.stderr

    log = json_lines(done.stdout + done.stderr)
    (finished,) = [e for e in log if e["event"] == "iteration_finished"]
    assert finished["error"] == WHAT
    (stopped,) = [e for e in log if e["event"] == "target_stopped"]
    assert stopped["reason"].endswith(f"circuit breaker tripped; last: {WHAT}")
    (alert,) = read_jsonl(out)
    assert alert["event"] == "circuit_breaker" and WHAT in alert["reason"]
    assert RATE_LIMIT in alert["message"]
    entry = json.loads((lab.state_root("limited") / "iteration_log.jsonl").read_text())
    assert entry["error"] == WHAT and entry["exit_code"] == 3

    text = run_autoloopd(["status", "--config", str(lab.config)]).stdout
    (row,) = [line for line in text.splitlines() if line.startswith("limited")]
    assert row.endswith(f"last: {WHAT}"), row
    report = json.loads(run_autoloopd(["status", "--config", str(lab.config), "--json"]).stdout)
    (target,) = report["targets"]
    assert target["last_error"] == WHAT and target["reason"].endswith(WHAT)


def test_a_live_daemon_shows_the_cause_before_the_breaker_trips(tmp_path: Path) -> None:
    """One failure of three allowed, the target backing off: the daemon's row (what `status`
    and the dashboard read) has the cause as last_error, and `status` prints it as WHY."""
    lab = Lab(tmp_path)
    lab.write(
        [
            lab.target(
                "limited",
                "rate-limit",
                max_consecutive_errors=3,
                backoff_base_seconds=3600,
                backoff_max_seconds=3600,
            )
        ],
        daemon={"exit_when_idle": False},
    )
    daemon = lab.start()
    daemon.wait_event("iteration_finished", target="limited")
    daemon.wait_event("control_socket_listening")
    row = target_status(lab.state_dir / "autoloopd.sock", "limited")
    assert row["last_error"] == WHAT and row["consecutive_errors"] == 1
    text = run_autoloopd(["status", "--config", str(lab.config)]).stdout
    (line,) = [x for x in text.splitlines() if x.startswith("limited")]
    assert line.endswith(f"last error: {WHAT}"), line
    daemon.stop()
