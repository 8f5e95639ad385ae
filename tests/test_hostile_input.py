"""Hostile input through the real binary: broken configs, broken state files, odd names.

What a user (or a crash, or a full disk) can put in front of autoloopd, and what it must do:
a broken config exits 78 with ONE stderr line naming the file and the key; a state or log
file that cannot be read safely exits 65 naming it and is left byte-identical; a torn last
log line is cut off; a state root that cannot be written is a clear error, never a
traceback; a full disk during a checkpoint stops the target in `error` with the old state
intact; names and paths with spaces, quotes, `..`, unicode or shell syntax reach the
orchestrator as one literal argv element; a second owner of a state root is refused (75).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from autoloop_daemon.engine.admission import RankedSlots
from autoloop_daemon.engine.budget import SharedBudget
from autoloop_daemon.engine.events import EventBus
from autoloop_daemon.engine.target_runner import TargetRunner
from autoloop_daemon.models import TargetSpec
from autoloop_daemon.observers.journal import journal
from autoloop_daemon.storage.files import fsio
from autoloop_daemon.storage.files.store import FileTargetStore
from tests.helpers.audit import assert_invariants, read_state
from tests.helpers.config import TARGET_A, TARGET_B, in_table, in_target, write_config
from tests.helpers.fakes import orchestrator_argv, orchestrator_cmd
from tests.helpers.hostile import GOOD_STATE
from tests.helpers.logs import json_lines, read_jsonl, read_log
from tests.helpers.process import run_autoloopd, start_autoloopd, stop
from tests.helpers.wait import wait_for

EX_DATAERR, EX_IOERR, EX_TEMPFAIL, EX_CONFIG = 65, 74, 75, 78


def one_line(stderr: str) -> str:
    """The single line of `stderr` (failing if there are more or none)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


# === 1. broken configs through the binary ===================================================

