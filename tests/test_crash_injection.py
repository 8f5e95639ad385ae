"""Crash injection: SIGKILL the real `autoloopd --config` at random instants, restart, repeat.

Four targets run continuously with fake orchestrators (a fast keeper, a rejecter, a decision
sequence and a long run that a kill nearly always interrupts). The daemon is SIGKILLed at a
random instant 0.05-0.6 s after it started (after `daemon_ready` for three starts in four,
after exec for the others, so some kills land in start-up and recovery), then restarted.
Checked, for every target:

* after every kill (the crash image): the state parses, the log has no duplicated or
  misnumbered line, and the state equals the log or lags it by exactly the run in flight;
* after every restart's `daemon_ready` (recovery done): the same with the state caught up,
  no orchestrator of an earlier daemon alive (recovery stops them by their AUTOLOOPD_RUN
  marker), and the shared budget exceeded by at most one iteration's cost;
* at the end, after a graceful SIGTERM: DESIGN.md's invariants exactly, nothing left
  running, and "interrupted" log entries (kills hit running iterations) with costs >= 0.

One variant never reaches the shared budget; the other reaches it part-way.

Default: 30 kills in the first variant, 10-20 more in the second (about 30 s together).
The long form, with the seed printed
so a failing run can be replayed (AUTOLOOPD_CRASH_SEED=...):

    AUTOLOOPD_CRASH_KILLS=1000 .venv/bin/pytest tests/test_crash_injection.py -m crash -s
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.audit import assert_invariants, counted_iterations, read_state
from tests.helpers.config import write_config
from tests.helpers.fakes import orchestrator_argv
from tests.helpers.logs import json_lines
from tests.helpers.process import marked_processes, pid_alive, proc_stat, start_autoloopd, stop

KILLS = int(os.environ.get("AUTOLOOPD_CRASH_KILLS", "30"))
SEED = int(os.environ.get("AUTOLOOPD_CRASH_SEED", str(random.SystemRandom().randrange(10**9))))
READY_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 5.0  # how long a live state may lag its log by the run in flight
# The shared budget of the variant that runs out of money: the keeper's runs ($0.05, about
# one per start) spend most of it, the long target's interrupted runs (TARGET_KEYS) the
# last cents, in 10-20 kills together.
CAP_USD = 0.41

pytestmark = [pytest.mark.crash, pytest.mark.timeout(max(120, 4 * KILLS + 90))]

# (name, fake orchestrator flags): all "slow" so that --sleep applies; decisions per run.
TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("keeper", ("--sleep", "0.02", "--decisions", "keep", "--cost", "0.05")),
    ("rejecter", ("--sleep", "0.05", "--decisions", "reject", "--cost", "0.03")),
    (
        "sequence",
        (
            "--sleep",
            "0.1",
            "--decisions",
            "keep,reject,keep,revert",
            "--scores",
            "0.4,0.5,0.6,0.7",
            "--cost",
            "0.08",
        ),
    ),
    ("long", ("--sleep", "1.5", "--decisions", "keep", "--cost", "0.2")),
)
# Per-target keys. A kill nearly always interrupts `long`, which is then charged its wall
# time at this rate ($0.005-0.01 a kill, where the default $0.10/min made it a tenth of
# that and the budget variant's last cents took dozens of kills to spend).
TARGET_KEYS: dict[str, dict[str, Any]] = {"long": {"cost_per_minute_usd": 1.0}}


# --- reading what is on disk --------------------------------------------------------------


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _snapshot(root: Path) -> tuple[bytes | None, bytes]:
    """(state, log) bytes such that the log did not change while the state was read."""
    for _ in range(200):
        before = _read(root / "iteration_log.jsonl") or b""
        state = _read(root / "autoloop_state.json")
        after = _read(root / "iteration_log.jsonl") or b""
        if before == after:
            return state, before
        time.sleep(0.002)
    raise AssertionError(f"{root}: the log never held still long enough to read")


@dataclass
class Check:
    """What one look at a state root found."""

    problems: list[str]
    lagging: bool = False  # the state is exactly one run (the one in flight) behind the log
    torn_bytes: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)


def _matches(state: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
    total = math.fsum(e["cost_usd"] for e in entries)
    completed = counted_iterations(entries)  # the run that crossed a cap counts too
    return (
        math.isclose(state.get("total_cost_usd", math.nan), total, abs_tol=1e-6)
        and state.get("iterations_completed") == completed
        and state.get("next_iteration") == len(entries) + 1
    )


def check_root(state_raw: bytes | None, log_raw: bytes, *, allow_torn: bool) -> Check:
    """DESIGN.md's invariants on one (state, log) pair, allowing the state-lags-log window."""
    torn = 0
    if log_raw and not log_raw.endswith(b"\n"):
        if not allow_torn:
            return Check([f"torn last log line: {log_raw[-80:]!r}"])
        torn = len(log_raw) - (log_raw.rfind(b"\n") + 1)
        log_raw = log_raw[: len(log_raw) - torn]
    lines = log_raw.splitlines()
    if len(set(lines)) != len(lines):
        return Check(["a log line appears twice"])
    try:
        entries = [json.loads(line) for line in lines]
    except ValueError as exc:
        return Check([f"log line does not parse: {exc}"])
    numbers = [e.get("iteration") for e in entries]
    if numbers != list(range(1, len(entries) + 1)):
        return Check([f"log iterations are not 1..n: {numbers}"])
    if state_raw is None:
        problems = [] if not entries else ["a log but no state file"]
        return Check(problems, torn_bytes=torn, entries=entries)
    try:
        state = json.loads(state_raw)
    except ValueError as exc:
        return Check([f"state file does not parse: {exc}"])
    if not isinstance(state, dict):
        return Check(["state file is not a JSON object"])
    in_flight = state.get("in_flight")
    flight_no = in_flight.get("iteration") if isinstance(in_flight, dict) else None
    if _matches(state, entries):
        if flight_no not in (None, len(entries) + 1):
            return Check([f"in_flight {flight_no} but {len(entries)} runs logged"])
        return Check([], torn_bytes=torn, entries=entries)
    if entries and flight_no == len(entries) and _matches(state, entries[:-1]):
        return Check([], lagging=True, torn_bytes=torn, entries=entries)
    total = math.fsum(e["cost_usd"] for e in entries)
    return Check(
        [
            f"state (completed {state.get('iterations_completed')}, cost "
            f"{state.get('total_cost_usd')}, next {state.get('next_iteration')}, in_flight "
            f"{flight_no}) matches neither the log ({len(entries)} runs, cost {total:.6f}) "
            "nor the log minus the run in flight"
        ],
        entries=entries,
    )


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): survives pid reuse, unlike the pid alone."""
    stat = proc_stat(pid)
    return None if stat is None else (pid, stat[19])


def _still_running(identity: tuple[int, str]) -> bool:
    return pid_alive(identity[0]) and _identity(identity[0]) == identity


# --- the daemon's own output --------------------------------------------------------------


def _events(out: Path) -> list[dict[str, Any]]:
    """The complete JSON lines the daemon printed (a killed one may leave half a last line)."""
    data = _read(out) or b""
    complete = data[: data.rfind(b"\n") + 1].decode(errors="replace")
    assert "Traceback" not in complete, f"{out}: {complete}"
    try:
        events = json_lines(complete, strict=True)
    except ValueError as exc:
        raise AssertionError(f"{out}: {exc}") from None
    for event in events:
        # A bug surfaces as target_crashed, or as an error a library (asyncio) logged.
        assert event.get("event") != "target_crashed", f"{out}: {event}"
        assert not (event.get("logger") and event.get("level") in ("error", "critical")), (
            f"{out}: {event}"
        )
    return events


def _has_event(out: Path, name: str) -> bool:
    return any(e.get("event") == name for e in _events(out))


# --- the scenario -------------------------------------------------------------------------


def write_daemon_config(tmp_path: Path, cap_usd: float) -> tuple[Path, Path, list[Path]]:
    """The daemon config; returns (config, state_dir, state roots)."""
    skills = tmp_path / "skills"
    state_dir = tmp_path / "state"
    targets = []
    for name, flags in TARGETS:
        (skills / name).mkdir(parents=True)
        argv = orchestrator_argv("slow", *flags, "--record", str(tmp_path / f"record-{name}.jsonl"))
        targets.append(
            {"name": name, "path": str(skills / name), "orchestrator": argv}
            | TARGET_KEYS.get(name, {})
        )
    config = write_config(
        tmp_path / "autoloopd.toml",
        daemon={
            "state_dir": str(state_dir),
            "max_concurrent_iterations": 3,  # fewer slots than targets: they contend
            "shutdown_grace_seconds": 5,
            "log_format": "json",
            "log_level": "info",
        },
        budget={"max_cost_usd": cap_usd},
        defaults={
            "mode": "continuous",
            "cooldown_minutes": 0.0005,
            "max_iterations": 10_000,
            "max_cost_usd": 1e6,
            "plateau_window": 1_000_000,
            "oscillation_window": 0,
            "term_grace_seconds": 2,
        },
        targets=targets,
    )
    return config, state_dir, [state_dir / name for name, _ in TARGETS]


@dataclass
class Tally:
    """What the run did and checked, printed at the end."""

    kills: int = 0
    kills_before_ready: int = 0
    self_exits: int = 0
    checks: int = 0
    crash_images_lagging: int = 0
    torn_tails: int = 0
    orphans_checked: int = 0


class CrashRun:
    """One config, killed and restarted over and over."""

    def __init__(self, tmp_path: Path, cap_usd: float, rng: random.Random) -> None:
        self.tmp_path = tmp_path
        self.cap_usd = cap_usd
        self.rng = rng
        self.config, self.state_dir, self.roots = write_daemon_config(tmp_path, cap_usd)
        self.tally = Tally()
        self.starts = 0
        self.outputs: list[Path] = []
        # Completed runs logged before the last kill: each must have its handoff once the
        # next start has recovered (the next iteration is handed the newest one).
        self.handoffs_due: dict[Path, list[int]] = {}

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.tmp_path / f"daemon-{self.starts:04d}.out"
        self.starts += 1
        self.outputs.append(out)
        return start_autoloopd(["--config", str(self.config)], out), out

    # -- checks

    def check_budget(self, entries_by_root: Iterable[list[dict[str, Any]]]) -> None:
        costs = [e["cost_usd"] for entries in entries_by_root for e in entries]
        spent = math.fsum(costs)
        largest = max(costs, default=0.0)
        assert spent <= self.cap_usd + largest + 1e-6, (
            f"shared budget overrun: spent {spent:.6f} > cap {self.cap_usd} + one run {largest}"
        )

    def check_crash_image(self) -> list[tuple[int, str]]:
        """After a kill: the files as the dead daemon left them; returns its live children."""
        all_entries = []
        for root in self.roots:
            state_raw, log_raw = _snapshot(root)
            found = check_root(state_raw, log_raw, allow_torn=True)
            assert not found.problems, f"crash image of {root}: {found.problems}"
            self.tally.checks += 1
            self.handoffs_due[root] = [
                e["iteration"] for e in found.entries if e.get("status") == "completed"
            ]
            self.tally.crash_images_lagging += found.lagging
            self.tally.torn_tails += found.torn_bytes > 0
            all_entries.append(found.entries)
        self.check_budget(all_entries)
        left = [_identity(pid) for pid in marked_processes(str(self.state_dir))]
        return [identity for identity in left if identity is not None]

    def check_recovered(
        self, proc: subprocess.Popen[bytes], leftovers: list[tuple[int, str]]
    ) -> None:
        """After daemon_ready: recovery is complete; the daemon may be running iterations."""
        for identity in leftovers:
            assert not _still_running(identity), (
                f"orchestrator {identity[0]} of an earlier daemon survived the restart"
            )
            self.tally.orphans_checked += 1
        for pid in marked_processes(str(self.state_dir)):
            stat = proc_stat(pid)
            if stat is not None and pid_alive(pid):
                assert int(stat[1]) == proc.pid, (
                    f"marked process {pid} (parent {stat[1]}) does not belong to the current "
                    f"daemon {proc.pid}"
                )
        all_entries = []
        for root in self.roots:
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            while True:
                state_raw, log_raw = _snapshot(root)
                found = check_root(state_raw, log_raw, allow_torn=False)
                assert not found.problems, f"{root} after recovery: {found.problems}"
                assert state_raw is not None, f"{root}: no state file after recovery"
                if not found.lagging:
                    break
                assert time.monotonic() < deadline, f"{root}: the state never caught up"
                time.sleep(0.005)
            missing = [
                n
                for n in self.handoffs_due.get(root, [])
                if not (root / "handoffs" / f"iteration-{n}.md").is_file()
            ]
            assert not missing, f"{root}: completed runs without a handoff: {missing}"
            self.tally.checks += 1
            all_entries.append(found.entries)
        self.check_budget(all_entries)

    # -- one cycle

    def cycle(self, leftovers: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], bool]:
        """Start, (check after ready,) kill at a random instant; returns (leftovers, exited)."""
        proc, out = self.start()
        started = time.monotonic()
        early = self.rng.random() < 0.25
        delay = self.rng.uniform(0.05, 0.6)
        kill_at = started + delay if early else None
        ready = False
        while True:
            now = time.monotonic()
            if not ready and _has_event(out, "daemon_ready"):
                ready = True
                self.check_recovered(proc, leftovers)
                if kill_at is None:
                    kill_at = time.monotonic() + delay
            if proc.poll() is not None:
                break
            if kill_at is not None and now >= kill_at:
                break
            assert now - started < READY_TIMEOUT_S, f"{out}: no daemon_ready"
            time.sleep(0.005)
        running_at_kill: list[tuple[int, str]] = []
        if proc.poll() is None:
            # The orchestrators alive at the kill: the death watch or the next start's
            # recovery must stop each of them, whichever gets there first.
            marked = (_identity(pid) for pid in marked_processes(str(self.state_dir)))
            running_at_kill = [identity for identity in marked if identity is not None]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            self.tally.kills += 1
            self.tally.kills_before_ready += not ready
            exited = False
        else:
            code = proc.wait()
            assert ready or _has_event(out, "daemon_ready"), f"{out}: exited before ready"
            if not ready:
                self.check_recovered(proc, leftovers)
            assert code == 0, f"{out}: exit code {code} without a kill"
            self.tally.self_exits += 1
            exited = True
        _events(out)  # no traceback, every complete line JSON
        if exited:
            return [], True
        # Recovery of the next start must stop what the dead daemon left running.
        survivors = set(self.check_crash_image()) | set(running_at_kill)
        return [*survivors, *(i for i in leftovers if _still_running(i))], False

    def finish(self, leftovers: list[tuple[int, str]]) -> None:
        """One more start, then a graceful SIGTERM: everything exact, nothing left running."""
        proc, out = self.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _has_event(out, "daemon_ready"):
            assert proc.poll() is None or _has_event(out, "daemon_ready"), f"{out}: died"
            assert time.monotonic() < deadline, f"{out}: no daemon_ready"
            time.sleep(0.005)
        self.check_recovered(proc, leftovers)
        time.sleep(0.3)
        code = proc.wait(timeout=30) if proc.poll() is not None else stop(proc)
        assert code == 0, f"{out}: exit code {code}"
        events = _events(out)
        assert events[-1]["event"] == "daemon_stopped", events[-1]
        all_entries = []
        for root in self.roots:
            assert_invariants(root)
            state_raw, log_raw = _snapshot(root)
            found = check_root(state_raw, log_raw, allow_torn=False)
            assert not found.problems and not found.lagging, (root, found.problems)
            state = read_state(root)
            assert state["in_flight"] is None, state["in_flight"]
            self.tally.checks += 1
            all_entries.append(found.entries)
        self.check_budget(all_entries)
        assert marked_processes(str(self.state_dir)) == [], "an orchestrator outlived the daemon"
        self.entries = all_entries

    def report(self, label: str) -> str:
        t = self.tally
        entries = [e for found in self.entries for e in found]
        interrupted = [e for e in entries if e.get("status") == "interrupted"]
        events = [e.get("event") for out in self.outputs for e in _events(out)]
        orphans = events.count("orphan_stopped")
        return (
            f"[{label}] seed {SEED}: {t.kills} kills ({t.kills_before_ready} before "
            f"daemon_ready), {t.self_exits} clean self-exits, {self.starts} starts, "
            f"{t.checks} invariant checks passed ({t.crash_images_lagging} crash images with the "
            f"state one run behind, {t.torn_tails} torn tails), {t.orphans_checked} orchestrators "
            f"running at a kill seen gone after restart ({orphans} stopped by recovery), "
            f"{events.count('handoff_restored')} lost handoffs restored, "
            f"{len(entries)} runs logged, {len(interrupted)} interrupted, "
            f"${math.fsum(e['cost_usd'] for e in entries):.4f} spent of ${self.cap_usd}"
        )


def test_sigkill_at_random_instants_keeps_every_invariant(tmp_path: Path) -> None:
    """KILLS SIGKILLs of a 4-target daemon: every crash image and every recovery is sound."""
    rng = random.Random(SEED)
    print(f"\ncrash injection seed {SEED} (AUTOLOOPD_CRASH_SEED), {KILLS} kills")
    run = CrashRun(tmp_path, cap_usd=1e6, rng=rng)
    leftovers: list[tuple[int, str]] = []
    while run.tally.kills < KILLS:
        leftovers, exited = run.cycle(leftovers)
        assert not exited, "the daemon stopped by itself though nothing limits it"
    run.finish(leftovers)
    print(run.report("no budget limit"))
    t = run.tally
    assert t.kills >= KILLS >= 1
    assert t.checks >= len(TARGETS) * (2 * KILLS - t.kills_before_ready)
    entries = [e for found in run.entries for e in found]
    interrupted = [e for e in entries if e.get("status") == "interrupted"]
    assert interrupted, "no kill hit a running iteration"
    assert all(e["cost_usd"] >= 0 for e in interrupted), interrupted
    assert t.orphans_checked > 0, (
        "no kill caught an orchestrator running: the orphan check is vacuous"
    )


def test_sigkill_while_the_shared_budget_runs_out(tmp_path: Path) -> None:
    """Kills before, around and after the shared cap is reached never overspend it."""
    rng = random.Random(SEED + 1)
    print(f"\ncrash injection (budget) seed {SEED}")
    run = CrashRun(tmp_path, cap_usd=CAP_USD, rng=rng)
    leftovers: list[tuple[int, str]] = []
    for _ in range(max(80, KILLS // 5)):
        leftovers, exited = run.cycle(leftovers)
        if exited:
            break
    else:
        pytest.fail(f"the shared budget was not reached after {run.tally.kills} kills")
    run.finish(leftovers)
    print(run.report(f"budget ${CAP_USD}"))
    assert run.tally.kills >= 3, "the budget ran out before the daemon could be killed"
    for root in run.roots:
        status = read_state(root)["status"]
        assert status == "stopped_budget", (root, status)
    spent = math.fsum(e["cost_usd"] for found in run.entries for e in found)
    assert spent >= CAP_USD - 0.2, f"stopped at ${spent:.4f}, well before the ${CAP_USD} cap"
