"""Valid-but-hostile JSON and impossible money in the state file and the iteration log.

Through the real binary (`autoloopd --target DIR --state-root DIR --dry-run`): a log line
with a negative, non-finite or absurd `cost_usd` (above MAX_RUN_COST_USD, 1e9 USD: no cap
can be set higher), a negative or non-finite `duration_seconds`, a value of the wrong type
in any field, nesting too deep for the parser, `1e999` anywhere, in the state file or in a
log line, last line included: each is a corrupt file. Exit 65, one stderr line naming the
file (and the line), no traceback, every file left byte-identical. `autoloopd status` reports
such a state file unreadable (exit 1) instead of crashing. Before this, a log line with
`"cost_usd": -1000` gave `total_cost_usd` -999.99 and freed $1000 under the target's cap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.models import MAX_RUN_COST_USD, LogEntry
from autoloop_daemon.policy.cost import elapsed_cost_usd
from tests.helpers.audit import read_state
from tests.helpers.daemon import Lab
from tests.helpers.fakes import orchestrator_cmd
from tests.helpers.hostile import GOOD_STATE, one_stderr_line, run_one_target, snapshot
from tests.helpers.logs import read_log
from tests.helpers.process import run_autoloopd

EX_DATAERR = 65
DEEP = 100_000  # levels of nesting: far past what json's parser allows

# (id, field, raw JSON text of its value, words the one stderr line must hold)
LOG_CASES: list[tuple[str, str, str, str]] = [
    # item 4: money and time that no run can produce
    ("cost-negative", "cost_usd", "-1000", "cost_usd: negative: -1000.0"),
    ("cost-negative-cent", "cost_usd", "-0.01", "cost_usd: negative: -0.01"),
    ("cost-1e999", "cost_usd", "1e999", "number out of range 1e999"),
    ("cost-nan", "cost_usd", "NaN", "non-finite number NaN"),
    ("cost-minus-infinity", "cost_usd", "-Infinity", "non-finite number -Infinity"),
    ("cost-absurd", "cost_usd", "2e9", "cost_usd: 2000000000.0 is above 1,000,000,000"),
    ("cost-huge-int", "cost_usd", "1" + "0" * 400, "cost_usd: not a finite number"),
    ("cost-string", "cost_usd", '"0.5"', "cost_usd: not a number: '0.5'"),
    ("cost-null", "cost_usd", "null", "cost_usd: not a number: None"),
    ("duration-negative", "duration_seconds", "-5", "duration_seconds: negative: -5.0"),
    ("duration-1e999", "duration_seconds", "1e999", "number out of range 1e999"),
    # item 6: valid JSON, hostile values
    ("deep-nesting", "error", "[" * DEEP + "]" * DEEP, "nested too deeply"),
    ("huge-digits", "exit_code", "1" * 5000, "not valid JSON (Exceeds the limit"),
    ("decision-number", "decision", "5", "decision: not a string or null: 5"),
    ("decision-list", "decision", '["keep"]', "decision: not a string or null"),
    ("candidate-object", "candidate_id", "{}", "candidate_id: not a string or null"),
    ("artifact-number", "artifact_path", "3", "artifact_path: not a string or null"),
    ("error-list", "error", "[]", "error: not a string or null"),
    ("exit-code-string", "exit_code", '"3"', "exit_code: not an integer or null"),
    ("exit-code-float", "exit_code", "1.5", "exit_code: not an integer or null"),
    ("exit-code-bool", "exit_code", "true", "exit_code: not an integer or null"),
    ("score-string", "scores", '{"accuracy": "high"}', "scores.accuracy: not a number"),
    ("score-above-1", "scores", '{"accuracy": 2}', "scores.accuracy: 2.0 is outside 0..1"),
    ("score-1e999", "scores", '{"accuracy": 1e999}', "number out of range 1e999"),
    ("scores-list", "scores", "[0.5]", "scores: not an object"),
    ("weighted-above-1", "weighted_score", "7", "weighted_score: 7.0 is outside 0..1"),
    ("weighted-string", "weighted_score", '"high"', "weighted_score: not a number"),
    ("started-at-number", "started_at", "5", "started_at: not a string: 5"),
    ("status-unknown", "status", '"done"', "status: unknown value 'done'"),
    ("iteration-float", "iteration", "<n>.0", "iteration: not a positive integer"),
]
# Damage to a line before the last was always refused; these check the new values there too.
MIDDLE_CASES = {"cost-negative", "cost-absurd", "deep-nesting", "decision-number", "cost-1e999"}


def _hostile_line(line: bytes, field: str, raw: str, iteration: int) -> bytes:
    """`line` (one log entry) with `field`'s value replaced by the JSON text `raw`."""
    entry = json.loads(line)
    entry[field] = "@@HOSTILE@@"
    text = json.dumps(entry, separators=(",", ":"))
    return text.replace('"@@HOSTILE@@"', raw.replace("<n>", str(iteration))).encode()