# (id, content | "<directory>" | "<missing>", words the message must contain: key path first)
CONFIGS: list[tuple[str, str | bytes, str]] = [
    ("syntax-table-header", "[daemon\n" + TARGET_A, "line 1, column"),
    ("syntax-bare-word", TARGET_A + "max_iterations = five\n", "line 5, column"),
    ("syntax-duplicate-key", TARGET_A + 'name = "again"\n', "line 5"),
    ("syntax-unterminated", TARGET_A + 'orchestrator = ["x\n', "line 5"),
    ("empty-file", "", "targets: no [[targets]]"),
    ("whitespace-only", "\n   \n\t\n", "targets: no [[targets]]"),
    ("no-targets", "[daemon]\nlog_level = 'info'\n", "targets: no [[targets]]"),
    ("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "binary"),
    ("non-utf8", b"[daemon]\nlog_level = '\xc3\x28'\n" + TARGET_A.encode(), "not valid UTF-8"),
    ("byte-order-mark", "\ufeff" + TARGET_A, "byte-order mark"),
    ("directory", "<directory>", "is a directory"),
    ("missing", "<missing>", "no such file"),
    ("unknown-top", "colour = 'blue'\n" + TARGET_A, "colour: unknown key"),
    ("unknown-daemon", in_table("daemon", "state_dri = 'x'"), "daemon.state_dri: unknown key"),
    ("unknown-daemon-inline", "daemon = { levle = 1 }\n" + TARGET_A, "daemon.levle: unknown key"),
    ("unknown-budget", in_table("budget", "max_cost = 5.0"), "budget.max_cost: unknown key"),
    ("unknown-defaults", in_table("defaults", "cooldown = 5"), "defaults.cooldown: unknown key"),
    ("unknown-target", TARGET_A + TARGET_B + "max_cost = 5\n", "targets[1].max_cost: unknown key"),
    ("name-in-defaults", in_table("defaults", "path = 'a'"), "defaults.path: unknown key"),
    (
        "int-as-string",
        in_table("daemon", "max_concurrent_iterations = '4'"),
        "daemon.max_concurrent_iterations: must be an integer",
    ),
    ("bool-as-number", in_table("budget", "max_cost_usd = true"), "budget.max_cost_usd: must be"),
    ("table-as-number", "budget = 5\n" + TARGET_A, "budget: must be a table"),
    ("targets-as-string", 'targets = "a"\n', "targets: must be an array"),
    ("targets-as-table", '[targets]\nname = "a"\npath = "a"\n', "targets: must be an array"),
    (
        "orchestrator-as-string",
        in_target("orchestrator = 'python3 x.py --target {target}'"),
        "targets[0].orchestrator: must be an array",
    ),
    ("negative-cost", in_table("defaults", "max_cost_usd = -1"), "defaults.max_cost_usd: must be"),
    ("zero-iterations", in_target("max_iterations = 0"), "targets[0].max_iterations: must be"),
    (
        "zero-concurrency",
        in_table("daemon", "max_concurrent_iterations = 0"),
        "daemon.max_concurre",
    ),
    ("negative-grace", in_table("daemon", "shutdown_grace_seconds = -1"), "daemon.shutdown_grace"),
    ("float-1e400", in_table("budget", "max_cost_usd = 1e400"), "budget.max_cost_usd: must be"),
    ("int-10e30", in_target("max_iterations = 1" + "0" * 30), "targets[0].max_iterations: must"),
    ("huge-cooldown", in_target("cooldown_minutes = 1e30"), "targets[0].cooldown_minutes"),
    ("nan", in_target("min_improvement = nan"), "targets[0].min_improvement: must be a finite"),
    ("minus-inf", in_table("daemon", "shutdown_grace_seconds = -inf"), "daemon.shutdown_grace"),
    ("log-level", in_table("daemon", "log_level = 'loud'"), "daemon.log_level: must be one of"),
    ("weight-negative", in_target("weights = { accuracy = -2 }"), "targets[0].weights.accuracy"),
    ("path-missing", '[[targets]]\nname = "a"\npath = "nope"\n', "targets[0].path: no such"),
    ("path-is-file", '[[targets]]\nname = "a"\npath = "f"\n', "targets[0].path: not a dir"),
    ("path-absent", '[[targets]]\nname = "a"\n', "targets[0].path: required key missing"),
    ("state-root-is-file", TARGET_A + 'state_root = "f"\n', "targets[0].state_root: not a dir"),
    ("state-dir-is-file", in_table("daemon", "state_dir = 'f'"), "daemon.state_dir: not a dir"),
    (
        "duplicate-name",
        TARGET_A + TARGET_A.replace('path = "a"', 'path = "b"'),
        "targets[1].name: duplicate target name",
    ),
    (
        "shared-state-root",
        TARGET_A + 'state_root = "s/x"\n' + TARGET_B + 'state_root = "s/../s/x/"\n',
        "targets[1].state_root: ",
    ),
    (
        "state-root-is-anothers-default",
        "[daemon]\nstate_dir = 'st'\n" + TARGET_A + TARGET_B + 'state_root = "st/a"\n',
        "targets[1].state_root: ",
    ),
    ("cron-out-of-range", in_target("mode = 'scheduled'\nschedule = '61 * * * *'"), "schedule"),
    ("cron-words", in_target("mode = 'scheduled'\nschedule = 'every day'"), "targets[0].sched"),
    (
        "scheduled-no-cron",
        in_table("defaults", "mode = 'scheduled'"),
        "targets[0].schedule: required",
    ),
    (
        "orchestrator-empty",
        '[[targets]]\nname = "a"\npath = "a"\norchestrator = []\n',
        "targets[0].orchestrator: empty argv",
    ),
    (
        "orchestrator-empty-program",
        '[[targets]]\nname = "a"\npath = "a"\norchestrator = ["", "x"]\n',
        "targets[0].orchestrator[0]",
    ),
    (
        "placeholder-typo",
        in_target("orchestrator = ['x', '--t={tagret}']"),
        "targets[0].orchestrator[1]: unknown placeholder",
    ),
    ("env-bad-name", in_target("env = { 'A-B' = 'x' }"), "targets[0].env"),
    ("name-slash", TARGET_A.replace('name = "a"', 'name = "a/b"'), "targets[0].name"),
    ("name-dotdot", TARGET_A.replace('name = "a"', 'name = ".."'), "targets[0].name"),
]
# Valid files made invalid by an AUTOLOOPD_* variable (the key path and the variable named).
ENV_CASES: dict[str, dict[str, str]] = {
    "env-negative-cap": {"AUTOLOOPD_BUDGET__MAX_COST_USD": "-5"},
    "env-unknown-key": {"AUTOLOOPD_DAEMON__LEVLE": "info"},
}
CONFIGS += [
    ("env-negative-cap", TARGET_A, "budget.max_cost_usd: must be"),
    ("env-unknown-key", TARGET_A, "daemon.levle: unknown key"),
]


def _write_case(workdir: Path, case_id: str, content: str | bytes) -> Path:
    path = workdir / f"{case_id}.toml"
    if content == "<directory>":
        path.mkdir()
    elif content == "<missing>":
        pass
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]]:
    """Every broken config run through `--check` and the plain daemon, a few at a time."""
    workdir = tmp_path_factory.mktemp("configs")
    for name in ("a", "b"):
        (workdir / name).mkdir()
    (workdir / "f").write_text("a file, not a directory\n")
    paths = {case_id: _write_case(workdir, case_id, content) for case_id, content, _ in CONFIGS}

    def run(case_id: str, check: bool) -> subprocess.CompletedProcess[str]:
        args = ["--config", str(paths[case_id]), *(["--check"] if check else [])]
        return run_autoloopd(args, timeout=60, env=ENV_CASES.get(case_id))

    with ThreadPoolExecutor(max_workers=4) as pool:
        checks = {c: pool.submit(run, c, True) for c in paths}
        plain = {c: pool.submit(run, c, False) for c in paths}
        return {c: (paths[c], checks[c].result(), plain[c].result()) for c in paths}


