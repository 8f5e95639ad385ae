"""Helpers for end-to-end tests: run the real autoloopd, wait on conditions, check invariants
(and the config texts the config tests break)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import stat as stat_mod
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
FAKES = TESTS / "fakes"
AUTOLOOPD = [sys.executable, "-m", "autoloop_daemon"]

# A minimal valid target (for a config file next to directories `a` and `b`); the broken
# configs of the tests append to or replace parts of it.
TARGET_A = '[[targets]]\nname = "a"\npath = "a"\ndry_run = true\n'
TARGET_B = '[[targets]]\nname = "b"\npath = "b"\ndry_run = true\n'


def in_table(table: str, body: str) -> str:
    """A valid config (TARGET_A) with `body` in its [`table`] table."""
    return f"[{table}]\n{body}\n{TARGET_A}"


def in_target(body: str) -> str:
    """A valid config with `body` appended to its only target's table."""
    return f"{TARGET_A}{body}\n"


def fake(name: str) -> str:
    """Absolute path of a fake orchestrator script in tests/fakes/."""
    path = FAKES / name
    assert path.is_file(), f"no fake orchestrator {path}"
    return str(path)


def fake_cmd(name: str, *args: str) -> str:
    """A --orchestrator-cmd value running a fake with this interpreter."""
    return shlex.join([sys.executable, fake(name), *args])


def orchestrator_argv(behaviour: str, *args: str) -> list[str]:
    """argv of the fake orchestrator with `behaviour`, passing the placeholders through."""
    return [
        sys.executable,
        fake("fake_orchestrator.py"),
        "--behaviour",
        behaviour,
        "--target",
        "{target}",
        "--state-root",
        "{state_root}",
        "--iteration",
        "{iteration}",
        *args,
    ]


def orchestrator_cmd(behaviour: str, *args: str) -> str:
    """`orchestrator_argv` as one --orchestrator-cmd value."""
    return shlex.join(orchestrator_argv(behaviour, *args))


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an autoloopd under test (no systemd variables, no AUTOLOOPD_*)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTOLOOPD_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def make_target(tmp_path: Path, name: str = "skill") -> tuple[Path, Path]:
    """A target directory and a (not yet existing) state root under tmp_path."""
    target = tmp_path / name
    target.mkdir()
    return target, tmp_path / "state"


def run_autoloopd(
    args: Sequence[str], *, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run autoloopd to completion and capture its output."""
    return subprocess.run(
        [*AUTOLOOPD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        check=False,
    )


# Every background autoloopd of the running test, so that the teardown in conftest.py can
# kill what a failed test left running.
_started: list[subprocess.Popen[bytes]] = []


def start_autoloopd(
    args: Sequence[str], out: Path, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start autoloopd in the background with stdout+stderr going to `out` (remembered)."""
    handle = out.open("wb")
    try:
        proc = subprocess.Popen(
            [*AUTOLOOPD, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
        )
    finally:
        handle.close()
    _started.append(proc)
    return proc


def kill_leftovers(run_prefix: str | None) -> None:
    """SIGKILL every autoloopd started since the last call that still runs, then every
    process whose run marker starts with `run_prefix` (when given)."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if run_prefix is not None:
        for pid in marked_processes(run_prefix):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send `sig` and wait for the exit code (SIGKILL and fail if it does not come)."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"autoloopd did not exit within {timeout} s of {sig}") from None


def read_state(state_root: Path) -> dict[str, Any]:
    """The decoded autoloop_state.json."""
    data: dict[str, Any] = json.loads((state_root / "autoloop_state.json").read_text())
    return data


def read_log(state_root: Path) -> list[dict[str, Any]]:
    """The decoded lines of iteration_log.jsonl (asserting each line is whole JSON)."""
    path = state_root / "iteration_log.jsonl"
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path}: torn last line"
    # Split on \n only: a value may hold U+2028 and friends, which splitlines() splits on.
    return [json.loads(line) for line in raw.decode().split("\n")[:-1]]


def invariant_violations(state_root: Path) -> list[str]:
    """DESIGN.md's invariants for one state root; an empty list when they all hold."""
    problems: list[str] = []
    try:
        state = read_state(state_root)
    except (OSError, ValueError) as exc:
        return [f"state file does not parse: {exc}"]
    try:
        entries = read_log(state_root)
    except (AssertionError, ValueError) as exc:
        return [f"log does not parse: {exc}"]
    numbers = [e["iteration"] for e in entries]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"log iterations are not 1..n: {numbers}")
    total = sum(e["cost_usd"] for e in entries)
    if not math.isclose(state["total_cost_usd"], total, abs_tol=1e-6):
        problems.append(f"total_cost_usd {state['total_cost_usd']} != logged sum {total}")
    completed = sum(1 for e in entries if e.get("status", "completed") == "completed")
    if state["iterations_completed"] != completed:
        problems.append(f"iterations_completed {state['iterations_completed']} != {completed}")
    return problems


def assert_invariants(state_root: Path) -> None:
    """Fail with every violated invariant of `state_root`."""
    problems = invariant_violations(state_root)
    assert not problems, f"{state_root}: " + "; ".join(problems)


def check_clean(state_root: Path) -> None:
    """DESIGN.md's invariants hold and no process of any run of `state_root` is left."""
    assert_invariants(state_root)
    assert marked_processes(str(state_root.resolve())) == []


def _pid_is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def pid_alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _pid_is_zombie(pid)


def marked_processes(prefix: str) -> list[int]:
    """Live pids whose AUTOLOOPD_RUN marker starts with `prefix` (a state root path)."""
    found = []
    needle = f"AUTOLOOPD_RUN={prefix}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")) and pid_alive(
            int(entry.name)
        ):
            found.append(int(entry.name))
    return found


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines (structlog writes JSON when not on a terminal) among `text`."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def read_pid(path: Path) -> int:
    """The pid a fake wrote to `path`."""
    return int(path.read_text())


def run_one_target(
    tmp_path: Path, state_root: Path, *extra: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """The seed-compatible one-target command line on `tmp_path/skill`: a fast dry run with
    JSON logs on stderr, unless `extra` says otherwise (e.g. --orchestrator-cmd)."""
    skill = tmp_path / "skill"
    skill.mkdir(exist_ok=True)
    dry = [] if "--orchestrator-cmd" in extra else ["--dry-run", "--simulated-seconds", "0"]
    return run_autoloopd(
        [
            "--target",
            str(skill),
            "--state-root",
            str(state_root),
            *dry,
            "--log-format",
            "json",
            *extra,
        ],
        timeout=timeout,
    )


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root`: a regular file's bytes, else its kind ("fifo", "dir", ...)
    (to prove that nothing was touched, special files included)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = str(path.relative_to(root))
        if stat_mod.S_ISREG(mode):
            found[rel] = path.read_bytes()
        else:
            kinds = {
                stat_mod.S_ISDIR: "dir",
                stat_mod.S_ISFIFO: "fifo",
                stat_mod.S_ISSOCK: "socket",
                stat_mod.S_ISCHR: "chardev",
                stat_mod.S_ISLNK: "symlink",
            }
            found[rel] = next((k for test, k in kinds.items() if test(mode)), "other")
    return found


def one_stderr_line(stderr: str) -> str:
    """The single non-JSON line of `stderr` (failing if there are more or none, or a
    traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    return lines[0]