@pytest.fixture(scope="module")
def good_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state root after two clean dry-run iterations (copied by each case)."""
    base = tmp_path_factory.mktemp("good")
    root = base / "state"
    done = run_one_target(base, root, "--max-iterations", "2")
    assert done.returncode == 0, done.stderr
    assert len(read_log(root)) == 2
    return root


@pytest.fixture(scope="module")
def log_runs(
    good_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, int, dict[str, bytes | str], subprocess.CompletedProcess[str]]]:
    """Every hostile log line, on the last line and (some) on the first of two, run through
    the binary a few at a time: (root, damaged line number, files before, the run)."""
    work = tmp_path_factory.mktemp("logs")
    jobs = [(case, "last") for case in LOG_CASES]
    jobs += [(case, "middle") for case in LOG_CASES if case[0] in MIDDLE_CASES]
    prepared = {}
    for (case_id, field, raw, _), where in jobs:
        key = f"{case_id}@{where}"
        root = work / key / "state"
        shutil.copytree(good_root, root)
        log_file = root / "iteration_log.jsonl"
        lines = log_file.read_bytes().splitlines()
        index = len(lines) - 1 if where == "last" else 0
        lines[index] = _hostile_line(lines[index], field, raw, index + 1)
        log_file.write_bytes(b"\n".join(lines) + b"\n")
        prepared[key] = (root, index + 1, snapshot(root))

    def run(key: str) -> subprocess.CompletedProcess[str]:
        root = prepared[key][0]
        return run_one_target(root.parent, root, "--max-iterations", "4")

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run, key) for key in prepared}
        return {key: (*prepared[key], futures[key].result()) for key in prepared}


@pytest.mark.parametrize(
    ("key", "expected"),
    [(f"{c[0]}@last", c[3]) for c in LOG_CASES]
    + [(f"{c[0]}@middle", c[3]) for c in LOG_CASES if c[0] in MIDDLE_CASES],
)
def test_hostile_log_line_exits_65_naming_file_and_line_and_touches_nothing(
    log_runs: dict[str, tuple[Path, int, dict[str, bytes | str], subprocess.CompletedProcess[str]]],
    key: str,
    expected: str,
) -> None:
    """A log line with an impossible cost or duration, a wrong type, `1e999` or nesting too
    deep is corruption even as the last line (a write cut short cannot produce a whole
    line): exit 65, one line "<log>:<n>: <field>: <problem>", every file byte-identical."""
    root, lineno, before, done = log_runs[key]
    assert done.returncode == EX_DATAERR, done.stdout + done.stderr
    line = one_stderr_line(done.stderr)
    assert f"{root / 'iteration_log.jsonl'}:{lineno}: " in line, line
    assert expected in line, line
    assert line.endswith("(left untouched)"), line
    assert snapshot(root) == before
    assert done.stdout == ""


def test_negative_cost_can_no_longer_free_money_under_the_cap(tmp_path: Path) -> None:
    """The issue's example: with a `-1000` line appended, the target used to resume with
    total_cost_usd -999.99 and $1000 more to spend; now it does not start at all, in the
    one-target form and in the daemon, where only that target is refused."""
    root = tmp_path / "state"
    assert run_one_target(tmp_path, root, "--max-iterations", "1").returncode == 0
    log_file = root / "iteration_log.jsonl"
    forged = dict(read_log(root)[0], iteration=2, cost_usd=-1000, status="failed")
    log_file.write_bytes(log_file.read_bytes() + json.dumps(forged).encode() + b"\n")
    before = snapshot(root)
    done = run_one_target(tmp_path, root, "--max-iterations", "5", "--max-cost", "1")
    assert done.returncode == EX_DATAERR, done.stderr
    assert f"{log_file}:2: cost_usd: negative: -1000.0" in one_stderr_line(done.stderr)
    assert snapshot(root) == before
    assert read_state(root)["total_cost_usd"] > 0

    lab = Lab(tmp_path / "daemon")
    bad_root = lab.state_root("bad")
    shutil.copytree(root, bad_root)
    (bad_root / ".autoloopd.lock").unlink()
    for name in ("good", "bad"):
        (lab.skills / name).mkdir()
    lab.write(
        [
            {"name": n, "path": str(lab.skills / n), "dry_run": True, "simulated_seconds": 0}
            for n in ("good", "bad")
        ],
        defaults={"mode": "single-run", "max_iterations": 2},
    )
    daemon = run_autoloopd(["--config", str(lab.config)], timeout=60)
    assert daemon.returncode == 1, daemon.stdout + daemon.stderr  # a target could not start
    assert "Traceback" not in daemon.stdout + daemon.stderr
    refused = [
        e for e in map(json.loads, daemon.stdout.splitlines()) if e["event"] == "target_not_started"
    ]
    assert [e["target"] for e in refused] == ["bad"]
    assert f"{bad_root / 'iteration_log.jsonl'}:2: cost_usd: negative" in refused[0]["error"]
    assert read_state(lab.state_root("good"))["iterations_completed"] == 2


def test_an_orchestrator_reporting_an_absurd_cost_fails_the_run_and_the_log_stays_readable(
    tmp_path: Path,
) -> None:
    """The writer never writes what the reader refuses: a result with cost_usd 2e9 fails the
    run ("cost_usd: ... is above 1,000,000,000"), charged its wall time instead, and the
    next start reads the log without complaint."""
    root = tmp_path / "state"
    cmd = orchestrator_cmd("keep", "--cost", "2e9")
    args = ("--orchestrator-cmd", cmd, "--max-consecutive-errors", "1", "--max-iterations", "1")
    done = run_one_target(tmp_path, root, *args)
    assert done.returncode == 1, done.stdout + done.stderr  # the circuit breaker tripped
    [entry] = read_log(root)
    assert entry["status"] == "failed"
    assert "cost_usd: 2000000000.0 is above 1,000,000,000" in entry["error"]
    assert 0 <= entry["cost_usd"] < 1
    again = run_one_target(tmp_path, root, *args)
    assert again.returncode != EX_DATAERR, again.stderr
    assert "Traceback" not in again.stdout + again.stderr


def test_log_entries_refuse_what_no_run_can_produce() -> None:
    """LogEntry checks itself when made, so no code path can write a line the reader
    refuses; the wall-time estimate is capped at the same bound."""
    base: dict[str, Any] = {
        "iteration": 1,
        "started_at": "s",
        "finished_at": "f",
        "status": "completed",
        "decision": "keep",
        "weighted_score": 0.5,
        "cost_usd": 0.1,
        "duration_seconds": 1.0,
    }
    LogEntry(**base)
    for field, value in [
        ("cost_usd", -1.0),
        ("cost_usd", float("inf")),
        ("cost_usd", MAX_RUN_COST_USD * 2),
        ("duration_seconds", float("nan")),
        ("weighted_score", 1.5),
        ("decision", 3),
        ("iteration", True),
        ("scores", {"a": -0.1}),
    ]:
        with pytest.raises(ValueError, match=field):
            LogEntry(**{**base, field: value})
    assert elapsed_cost_usd(60.0, 1e300) == MAX_RUN_COST_USD


# --- the state file ---------------------------------------------------------------------------


def _state_text(**fields: Any) -> str:
    return json.dumps({**GOOD_STATE, **fields})


def _with_raw(key: str, raw: str) -> bytes:
    """GOOD_STATE plus `"key": <raw JSON text>`."""
    return _state_text(**{key: "@@RAW@@"}).replace('"@@RAW@@"', raw).encode()


HISTORY_ITEM = {"iteration": 1, "weighted_score": 0.5, "decision": "keep", "scores": {"a": 0.5}}
STATE_CASES: list[tuple[str, bytes, str]] = [
    ("deep-unknown-field", _with_raw("x", "[" * DEEP + "]" * DEEP), "nested too deeply"),
    ("deep-object", _with_raw("x", '{"a":' * DEEP + "1" + "}" * DEEP), "nested too deeply"),
    ("1e999-unknown-field", _with_raw("x", "1e999"), "number out of range 1e999"),
    ("minus-1e999-known", _with_raw("cooldown_minutes", "-1e999"), "number out of range"),
    ("huge-int-digits", _with_raw("x", "9" * 5000), "Exceeds the limit"),
    (
        "huge-int-score",
        _with_raw("best_weighted_score", "1" + "0" * 400),
        "best_weighted_score: expected a finite number",
    ),
    ("decision-number", _state_text(last_decision=5).encode(), "last_decision: expected a string"),
    (
        "negative-total",
        _state_text(total_cost_usd=-3).encode(),
        "total_cost_usd: expected a finite number >= 0",
    ),
    (
        "in-flight-string",
        _state_text(in_flight={"iteration": "2", "started_at": "x"}).encode(),
        "in_flight: expected an object",
    ),
    (
        "current-scores-string",
        _state_text(current_scores={"a": "x"}).encode(),
        "current_scores: expected an object of numbers",
    ),
    (
        "history-weighted-string",
        _state_text(score_history=[{**HISTORY_ITEM, "weighted_score": "high"}]).encode(),
        "score_history[0].weighted_score: expected a number within 0..1",
    ),
    (
        "history-score-above-1",
        _state_text(score_history=[HISTORY_ITEM, {**HISTORY_ITEM, "scores": {"a": 5}}]).encode(),
        "score_history[1].scores: expected an object of numbers within 0..1",
    ),
    (
        "history-decision-list",
        _state_text(score_history=[{**HISTORY_ITEM, "decision": ["keep"]}]).encode(),
        "score_history[0].decision: expected a string",
    ),
]


@pytest.mark.parametrize(
    ("content", "expected"), [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES]
)
def test_hostile_state_file_exits_65_and_status_reports_it_unreadable(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    """Deep nesting, 1e999 (in a known or an unknown field), numbers too big for a float and
    wrong types anywhere, score_history items included: exit 65, one line naming the file,
    bytes unchanged; `autoloopd status` says "unreadable" with the same reason (exit 1)."""
    root = tmp_path / "state"
    root.mkdir()
    state_file = root / "autoloop_state.json"
    state_file.write_bytes(content)
    done = run_one_target(tmp_path, root)
    assert done.returncode == EX_DATAERR, done.stdout + done.stderr
    line = one_stderr_line(done.stderr)
    assert f"{state_file}: " in line and expected in line, line
    assert state_file.read_bytes() == content
    assert not (root / "iteration_log.jsonl").exists()

    status = run_autoloopd(["status", "--state-root", str(root), "--json"], timeout=30)
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stderr == ""
    [row] = json.loads(status.stdout)["targets"]
    assert row["status"] == "unreadable" and expected in row["error"], row


def test_a_logless_state_with_an_absurd_cost_is_not_seeded_into_a_log(tmp_path: Path) -> None:
    """An old state without a log is migrated by writing its history into a new log; a cost
    that no run can have (5e9 for one iteration) is refused instead of written (exit 65)."""
    root = tmp_path / "state"
    root.mkdir()
    state_file = root / "autoloop_state.json"
    content = _state_text(iterations_completed=1, total_cost_usd=5e9).encode()
    state_file.write_bytes(content)
    done = run_one_target(tmp_path, root)
    assert done.returncode == EX_DATAERR, done.stdout + done.stderr
    line = one_stderr_line(done.stderr)
    assert f"{state_file}: cannot seed a log from it: cost_usd: 5000000000.0 is above" in line
    assert state_file.read_bytes() == content
    assert not (root / "iteration_log.jsonl").exists()