def test_config_battery_is_large_enough() -> None:
    """At least 30 distinct broken configs go through the binary."""
    assert len({c[0] for c in CONFIGS}) == len(CONFIGS) >= 30


# The module fixture runs every config through the binary twice (~80 starts): its setup is
# charged to the first case and takes 40-90 s on 2 loaded cores, past the default timeout.
@pytest.mark.timeout(480)
@pytest.mark.parametrize(("case_id", "expected"), [(c[0], c[2]) for c in CONFIGS])
def test_broken_config_exits_78_with_one_line_naming_file_and_key(
    config_runs: dict[
        str, tuple[Path, subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]
    ],
    case_id: str,
    expected: str,
) -> None:
    """`--config F --check` and `--config F` both exit 78: one stderr line, file and key."""
    path, check, plain = config_runs[case_id]
    for mode, done in (("--check", check), ("daemon", plain)):
        assert done.returncode == EX_CONFIG, (mode, done.returncode, done.stderr)
        line = one_line(done.stderr)
        assert line.startswith(f"autoloopd: {path}: "), (mode, line)
        assert expected in line, (mode, line)
        assert done.stdout == "", (mode, done.stdout)
    assert check.stderr == plain.stderr
    if case_id in ENV_CASES:
        assert f"(from {next(iter(ENV_CASES[case_id]))})" in check.stderr, check.stderr


# === 2. state and log files ==================================================================


STATES: list[tuple[str, bytes, str]] = [
    ("not-json", b"this is not JSON\n", "not valid JSON"),
    ("truncated", json.dumps(GOOD_STATE).encode()[:57], "truncated JSON"),
    ("empty", b"", "empty file"),
    ("blank", b"  \n\n", "empty file"),
    ("json-list", b"[1, 2, 3]\n", "not a JSON object"),
    ("json-string", b'"state"\n', "not a JSON object"),
    ("wrong-type", json.dumps({**GOOD_STATE, "iterations_completed": "three"}).encode(),
     "iterations_completed"),
    ("bool-count", json.dumps({**GOOD_STATE, "iterations_completed": True}).encode(),
     "iterations_completed"),
    ("nan-cost", json.dumps({**GOOD_STATE, "total_cost_usd": math.nan}).encode(), "NaN"),
    ("history-not-list", json.dumps({**GOOD_STATE, "score_history": {}}).encode(),
     "score_history"),
    ("future-schema", json.dumps({**GOOD_STATE, "schema_version": "2.0"}).encode(),
     "newer autoloopd (schema 2.0)"),
    ("bad-schema", json.dumps({**GOOD_STATE, "schema_version": 1}).encode(), "schema_version"),
    ("non-utf8", b'{"schema_version": "1.0", "target": "\xff\xfe"}', "not UTF-8"),
]  # fmt: skip


def _one_target(tmp_path: Path, state_root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The seed-compatible one-target command line, dry run, fast."""
    skill = tmp_path / "skill"
    skill.mkdir(exist_ok=True)
    return run_autoloopd(
        [
            "--target",
            str(skill),
            "--state-root",
            str(state_root),
            "--dry-run",
            "--simulated-seconds",
            "0",
            "--log-format",
            "json",
            *extra,
        ],
        timeout=60,
    )


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (to prove nothing was touched). The daemon's
    own lock file counts by what it says: a released lock is blanks as long as the longest
    pid written there, so a 6-digit pid after a 5-digit one adds a blank (seen in CI)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root)): p.read_bytes().strip() if p.name == ".autoloopd.lock"
        else p.read_bytes()
        for p in files
    }  # fmt: skip


def test_state_battery_is_large_enough() -> None:
    """At least 7 kinds of broken state file are tried."""
    assert len({s[0] for s in STATES}) == len(STATES) >= 7


@pytest.mark.parametrize(
    ("content", "problem"), [s[1:] for s in STATES], ids=[s[0] for s in STATES]
)
def test_broken_state_file_exits_65_and_is_left_byte_identical(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """A state file that cannot be read safely: exit 65, one line naming it, bytes unchanged."""
    root = tmp_path / "state"
    root.mkdir()
    state_file = root / "autoloop_state.json"
    state_file.write_bytes(content)
    done = _one_target(tmp_path, root)
    assert done.returncode == EX_DATAERR, done.stderr
    line = one_line(done.stderr)
    assert f"{state_file}: " in line and problem in line, line
    assert "left untouched" in line
    assert state_file.read_bytes() == content
    assert not (root / "iteration_log.jsonl").exists()


def test_daemon_skips_a_target_with_a_broken_state_and_runs_the_others(tmp_path: Path) -> None:
    """In the daemon a corrupt state stops only its own target (named, left untouched)."""
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
    bad_root = tmp_path / "state" / "bad"
    bad_root.mkdir(parents=True)
    (bad_root / "autoloop_state.json").write_bytes(b'{"schema_version": "1.0", "total_')
    config = tmp_path / "c.toml"
    config.write_text(
        "[daemon]\nstate_dir = 'state'\nlog_format = 'json'\n"
        "[defaults]\nmode = 'single-run'\nmax_iterations = 2\ndry_run = true\n"
        "simulated_seconds = 0\n"
        "[[targets]]\nname = 'good'\npath = 'good'\n[[targets]]\nname = 'bad'\npath = 'bad'\n"
    )
    done = run_autoloopd(["--config", str(config)], timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr  # a target could not start
    assert "Traceback" not in done.stdout + done.stderr
    events = json_lines(done.stdout, strict=True)
    refused = [e for e in events if e["event"] == "target_not_started"]
    assert len(refused) == 1 and refused[0]["target"] == "bad", refused
    assert str(bad_root / "autoloop_state.json") in refused[0]["error"]
    assert "truncated JSON" in refused[0]["error"]
    assert (bad_root / "autoloop_state.json").read_bytes() == b'{"schema_version": "1.0", "total_'
    assert read_state(tmp_path / "state" / "good")["iterations_completed"] == 2
    assert_invariants(tmp_path / "state" / "good")


def _good_run(tmp_path: Path, iterations: int = 2) -> Path:
    root = tmp_path / "state"
    done = _one_target(tmp_path, root, "--max-iterations", str(iterations))
    assert done.returncode == 0, done.stderr
    assert len(read_log(root)) == iterations
    assert_invariants(root)
    return root


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda lines: [lines[0], b'{"iteration": 2, "cost_u', lines[1]], ":2: not valid JSON"),
        (lambda lines: [lines[0], lines[0], lines[1]], ":2: iteration 1 appears twice"),
        (lambda lines: [lines[1], lines[0]], ":1: iteration 2 out of order"),
        (lambda lines: [lines[0], b"", lines[1]], ":2: empty line"),
        (lambda lines: [lines[0], b"\xff\xfe", lines[1]], ":2: not UTF-8"),
        (lambda lines: [lines[0], b"[1]", lines[1]], ":2: log line is not a JSON object"),
    ],
    ids=["half-line", "duplicate", "out-of-order", "blank-line", "non-utf8", "not-object"],
)
def test_corrupt_log_line_before_the_last_exits_65_and_is_left_untouched(
    tmp_path: Path, mangle: Callable[[list[bytes]], list[bytes]], problem: str
) -> None:
    """Damage before the last log line is corruption, not a torn tail: refused, untouched."""
    root = _good_run(tmp_path)
    log_file = root / "iteration_log.jsonl"
    lines = log_file.read_bytes().splitlines()
    log_file.write_bytes(b"\n".join(mangle(lines)) + b"\n")
    before = _tree(root)
    done = _one_target(tmp_path, root, "--max-iterations", "4")
    assert done.returncode == EX_DATAERR, done.stderr
    line = one_line(done.stderr)
    assert f"{log_file}{problem}" in line, line
    assert _tree(root) == before


@pytest.mark.parametrize("torn", [b'{"iteration": 3, "started_at": "2025', b"{", b"\xff"])
def test_torn_last_log_line_is_cut_off_and_logged(tmp_path: Path, torn: bytes) -> None:
    """Half a line without a newline at the end: truncated, `log_tail_truncated`, run goes on."""
    root = _good_run(tmp_path)
    log_file = root / "iteration_log.jsonl"
    good = log_file.read_bytes()
    log_file.write_bytes(good + torn)
    done = _one_target(tmp_path, root, "--max-iterations", "3")
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stderr, strict=True)
    truncated = [e for e in events if e["event"] == "log_tail_truncated"]
    assert len(truncated) == 1 and truncated[0]["bytes"] == len(torn), events
    assert log_file.read_bytes().startswith(good)
    assert [e["iteration"] for e in read_log(root)] == [1, 2, 3]
    assert_invariants(root)
    assert "--- Iteration 3/3 ---" in done.stdout


def test_seed_era_state_without_schema_version_is_migrated(tmp_path: Path) -> None:
    """The original script's state (no schema_version, no log) continues from iteration 3."""
    root = tmp_path / "state"
    root.mkdir()
    history = [
        {"iteration": 1, "weighted_score": 0.55, "decision": "keep",
         "scores": {"accuracy": 0.5, "coverage": 0.6}, "timestamp": "2025-01-01T00:10:00+00:00"},
        {"iteration": 2, "weighted_score": 0.6, "decision": "reject",
         "scores": {"accuracy": 0.6, "coverage": 0.6}, "timestamp": "2025-01-01T00:20:00+00:00"},
    ]  # fmt: skip
    seed_state = {
        "target": str(tmp_path / "skill"),
        "started_at": "2025-01-01T00:00:00+00:00",
        "iterations_completed": 2,
        "max_iterations": 5,
        "total_cost_usd": 1.5,
        "max_cost_usd": 50.0,
        "current_scores": {"accuracy": 0.6, "coverage": 0.6},
        "score_history": history,
        "plateau_counter": 0,
        "plateau_window": 3,
        "status": "running",
        "last_failure_trace": None,
        "consecutive_errors": 0,
        "max_consecutive_errors": 3,
        "cooldown_minutes": 30,
        "next_run_at": None,
        "operator_note": {"kept": True},
    }
    (root / "autoloop_state.json").write_text(json.dumps(seed_state, indent=2))
    done = _one_target(tmp_path, root, "--max-iterations", "3", "--log-level", "info")
    assert done.returncode == 0, done.stderr
    assert "--- Iteration 3/3 ---" in done.stdout
    assert "--- Iteration 1/" not in done.stdout
    events = [e["event"] for e in json_lines(done.stderr, strict=True)]
    assert "state_migrated" in events and "log_seeded_from_state" in events, events
    log = read_log(root)
    assert [e["iteration"] for e in log] == [1, 2, 3]
    assert [e["status"] for e in log] == ["completed"] * 3
    assert [e["decision"] for e in log[:2]] == ["keep", "reject"]
    assert math.isclose(log[0]["cost_usd"] + log[1]["cost_usd"], 1.5)
    state = read_state(root)
    assert state["schema_version"] == "1.0"
    assert state["iterations_completed"] == 3
    assert math.isclose(state["total_cost_usd"], 1.5 + log[2]["cost_usd"])
    assert state["operator_note"] == {"kept": True}
    assert state["status"] == "stopped_max_iter"
    assert_invariants(root)


# === 3. a state root that cannot be written ==================================================


def test_state_root_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """ENOTDIR (root is not stopped by permissions): exit 74, one line, no traceback."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    done = _one_target(tmp_path, blocker / "state")
    assert done.returncode == EX_IOERR, done.stderr
    line = one_line(done.stderr)
    assert str(blocker / "state") in line and "Not a directory" in line, line
    assert blocker.read_text() == "a file\n"


def test_daemon_state_dir_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """The daemon's state_dir under a file: exit 74, one line naming it, no traceback."""
    (tmp_path / "a").mkdir()
    (tmp_path / "blocker").write_text("a file\n")
    config = tmp_path / "c.toml"
    config.write_text("[daemon]\nstate_dir = 'blocker/state'\nlog_format = 'json'\n" + TARGET_A)
    done = run_autoloopd(["--config", str(config)], timeout=60)
    assert done.returncode == EX_IOERR, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    line = one_line(done.stderr)
    assert str(tmp_path / "blocker" / "state") in line and "Not a directory" in line, line


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """`chattr +i` on `path` for the block (skips the test where that is not possible)."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.decode(errors='replace')}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], capture_output=True, check=True)


def test_immutable_state_root_is_a_clear_error(tmp_path: Path) -> None:
    """A state root even root cannot write (chattr +i): exit 74, one line, files untouched."""
    root = _good_run(tmp_path)
    (root / ".autoloopd.lock").unlink()  # so the lock file itself has to be created
    before = _tree(root)
    with _immutable(root):
        done = _one_target(tmp_path, root, "--max-iterations", "4")
    assert done.returncode == EX_IOERR, done.stderr
    line = one_line(done.stderr)
    assert str(root) in line and "Operation not permitted" in line, line
    assert _tree(root) == before


# === 4. disk full during a checkpoint (in-process) ===========================================


def _dry_spec(tmp_path: Path) -> TargetSpec:
    skill = tmp_path / "skill"
    skill.mkdir(exist_ok=True)
    return TargetSpec(
        name="full-disk",
        path=skill,
        state_root=tmp_path / "state",
        mode="single-run",
        max_iterations=4,
        plateau_window=100,
        oscillation_window=0,
        dry_run=True,
        simulated_seconds=0.0,
    )


async def _run_target(spec: TargetSpec) -> str:
    events = EventBus()
    events.subscribe(journal)
    runner = TargetRunner(
        spec,
        store=FileTargetStore(spec),
        budget=SharedBudget(100.0),
        slots=RankedSlots(1, fair_turns=True),
        events=events,
    )
    await runner.prepare()
    return await runner.run()


@pytest.mark.anyio
@pytest.mark.no_blocking
@pytest.mark.parametrize("good_writes", range(1, 15))
async def test_disk_full_during_a_checkpoint_stops_in_error_with_the_state_intact(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    captured: list[dict[str, Any]],
    good_writes: int,
) -> None:
    """ENOSPC after N good writes (state, run log, learner file, log line, handoff):
    run() returns "error" with `checkpoint_failed`; what is on disk stays consistent and a
    clean start afterwards recovers it."""
    spec = _dry_spec(tmp_path)
    real_write = fsio._write
    written: list[str] = []
    refused: list[str] = []

    def failing_write(fd: int, data: memoryview) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if len(written) >= good_writes:
            refused.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(target)
        return real_write(fd, data)

    monkeypatch.setattr(fsio, "_write", failing_write)
    status = await _run_target(spec)
    assert refused, "the full disk was never hit"
    assert status == "error", refused[0]
    failed = [e for e in captured if e["event"] == "checkpoint_failed"]
    assert len(failed) == 1, captured
    assert "No space left on device" in failed[0]["error"], failed

    root = spec.state_root
    state = read_state(root)  # the last good checkpoint, whole
    assert state["schema_version"] == "1.0"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")], "a temp file was left"
    log = read_log(root)  # no torn line
    assert [e["iteration"] for e in log] == list(range(1, len(log) + 1))
    completed = sum(1 for e in log if e["status"] == "completed")
    total = math.fsum(e["cost_usd"] for e in log)
    in_flight = state["in_flight"]
    exact = state["iterations_completed"] == completed and math.isclose(
        state["total_cost_usd"], total, abs_tol=1e-9
    )
    if not exact:
        # Only "the state lags the log by the run in flight", which start-up repairs.
        assert log and in_flight and in_flight["iteration"] == log[-1]["iteration"], state
        assert state["iterations_completed"] == completed - (log[-1]["status"] == "completed")

    monkeypatch.setattr(fsio, "_write", real_write)
    captured.clear()
    assert await _run_target(spec) == "stopped_max_iter"
    assert_invariants(root)
    assert read_state(root)["iterations_completed"] == 4
    assert read_state(root)["in_flight"] is None
    statuses = [e["status"] for e in read_log(root)]
    assert statuses.count("completed") == 4
    assert set(statuses) <= {"completed", "interrupted"}


# === 5. names, paths and shell syntax =======================================================

ODD_NAME = "技能 ünïcødé 'quoted' \"dq\""
INJECTIONS = ("x$(touch PWNED)", "`touch PWNED2`", "a; rm -rf b", "c && touch PWNED3 ||")


def _pwned(*places: Path) -> list[Path]:
    return [p for place in places for p in place.rglob("PWNED*")]


def _daemon_config(tmp_path: Path, targets: list[tuple[str, str, bool]]) -> Path:
    """Single-run targets (name, path as written, dry_run), the fake orchestrator recording."""
    argv = orchestrator_argv(
        "probe", "--record", str(tmp_path / "record.jsonl"), "--label={target}|{state_root}"
    )
    return write_config(
        tmp_path / "autoloopd.toml",
        daemon={"state_dir": "state", "log_format": "json"},
        defaults={"mode": "single-run", "max_iterations": 2, "orchestrator": argv},
        targets=[{"name": name, "path": path, "dry_run": dry} for name, path, dry in targets],
    )


def test_odd_names_and_paths_reach_the_orchestrator_as_one_argument(tmp_path: Path) -> None:
    """Spaces, quotes, `..` and unicode in names and paths: state roots made, argv exact."""
    (tmp_path / "skills" / "a b").mkdir(parents=True)
    (tmp_path / "skills" / ODD_NAME).mkdir()
    config = _daemon_config(
        tmp_path,
        [
            (ODD_NAME, "skills/../skills/a b", False),
            ("dry " + ODD_NAME, f"skills/{ODD_NAME}", True),
            ('quote\'s "and" spaces', f"./skills/../skills/{ODD_NAME}/", False),
        ],
    )
    done = run_autoloopd(["--config", str(config)], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    skill_ab = str((tmp_path / "skills" / "a b").resolve())
    skill_odd = str((tmp_path / "skills" / ODD_NAME).resolve())
    expected = {
        ODD_NAME: skill_ab,
        "dry " + ODD_NAME: skill_odd,
        'quote\'s "and" spaces': skill_odd,
    }
    state_dir = (tmp_path / "state").resolve()
    for name in expected:
        root = state_dir / name
        assert (root / "autoloop_state.json").is_file(), root
        assert_invariants(root)
        assert read_state(root)["iterations_completed"] == 2
    records = read_jsonl(tmp_path / "record.jsonl")
    assert len(records) == 4  # two real targets x two iterations; the dry one runs none
    for record in records:
        root = record["state_root"]
        name = Path(root).name
        assert Path(root) == state_dir / name and name in expected, record
        argv = record["argv"]
        assert argv[argv.index("--target") + 1] == expected[name]
        assert argv[argv.index("--state-root") + 1] == root
        assert f"--label={expected[name]}|{root}" in argv
        assert record["marker"] == f"{root}#{record['iteration']}"


def test_shell_syntax_in_paths_and_names_is_never_run(tmp_path: Path) -> None:
    """`$(...)`, backticks, `;` and `&&` in paths and names are passed literally, never run."""
    targets = []
    for i, text in enumerate(INJECTIONS):
        (tmp_path / "skills" / text).mkdir(parents=True)
        targets.append((f"t{i} {text}", f"skills/{text}", False))
    config = _daemon_config(tmp_path, targets)
    done = run_autoloopd(["--config", str(config)], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _pwned(tmp_path, Path.cwd()) == []
    assert (tmp_path / "skills" / "a; rm -rf b").is_dir()
    records = read_jsonl(tmp_path / "record.jsonl")
    assert len(records) == 2 * len(INJECTIONS)
    seen = set()
    for record in records:
        argv = record["argv"]
        target = argv[argv.index("--target") + 1]
        assert Path(target).name in INJECTIONS, target
        assert Path(target).parent == (tmp_path / "skills").resolve()
        assert Path(record["state_root"]).name.endswith(Path(target).name)
        seen.add(Path(target).name)
    assert seen == set(INJECTIONS)

    # The one-target command line splits --orchestrator-cmd like a shell, never runs one.
    skill = tmp_path / "skills" / INJECTIONS[0]
    cmd = orchestrator_cmd("keep", "--record", str(tmp_path / "one.jsonl"))
    done = run_autoloopd(
        ["--target", str(skill), "--state-root", str(tmp_path / "one$(touch PWNED4)"),
         "--orchestrator-cmd", cmd, "--max-iterations", "1"],
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((tmp_path / "one.jsonl").read_text())
    assert record["target"] == str(skill.resolve())
    assert record["state_root"] == str((tmp_path / "one$(touch PWNED4)").resolve())
    assert _pwned(tmp_path, Path.cwd()) == []


# === 6. two owners ===========================================================================


def test_second_owner_of_a_state_root_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """A second daemon on the same config, and a one-target run on a root the daemon owns,
    both exit 75 at once and name the holder's pid; the first daemon is unaffected."""
    (tmp_path / "skill").mkdir()
    config = tmp_path / "autoloopd.toml"
    config.write_text(
        "[daemon]\nstate_dir = 'state'\nlog_format = 'json'\n"
        "[defaults]\nmode = 'continuous'\ncooldown_minutes = 60\n"
        "[[targets]]\nname = 'a'\npath = 'skill'\ndry_run = true\nsimulated_seconds = 0\n"
    )
    out = tmp_path / "first.out"
    first = start_autoloopd(["--config", str(config)], out)
    wait_for(lambda: b'"daemon_ready"' in out.read_bytes(), what="daemon_ready")
    wait_for(lambda: b'"iteration_finished"' in out.read_bytes(), what="one iteration")
    started = time.monotonic()
    second = run_autoloopd(["--config", str(config)], timeout=30)
    assert second.returncode == EX_TEMPFAIL, second.stdout + second.stderr
    line = one_line(second.stderr)
    assert f"pid {first.pid}" in line and str((tmp_path / "state").resolve()) in line, line
    root = (tmp_path / "state" / "a").resolve()
    before = _tree(root)
    one = run_autoloopd(
        ["--target", str(tmp_path / "skill"), "--state-root", str(root), "--dry-run"],
        timeout=30,
    )
    assert time.monotonic() - started < 10, "refusals must be immediate"
    assert one.returncode == EX_TEMPFAIL, one.stdout + one.stderr
    line = one_line(one.stderr)
    assert f"pid {first.pid}" in line and str(root) in line, line
    assert _tree(root) == before
    assert first.poll() is None, "the first daemon must keep running"
    assert stop(first, signal.SIGTERM) == 0
    assert_invariants(root)
